"""Measure a receptive field by gradient probing, independently of the arithmetic.

Backpropagate from one output unit of an untrained copy of the model and see which input pixels get
a non-zero gradient. To make "non-zero gradient" the same as "depends on":

* every weight is positive (``1 / fan_in``), every bias 0, norm layers are identities (eval mode,
  running mean 0, variance 1), so no two paths can cancel;
* the input is a small positive constant, so ReLUs pass everything and saturating activations
  (ReLU6, hard-sigmoid) stay in their linear range;
* max pooling routes the gradient to a single input, so it is replaced by a sum over the same
  window (a depthwise all-ones conv with the same kernel, stride, padding, dilation and ceil mode);
* float64 throughout, so tiny gradients at the edge of the region do not underflow.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from vislab.arith import formulas as fm
from vislab.arith.spec import pair, parse_shape
from vislab.arith.trace import _tensors


class _Captured(Exception):
    pass


def _window_sum(x: Tensor, kernel, stride, padding, dilation, ceil_mode: bool) -> Tensor:
    """Sum over max-pool windows: same windows as ``F.max_pool2d``, but every input gets a gradient."""
    k, p, d = pair(_int(kernel)), pair(_int(padding)), pair(_int(dilation))
    s = pair(_int(stride)) if stride not in (None, [], ()) else k
    h, w = x.shape[-2:]
    ho = fm.pool_output_size(h, k[0], s[0], p[0], d[0], ceil_mode)
    wo = fm.pool_output_size(w, k[1], s[1], p[1], d[1], ceil_mode)
    right = [max((o - 1) * st + dl * (kk - 1) + 1 - n - pp, 0)
             for o, st, dl, kk, n, pp in ((ho, s[0], d[0], k[0], h, p[0]), (wo, s[1], d[1], k[1], w, p[1]))]
    xp = F.pad(x, (p[1], right[1], p[0], right[0]))
    weight = torch.ones(x.shape[1], 1, *k, dtype=x.dtype, device=x.device)
    return F.conv2d(xp, weight, stride=s, dilation=d, groups=x.shape[1])[..., :ho, :wo]


def _int(v):
    if isinstance(v, (list, tuple)):
        return tuple(int(a) for a in v) if len(v) > 1 else int(v[0])
    return int(v)


class _SumPooling(TorchFunctionMode):
    """Replaces every max pooling (module or functional) by a window sum while active."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in ("max_pool2d", "max_pool2d_with_indices"):
            names = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
            b = dict(zip(names, args)) | kwargs
            if b.get("return_indices"):
                raise ValueError("gradient probing does not support max pooling with return_indices")
            return _window_sum(b["input"], b["kernel_size"], b.get("stride"), b.get("padding", 0),
                               b.get("dilation", 1), bool(b.get("ceil_mode", False)))
        if name == "adaptive_max_pool2d":
            return F.adaptive_avg_pool2d(args[0], args[1] if len(args) > 1 else kwargs["output_size"])
        return func(*args, **kwargs)


def positive_copy(model: nn.Module) -> nn.Module:
    """A float64, eval-mode copy with weights ``1/fan_in``, biases 0 and identity norm layers."""
    if any(p.is_meta for p in model.parameters()):
        raise ValueError("gradient probing needs real tensors; build the model on the CPU, not on 'meta'")
    probe = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for module in probe.modules():
            for name, p in module.named_parameters(recurse=False):
                if p.dim() >= 2:
                    p.fill_(1.0 / p[0].numel())
                elif name.endswith("bias"):
                    p.zero_()
                else:
                    p.fill_(1.0)
            for name, b in module.named_buffers(recurse=False):
                if name == "running_mean":
                    b.zero_()
                elif name == "running_var":
                    b.fill_(1.0)
    return probe


def probe_receptive_field(model: nn.Module, input_shape: str | tuple[int, ...], layer: str,
                          units: list[tuple[int, int]] | None = None, *, positive: bool = False) -> list[dict]:
    """Input region each output unit of ``layer`` depends on, measured by backpropagation.

    Args:
        model: any module (it is copied; the original is untouched).
        input_shape: ``C×H×W`` of the probe input.
        layer: qualified module name whose output is probed (``""`` is the model's output).
        units: ``(i, j)`` positions in that output (default: the centre unit).
        positive: ``model`` is already a :func:`positive_copy` (saves the copy when probing often).

    Returns one dict per unit: ``{"unit": (i, j), "rows": (r0, r1), "cols": (c0, c1),
    "rectangular": bool, "output_hw": (H, W)}`` with inclusive bounds; ``rows`` is ``None`` when the
    unit depends on no input pixel.
    """
    shape = parse_shape(input_shape)
    if len(shape) != 3:
        raise ValueError(f"gradient probing needs a CxHxW input, got {input_shape!r}")
    probe = model if positive else positive_copy(model)
    modules = dict(probe.named_modules())
    if layer not in modules:
        raise ValueError(f"no module named {layer!r} in {type(model).__name__}")
    captured: list[Tensor] = []

    def hook(_m, _a, out):
        captured.append(next(_tensors(out)))  # the first tensor of a tuple, list or dict output
        raise _Captured

    results = []
    device = next(iter(probe.parameters())).device if any(True for _ in probe.parameters()) else "cpu"
    handle = modules[layer].register_forward_hook(hook)
    try:
        x = torch.full((1, *shape), 1e-3, dtype=torch.float64, device=device, requires_grad=True)
        try:
            with _SumPooling():
                probe(x)
        except _Captured:
            pass
        (y,) = captured
        if y.dim() != 4:
            raise ValueError(f"the output of {layer!r} has shape {tuple(y.shape)}, not a feature map")
        ho, wo = y.shape[-2:]
        for i, j in units or [(ho // 2, wo // 2)]:
            if not (0 <= i < ho and 0 <= j < wo):
                raise ValueError(f"unit ({i}, {j}) is outside the {ho}x{wo} output of {layer!r}")
            (grad,) = torch.autograd.grad(y[0, :, i, j].sum(), x, retain_graph=True)
            mask = grad[0].abs().sum(0) > 0  # (H, W)
            rows = mask.any(1).nonzero().flatten()
            cols = mask.any(0).nonzero().flatten()
            if rows.numel() == 0:
                results.append({"unit": (i, j), "rows": None, "cols": None, "rectangular": True,
                                "output_hw": (ho, wo)})
                continue
            r0, r1, c0, c1 = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
            results.append({"unit": (i, j), "rows": (r0, r1), "cols": (c0, c1),
                            "rectangular": bool(mask[r0:r1 + 1, c0:c1 + 1].all()), "output_hw": (ho, wo)})
    finally:
        handle.remove()
    return results
