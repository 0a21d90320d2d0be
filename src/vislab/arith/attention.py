"""Attention arithmetic: multi-head attention parameters and the Swin MSA vs W-MSA cost.

Multi-head attention with ``h`` heads projects the ``d_model`` input to ``h`` queries and keys of
size ``d_k`` and values of size ``d_v``, then maps the ``h·d_v`` concatenation back to ``d_model``:

    params = 2·(d_model·h·d_k) + d_model·h·d_v + h·d_v·d_model   (+ 2·h·d_k + h·d_v + d_model biases)

With the usual ``d_k = d_v = d_model / h`` that is ``4·d_model² (+ 4·d_model)``, the count of
``nn.MultiheadAttention``.

Cost of self-attention on an ``h×w`` map of ``C`` channels, in multiply-accumulates, as in the Swin
Transformer paper (Liu et al. 2021, eq. 1–2, https://arxiv.org/abs/2103.14030):

    Ω(MSA)   = 4·hw·C² + 2·(hw)²·C      (global attention over all hw tokens)
    Ω(W-MSA) = 4·hw·C² + 2·M²·hw·C      (attention inside non-overlapping M×M windows)

``4hwC²`` are the Q, K, V and output projections; ``2(hw)²C`` (or ``2M²hwC``) are ``QKᵀ`` and the
product with ``V``. Softmax, scaling, biases and the relative position bias are not counted;
``torch.utils.flop_counter.FlopCounterMode`` counts the same products as 2 FLOPs per MAC.

With per-head query/key size ``d_k``, value size ``d_v`` and ``d_out`` output channels (the general
multi-head attention of "Attention is all you need"; Swin's case is ``d_k = d_v = C/heads``,
``d_out = C``), on ``n = hw`` tokens that each attend to ``n_keys`` keys (``n`` globally, ``M²`` in a
window):

    projections = n·C·h·d_k (Q) + n·C·h·d_k (K) + n·C·h·d_v (V) + n·h·d_v·d_out (output)
    attention   = n_keys·n·h·d_k (QKᵀ) + n_keys·n·h·d_v (weights · V)

:func:`measure_attention_flops` counts what our real modules do (``vislab.models.vit.MultiHeadSelfAttention``
for MSA, ``vislab.layers.swin.WindowAttention`` on the partitioned, optionally shifted map for W-MSA)
with ``FlopCounterMode``; :func:`time_attention` times them.
"""

from __future__ import annotations

import time
from typing import Any


def _positive(name: str, v: int) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")


def mha_params(d_model: int, heads: int, d_k: int | None = None, d_v: int | None = None,
               bias: bool = True, *, d_out: int | None = None) -> dict[str, int]:
    """Parameters of multi-head attention, per projection and in total.

    ``d_k``/``d_v`` default to ``d_model // heads`` (which must then divide evenly); the output
    projection maps ``heads·d_v`` to ``d_out`` channels (default ``d_model``).
    """
    _positive("d_model", d_model)
    _positive("heads", heads)
    if d_k is None or d_v is None:
        if d_model % heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by heads ({heads}) unless d_k and d_v are given")
    d_k = d_model // heads if d_k is None else d_k
    d_v = d_model // heads if d_v is None else d_v
    _positive("d_k", d_k)
    _positive("d_v", d_v)
    d_out = d_model if d_out is None else d_out
    _positive("d_out", d_out)
    b = 1 if bias else 0
    parts = {
        "q": d_model * heads * d_k + b * heads * d_k,
        "k": d_model * heads * d_k + b * heads * d_k,
        "v": d_model * heads * d_v + b * heads * d_v,
        "out": heads * d_v * d_out + b * d_out,
    }
    parts["total"] = sum(parts.values())
    return parts


def _head_dims(c: int, heads: int | None, d_k: int | None, d_v: int | None,
               d_out: int | None) -> tuple[int, int, int, int]:
    """``(heads, d_k, d_v, d_out)``; without ``heads`` only the standard ``h·d_k = h·d_v = d_out = C``."""
    if heads is None:
        if d_k is not None or d_v is not None:
            raise ValueError("d_k and d_v need heads (the number of heads)")
        return 1, c, c, c if d_out is None else d_out
    _positive("heads", heads)
    if (d_k is None or d_v is None) and c % heads:
        raise ValueError(f"C ({c}) must be divisible by heads ({heads}) unless d_k and d_v are given")
    d_k = c // heads if d_k is None else d_k
    d_v = c // heads if d_v is None else d_v
    d_out = c if d_out is None else d_out
    for name, v in (("d_k", d_k), ("d_v", d_v), ("d_out", d_out)):
        _positive(name, v)
    return heads, d_k, d_v, d_out


def _attention_macs(n: int, n_keys: int, c: int, heads: int, d_k: int, d_v: int, d_out: int) -> dict[str, int]:
    parts = {"q": n * c * heads * d_k, "k": n * c * heads * d_k, "v": n * c * heads * d_v,
             "out": n * heads * d_v * d_out, "qk": n_keys * n * heads * d_k, "av": n_keys * n * heads * d_v}
    parts["projections"] = parts["q"] + parts["k"] + parts["v"] + parts["out"]
    parts["attention"] = parts["qk"] + parts["av"]
    parts["total"] = parts["projections"] + parts["attention"]
    return parts


def msa_macs(h: int, w: int, c: int, *, heads: int | None = None, d_k: int | None = None, d_v: int | None = None,
             d_out: int | None = None) -> dict[str, int]:
    """Global multi-head self-attention on ``h×w`` tokens of ``c`` channels: ``4hwC² + 2(hw)²C``.

    With ``heads`` and per-head ``d_k``/``d_v`` (and ``d_out`` output channels) the general count of the
    module docstring; the parts are ``q, k, v, out`` (→ ``projections``), ``qk, av`` (→ ``attention``), ``total``.
    """
    for name, v in (("h", h), ("w", w), ("C", c)):
        _positive(name, v)
    n = h * w
    return _attention_macs(n, n, c, *_head_dims(c, heads, d_k, d_v, d_out))


def wmsa_macs(h: int, w: int, c: int, m: int, *, heads: int | None = None, d_k: int | None = None,
              d_v: int | None = None, d_out: int | None = None) -> dict[str, int]:
    """Window attention with ``M×M`` windows: ``4hwC² + 2M²hwC`` (``h`` and ``w`` multiples of ``M``).

    The shifted windows of SW-MSA cost the same (the mask is an addition). Options as :func:`msa_macs`.
    """
    for name, v in (("h", h), ("w", w), ("C", c), ("M", m)):
        _positive(name, v)
    if h % m or w % m:
        raise ValueError(f"the map {h}x{w} must be a multiple of the window size M={m} (Swin pads it otherwise)")
    return _attention_macs(h * w, m * m, c, *_head_dims(c, heads, d_k, d_v, d_out))


# -- our real modules ------------------------------------------------------------------------------------


def _attention_modules(h: int, w: int, c: int, heads: int, window: int | None, shift: int, d_k: int | None,
                       d_v: int | None, d_out: int | None, device: Any) -> tuple[Any, Any, Any]:
    """``(module, input, run)``: our MSA (window None) or W-MSA/SW-MSA module on a ``1×h×w×C`` map."""
    import torch

    from vislab.layers.swin import WindowAttention, shifted_window_mask, window_partition
    from vislab.models.vit import MultiHeadSelfAttention

    _, d_k, d_v, d_out = _head_dims(c, heads, d_k, d_v, d_out)  # the formulas' defaults, explicit
    with torch.device(device):
        if window is None:
            mod = MultiHeadSelfAttention(c, heads, head_dim_qk=d_k, head_dim_v=d_v, out_dim=d_out)
            x = torch.randn(1, h * w, c)

            def run(t: Any) -> Any:
                return mod(t)[0]  # (1, hw, d_out)
            return mod, x, run
        mod = WindowAttention(c, heads, window, head_dim=d_k, head_dim_v=d_v, out_dim=d_out)
        mask = shifted_window_mask(h, w, window, shift) if shift else None
        x = torch.randn(1, h, w, c)

    def run_windows(t: Any) -> Any:
        if shift:
            t = torch.roll(t, shifts=(-shift, -shift), dims=(1, 2))  # the cyclic shift of SW-MSA
        windows = window_partition(t, window).reshape(-1, window * window, c)  # (nW, M², C)
        return mod(windows, mask=mask)  # (nW, M², d_out)
    return mod, x, run_windows


def measure_attention_flops(h: int, w: int, c: int, *, heads: int, window: int | None = None, shift: int = 0,
                            d_k: int | None = None, d_v: int | None = None, d_out: int | None = None,
                            fused: bool = False, device: str = "meta") -> int:
    """FLOPs that ``FlopCounterMode`` counts for one forward of our attention on a ``1×h×w×C`` map.

    ``window=None``: global MSA (``vislab.models.vit.MultiHeadSelfAttention`` on the ``hw`` tokens);
    else (S)W-MSA (``vislab.layers.swin.WindowAttention`` on the ``M×M`` windows, cyclically shifted
    by ``shift`` with the SW-MSA mask). ``fused`` picks the ``scaled_dot_product_attention`` path, which
    the counter sees only off the CPU (on ``"meta"``, the default, nothing is computed). Equals
    ``2·msa_macs(...)["total"]`` / ``2·wmsa_macs(...)["total"]``.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    if window is not None:
        wmsa_macs(h, w, c, window, heads=heads, d_k=d_k, d_v=d_v, d_out=d_out)  # checks the arguments
        if not 0 <= shift < window:
            raise ValueError(f"shift must satisfy 0 <= shift < window ({window}), got {shift}")
    else:
        msa_macs(h, w, c, heads=heads, d_k=d_k, d_v=d_v, d_out=d_out)
    mod, x, run = _attention_modules(h, w, c, heads, window, shift, d_k, d_v, d_out, device)
    mod.fused = fused
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        run(x)
    return int(counter.get_total_flops())


def time_attention(h: int, w: int, c: int, *, heads: int, window: int | None = None, shift: int = 0,
                   d_k: int | None = None, d_v: int | None = None, d_out: int | None = None, repeats: int = 3,
                   fused: bool = True) -> float:
    """Median milliseconds of one forward of the module :func:`measure_attention_flops` counts, on CPU
    (batch 1, no grad, after one warm-up call)."""
    import torch

    _positive("repeats", repeats)
    mod, x, run = _attention_modules(h, w, c, heads, window, shift, d_k, d_v, d_out, "cpu")
    mod.fused = fused
    times = []
    with torch.no_grad():
        run(x)
        for _ in range(repeats):
            t0 = time.perf_counter()
            run(x)
            times.append((time.perf_counter() - t0) * 1e3)
    return float(sorted(times)[len(times) // 2])


def attention_cost_table(maps: list[tuple[int, int]], c: int, *, heads: int, window: int, d_k: int | None = None,
                         d_v: int | None = None, d_out: int | None = None, timing: bool = False,
                         repeats: int = 3) -> list[dict[str, Any]]:
    """MSA vs W-MSA on each ``(h, w)`` map: formula MACs, measured FLOPs of our modules (and ms if ``timing``).

    Rows: ``{"h", "w", "tokens", "msa_macs", "wmsa_macs", "msa_flops", "wmsa_flops", "swmsa_flops"
    [, "msa_ms", "wmsa_ms", "swmsa_ms"]}``; a map must be a multiple of ``window``.
    """
    rows = []
    kw = {"heads": heads, "d_k": d_k, "d_v": d_v, "d_out": d_out}
    shift = window // 2
    for h, w in maps:
        row: dict[str, Any] = {"h": h, "w": w, "tokens": h * w,
                               "msa_macs": msa_macs(h, w, c, **kw)["total"],
                               "wmsa_macs": wmsa_macs(h, w, c, window, **kw)["total"],
                               "msa_flops": measure_attention_flops(h, w, c, **kw),
                               "wmsa_flops": measure_attention_flops(h, w, c, window=window, **kw),
                               "swmsa_flops": measure_attention_flops(h, w, c, window=window, shift=shift, **kw)}
        if timing:
            row["msa_ms"] = time_attention(h, w, c, repeats=repeats, **kw)
            row["wmsa_ms"] = time_attention(h, w, c, window=window, repeats=repeats, **kw)
            row["swmsa_ms"] = time_attention(h, w, c, window=window, shift=shift, repeats=repeats, **kw)
        rows.append(row)
    return rows
