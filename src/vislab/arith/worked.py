"""Worked examples: a small convolution and its backward pass, every number written out as a sum.

The numbers come from :mod:`vislab.ops.conv_reference`; this module only spells out the terms.
Matrices are single-channel 2-D arrays; the convolution is a cross-correlation (the kernel is not
flipped), as in every deep-learning framework.

Examples of SPEC §2:

* :data:`COLUMN_INPUT` (5×5, middle column 10) with the Laplacian :data:`LAPLACIAN`, zero padding 1:
  rows 0 and 4 are ``0, 20, -70, 20, 0``, rows 1–3 ``0, 30, -60, 30, 0``.
* :data:`GAP_X` with :data:`GAP_F` (valid), then global average pooling: ``O = [[10, 3], [9, 18]]``,
  output 10, and the gradients of the filter and the input for an upstream gradient.
"""

from __future__ import annotations

import json
import re

import numpy as np

from vislab.ops.conv_reference import (
    conv2d_backward,
    conv2d_forward,
    global_avg_pool_backward,
    global_avg_pool_forward,
)

LAPLACIAN = np.array([[1, 1, 1], [1, -8, 1], [1, 1, 1]], dtype=float)
COLUMN_INPUT = np.zeros((5, 5))
COLUMN_INPUT[:, 2] = 10
GAP_X = np.array([[2, 3, 4], [3, 1, 5], [4, -1, -2]], dtype=float)
GAP_F = np.array([[0, 3], [1, -2]], dtype=float)


def fmt_number(v: float) -> str:
    """``3.0 → '3'``, ``0.25 → '0.25'``, ``-2.0 → '-2'``."""
    v = float(v)
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return f"{v:.6g}"


def _factor(v: float) -> str:
    s = fmt_number(v)
    return f"({s})" if s.startswith("-") else s


def _sum(terms: list[str], value: float) -> str:
    return f"{' + '.join(terms) if terms else '0'} = {fmt_number(value)}"


def parse_matrix(text: str) -> np.ndarray:
    """``"[[2,3],[1,-2]]"`` (JSON) or ``"2,3; 1,-2"`` (rows separated by ``;``) → a 2-D float array."""
    text = text.strip()
    try:
        rows = json.loads(text) if text.startswith("[") else [
            [float(v) for v in re.split(r"[,\s]+", r.strip()) if v] for r in text.split(";") if r.strip()]
        arr = np.array(rows, dtype=float)
    except (ValueError, TypeError):
        raise ValueError(f"expected a matrix like '[[2,3],[1,-2]]' or '2,3; 1,-2', got {text!r}") from None
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"expected a non-empty 2-D matrix with rows of equal length, got {text!r}")
    return arr


def _as4d(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=float)[None, None]


def _taps(shape_x, shape_w, i: int, j: int, stride: int, padding: int, dilation: int):
    """Kernel taps ``(u, v)`` of output ``(i, j)`` with the input pixel ``(r, c)`` they meet (inside only)."""
    for u in range(shape_w[0]):
        for v in range(shape_w[1]):
            r, c = i * stride + u * dilation - padding, j * stride + v * dilation - padding
            if 0 <= r < shape_x[0] and 0 <= c < shape_x[1]:
                yield u, v, r, c


def conv_forward_steps(x: np.ndarray, w: np.ndarray, *, stride: int = 1, padding: int = 0,
                       dilation: int = 1) -> tuple[np.ndarray, list[str]]:
    """Output ``O`` of ``x ⋆ w`` and one line per output: ``O[i,j] = x·w + ... = value``."""
    out = conv2d_forward(_as4d(x), _as4d(w), None, stride, padding, dilation)[0, 0]
    lines = []
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            terms = [f"{_factor(x[r, c])}·{_factor(w[u, v])}" for u, v, r, c in
                     _taps(x.shape, w.shape, i, j, stride, padding, dilation)]
            lines.append(f"O[{i},{j}] = {_sum(terms, out[i, j])}")
    return out, lines


def conv_backward_steps(x: np.ndarray, w: np.ndarray, grad_out: np.ndarray, *, stride: int = 1, padding: int = 0,
                        dilation: int = 1) -> tuple[np.ndarray, np.ndarray, float, list[str]]:
    """``(∂L/∂x, ∂L/∂w, ∂L/∂b, lines)`` for upstream ``grad_out = ∂L/∂O``, every entry as a written sum."""
    gx, gw, gb = conv2d_backward(_as4d(grad_out), _as4d(x), _as4d(w), stride, padding, dilation)
    gx, gw, gb = gx[0, 0], gw[0, 0], float(gb[0])
    ho, wo = grad_out.shape
    lines = ["∂L/∂F[u,v] = Σ_ij ∂L/∂O[i,j] · X[i·s+u·d-p, j·s+v·d-p]"]
    contrib_x: dict[tuple[int, int], list[str]] = {}
    terms_w: dict[tuple[int, int], list[str]] = {}
    for i in range(ho):
        for j in range(wo):
            for u, v, r, c in _taps(x.shape, w.shape, i, j, stride, padding, dilation):
                terms_w.setdefault((u, v), []).append(f"{_factor(grad_out[i, j])}·{_factor(x[r, c])}")
                contrib_x.setdefault((r, c), []).append(f"{_factor(grad_out[i, j])}·{_factor(w[u, v])}")
    for u in range(w.shape[0]):
        for v in range(w.shape[1]):
            lines.append(f"  ∂L/∂F[{u},{v}] = {_sum(terms_w.get((u, v), []), gw[u, v])}")
    lines.append("∂L/∂X[r,c] = Σ over the outputs that read X[r,c] of ∂L/∂O[i,j] · F[u,v]")
    for r in range(x.shape[0]):
        for c in range(x.shape[1]):
            lines.append(f"  ∂L/∂X[{r},{c}] = {_sum(contrib_x.get((r, c), []), gx[r, c])}")
    lines.append(f"∂L/∂b = Σ_ij ∂L/∂O[i,j] = {fmt_number(gb)}")
    return gx, gw, gb, lines


def _matrix(name: str, a: np.ndarray) -> list[str]:
    cells = [[fmt_number(v) for v in row] for row in a]
    width = max(len(c) for row in cells for c in row)
    return [f"{name} ="] + ["  [" + "  ".join(c.rjust(width) for c in row) + "]" for row in cells]


def conv_steps_text(x: np.ndarray, w: np.ndarray, *, stride: int = 1, padding: int = 0, dilation: int = 1,
                    gap: bool = False, upstream: float | np.ndarray = 1.0) -> str:
    """The whole walk-through: input, kernel, each output as a sum, optional GAP, then the backward pass.

    ``upstream`` is ``∂L/∂y`` of the GAP output (a number) when ``gap`` is set, else ``∂L/∂O``
    (a number broadcast to every output, or a matrix of the output's shape).
    """
    x, w = np.asarray(x, dtype=float), np.asarray(w, dtype=float)
    if x.ndim != 2 or w.ndim != 2:
        raise ValueError(f"expected 2-D input and kernel, got shapes {x.shape} and {w.shape}")
    if w.shape[0] > x.shape[0] + 2 * padding or w.shape[1] > x.shape[1] + 2 * padding:
        raise ValueError(f"kernel {w.shape[0]}x{w.shape[1]} does not fit the input {x.shape[0]}x{x.shape[1]} "
                         f"with padding {padding}")
    out, fwd = conv_forward_steps(x, w, stride=stride, padding=padding, dilation=dilation)
    lines = _matrix("X", x) + _matrix("F", w)
    lines.append(f"cross-correlation O = X ⋆ F, stride {stride}, zero padding {padding}, dilation {dilation} "
                 f"→ {out.shape[0]}x{out.shape[1]}" + (" (padding terms are 0 and not written)" if padding else ""))
    lines += fwd + _matrix("O", out)
    if gap:
        y = float(global_avg_pool_forward(out[None, None])[0, 0])
        lines.append(f"GAP y = ({' + '.join(_factor(v) for v in out.flat)}) / {out.size} = {fmt_number(y)}")
        up = float(np.asarray(upstream))
        grad_out = global_avg_pool_backward(np.array([[up]]), (1, 1, *out.shape))[0, 0]
        lines.append(f"backward with ∂L/∂y = {fmt_number(up)}: ∂L/∂O[i,j] = {fmt_number(up)} / {out.size} = "
                     f"{fmt_number(up / out.size)} for every (i, j)")
    else:
        grad_out = np.broadcast_to(np.asarray(upstream, dtype=float), out.shape).copy()
        lines += ["backward with"] + _matrix("∂L/∂O", grad_out)
    gx, gw, gb, bwd = conv_backward_steps(x, w, grad_out, stride=stride, padding=padding, dilation=dilation)
    lines += bwd + _matrix("∂L/∂F", gw) + _matrix("∂L/∂X", gx)
    return "\n".join(lines)


EXAMPLES = {
    "gap": dict(x=GAP_X, w=GAP_F, padding=0, gap=True),
    "laplacian": dict(x=COLUMN_INPUT, w=LAPLACIAN, padding=1, gap=False),
}
