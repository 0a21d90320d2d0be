"""Exact receptive fields: which input pixels every unit of every feature map depends on.

The closed-form recursion of Araujo et al. (``r_out = r_in + (k_eff-1)·j_in``) is exact for chains of
convolutions and poolings, but not for transposed convs, upsampling, adaptive pooling with uneven
bins, or branches that merge. Here each spatial axis of a feature map is an :class:`Axis` that
answers, for a position ``i``, the interval ``[lo, hi]`` of input pixels that position depends on.
An axis is built from its parent(s) and a rule "output ``o`` reads parent positions ``sources(o)``",
so the answer is exact for any layer whose dependency pattern we can write down, and merging
branches (residual adds, U-Net/DenseNet concatenations) is a union of intervals, which is the same
as "the longest path wins" when the branches are centred alike and correct when they are not.

Two readings of an axis:

* ``clip=True``: the real map. Positions outside ``[0, n)`` are padding and depend on nothing, so
  a unit near the border sees a truncated region. This is what gradient probing measures.
* ``clip=False``: borders ignored (the textbook receptive field): padding positions are treated as
  virtual pixels of an infinite input. ``rf`` is the largest region over the map's units, the
  effective padding is ``-lo`` of unit 0 and the effective stride is the jump ``j``, which is
  Araujo's ``(r, S, P)`` for conv/pool chains. Transposed convs and upsampling make ``j`` a
  fraction (``j_in / s``); their units do not all have the same region, so ``rf`` is the largest.

Normalisation layers are treated as per-position operations (their statistics as constants, as in
eval-mode batch norm); global pooling, flatten+dense and reductions over both spatial axes make a
map "global" (every unit depends on the whole input).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

Span = tuple[int, int] | None


@contextmanager
def deep_recursion(limit: int = 100_000):
    """Interval queries recurse once per layer; deep nets (DenseNet-201) need a higher limit."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, limit))
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


def _union(a: Span, b: Span) -> Span:
    if a is None:
        return b
    if b is None:
        return a
    return (a[0] if a[0] < b[0] else b[0], a[1] if a[1] > b[1] else b[1])


class Axis:
    """One spatial axis (height or width) of a feature map with ``n`` positions and jump ``jump``."""

    def __init__(self, n: int, jump: Fraction) -> None:
        self.n = int(n)
        self.jump = Fraction(jump)
        self._memo: dict[tuple[int, bool], Span] = {}

    def span(self, i: int, clip: bool) -> Span:
        """Input interval ``(lo, hi)`` (inclusive) that position ``i`` depends on, or ``None``."""
        key = (i, clip)
        if key not in self._memo:
            if clip and not 0 <= i < self.n:
                self._memo[key] = None
            else:
                self._memo[key] = self._span(i, clip)
        return self._memo[key]

    def _span(self, i: int, clip: bool) -> Span:
        raise NotImplementedError

    def stats(self) -> tuple[int | None, Fraction, int | None]:
        """Border-free ``(rf, jump, effective padding)`` of this axis (see the module docstring)."""
        with deep_recursion():
            rf = None
            for i in range(self.n):
                s = self.span(i, False)
                if s is not None and (rf is None or s[1] - s[0] + 1 > rf):
                    rf = s[1] - s[0] + 1
            first = self.span(0, False)
        return rf, self.jump, (None if first is None else -first[0])


class InputAxis(Axis):
    """An axis of the network input: position ``i`` depends on pixel ``i`` only."""

    def __init__(self, n: int) -> None:
        super().__init__(n, Fraction(1))

    def _span(self, i: int, clip: bool) -> Span:
        return (i, i)


class WindowAxis(Axis):
    """Output ``o`` reads parent positions ``sources(o)`` (a conv window, a pooling bin, ...)."""

    def __init__(self, parent: Axis, n: int, jump: Fraction, sources: Callable[[int], Iterable[int]]) -> None:
        super().__init__(n, jump)
        self.parent = parent
        self.sources = sources

    def _span(self, i: int, clip: bool) -> Span:
        out: Span = None
        for j in self.sources(i):
            out = _union(out, self.parent.span(j, clip))
        return out


class MergeAxis(Axis):
    """Element-wise combination of same-size maps (add, multiply, channel concat); size-1 maps broadcast."""

    def __init__(self, parents: Sequence[Axis], n: int) -> None:
        super().__init__(n, max(p.jump for p in parents))
        self.parents = list(parents)

    def _span(self, i: int, clip: bool) -> Span:
        out: Span = None
        for p in self.parents:
            j = 0 if (p.n == 1 and self.n > 1) else i
            out = _union(out, p.span(j, clip))
        return out


class GlobalAxis(Axis):
    """A size-1 axis that reads every position of its parent (global pooling, flatten + dense)."""

    def __init__(self, parent: Axis) -> None:
        super().__init__(1, parent.jump * parent.n)
        self.parent = parent

    def _span(self, i: int, clip: bool) -> Span:
        if i != 0:
            return None
        out: Span = None
        for j in range(self.parent.n):
            out = _union(out, self.parent.span(j, clip))
        return out


# ----------------------------------------------------------------------------------------------
# Axis constructors, one per kind of layer. Arguments are per axis; ``p`` is the left padding.


def conv_axis(parent: Axis, n_out: int, k: int, s: int, p: int, d: int = 1) -> Axis:
    """Convolution or pooling: output ``o`` reads ``o·s - p + t·d`` for ``t < k``."""
    return WindowAxis(parent, n_out, parent.jump * s, lambda o: range(o * s - p, o * s - p + d * (k - 1) + 1, d))


def transposed_axis(parent: Axis, n_out: int, k: int, s: int, p: int, d: int = 1) -> Axis:
    """Transposed convolution: input ``i`` writes to ``i·s - p + t·d``, so ``o`` reads every ``i`` with
    ``(o + p - t·d)`` divisible by ``s`` (fractional stride: the jump becomes ``j / s``)."""

    def sources(o: int) -> list[int]:
        return [(o + p - t * d) // s for t in range(k) if (o + p - t * d) % s == 0]

    return WindowAxis(parent, n_out, parent.jump / s, sources)


def adaptive_axis(parent: Axis, n_out: int) -> Axis:
    """Adaptive pooling: bin ``o`` covers ``[floor(o·n/n_out), ceil((o+1)·n/n_out))`` (ATen's bins)."""
    n = parent.n
    if n_out == 1 and n > 1:
        return GlobalAxis(parent)
    return WindowAxis(parent, n_out, parent.jump * Fraction(n, n_out),
                      lambda o: range((o * n) // n_out, -((-(o + 1) * n) // n_out)))


def slice_axis(parent: Axis, start: int, step: int, n_out: int) -> Axis:
    """``x[..., start::step]`` along this axis."""
    return WindowAxis(parent, n_out, parent.jump * step, lambda o: (start + o * step,))


def pad_axis(parent: Axis, left: int, n_out: int, mode: str = "constant") -> Axis:
    """``F.pad``: constant padding adds positions that depend on nothing (negative pads crop);
    reflect/replicate/circular padding copies real positions."""
    n = parent.n

    def sources(o: int) -> tuple[int, ...]:
        i = o - left
        if 0 <= o < n_out and not 0 <= i < n and mode != "constant":
            if mode == "reflect":
                i = -i if i < 0 else 2 * (n - 1) - i
            elif mode == "replicate":
                i = min(max(i, 0), n - 1)
            elif mode == "circular":
                i %= n
        return (i,)

    return WindowAxis(parent, n_out, parent.jump, sources)


def interpolate_axis(parent: Axis, n_out: int, mode: str, align_corners: bool | None, scale: float | None) -> Axis:
    """``F.interpolate`` along one axis for ``nearest``, ``nearest-exact``, ``(bi)linear``, ``(bi)cubic``.

    ``scale`` is the input/output ratio PyTorch uses (``1/scale_factor`` when a scale factor was given,
    else ``n_in/n_out``). Source positions are computed in float32 like ATen, and a neighbour whose
    interpolation weight is exactly 0 is not a dependency (its gradient is 0).
    """
    n = parent.n
    f32 = np.float32
    if align_corners and mode in ("linear", "bilinear", "bicubic"):
        ratio = f32((n - 1) / (n_out - 1)) if n_out > 1 else f32(0)
    else:
        ratio = f32(scale) if scale is not None else f32(n) / f32(n_out)

    def sources(o: int) -> tuple[int, ...]:
        inside = 0 <= o < n_out
        if mode == "nearest":
            i = int(math.floor(f32(o) * ratio))
            return (min(i, n - 1) if inside else i,)
        if mode == "nearest-exact":
            i = int(math.floor((f32(o) + f32(0.5)) * ratio))
            return (min(i, n - 1) if inside else i,)
        if mode in ("linear", "bilinear"):
            src = f32(o) * ratio if align_corners else max(f32((f32(o) + f32(0.5)) * ratio - f32(0.5)), f32(0))
            i0 = int(math.floor(src))
            lam = src - f32(i0)
            if inside:
                i0 = min(i0, n - 1)
                i1 = i0 + 1 if i0 < n - 1 else i0
            else:
                i1 = i0 + 1
            return (i0, i1) if lam > 0 and i1 != i0 else (i0,)
        if mode == "bicubic":
            src = f32(o) * ratio if align_corners else f32((f32(o) + f32(0.5)) * ratio - f32(0.5))
            i0 = int(math.floor(src))
            taps = range(i0 - 1, i0 + 3)
            return tuple(min(max(t, 0), n - 1) for t in taps) if inside else tuple(taps)
        raise ValueError(f"interpolation mode {mode!r} is not supported by the receptive-field tracer")

    return WindowAxis(parent, n_out, parent.jump * Fraction(n, n_out), sources)


# ----------------------------------------------------------------------------------------------


def _number(x: Fraction | int) -> int | float:
    x = Fraction(x)
    return int(x) if x.denominator == 1 else float(x)


@dataclass(frozen=True)
class Geometry:
    """Receptive-field state of one tensor.

    ``kind`` is ``"map"`` (a feature map with axes ``h`` and ``w``), ``"flat"`` (a flattened map; the
    axes of the map it came from are kept) or ``"global"`` (every unit depends on the whole input).
    """

    kind: str
    h: Axis | None = None
    w: Axis | None = None

    @staticmethod
    def input(height: int, width: int) -> Geometry:
        return Geometry("map", InputAxis(height), InputAxis(width))

    def summary(self) -> dict[str, object]:
        """JSON-ready ``rf``, ``stride`` and ``padding`` as ``[h, w]`` (``rf="global"`` for global maps)."""
        if self.kind == "global" or self.h is None or self.w is None:
            return {"rf": "global", "stride": None, "padding": None}
        (rh, jh, ph), (rw, jw, pw) = self.h.stats(), self.w.stats()
        return {"rf": [rh, rw], "stride": [_number(jh), _number(jw)], "padding": [ph, pw]}

    def region(self, i: int, j: int) -> tuple[Span, Span]:
        """Exact input rows and columns ``((r0, r1), (c0, c1))`` that unit ``(i, j)`` depends on."""
        if self.kind == "global" or self.h is None or self.w is None:
            raise ValueError(f"a {self.kind} tensor has no per-unit receptive field")
        with deep_recursion():
            rows, cols = self.h.span(i, True), self.w.span(j, True)
        return (None, None) if rows is None or cols is None else (rows, cols)


GLOBAL = Geometry("global")
