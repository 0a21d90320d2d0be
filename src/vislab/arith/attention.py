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
"""

from __future__ import annotations


def _positive(name: str, v: int) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")


def mha_params(d_model: int, heads: int, d_k: int | None = None, d_v: int | None = None,
               bias: bool = True) -> dict[str, int]:
    """Parameters of multi-head attention, per projection and in total.

    ``d_k``/``d_v`` default to ``d_model // heads`` (which must then divide evenly).
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
    b = 1 if bias else 0
    parts = {
        "q": d_model * heads * d_k + b * heads * d_k,
        "k": d_model * heads * d_k + b * heads * d_k,
        "v": d_model * heads * d_v + b * heads * d_v,
        "out": heads * d_v * d_model + b * d_model,
    }
    parts["total"] = sum(parts.values())
    return parts


def msa_macs(h: int, w: int, c: int) -> dict[str, int]:
    """Global multi-head self-attention on ``h×w`` tokens of ``c`` channels: ``4hwC² + 2(hw)²C``."""
    for name, v in (("h", h), ("w", w), ("C", c)):
        _positive(name, v)
    n = h * w
    parts = {"projections": 4 * n * c * c, "attention": 2 * n * n * c}
    parts["total"] = parts["projections"] + parts["attention"]
    return parts


def wmsa_macs(h: int, w: int, c: int, m: int) -> dict[str, int]:
    """Window attention with ``M×M`` windows: ``4hwC² + 2M²hwC`` (``h`` and ``w`` multiples of ``M``)."""
    for name, v in (("h", h), ("w", w), ("C", c), ("M", m)):
        _positive(name, v)
    if h % m or w % m:
        raise ValueError(f"the map {h}x{w} must be a multiple of the window size M={m} (Swin pads it otherwise)")
    n = h * w
    parts = {"projections": 4 * n * c * c, "attention": 2 * m * m * n * c}
    parts["total"] = parts["projections"] + parts["attention"]
    return parts
