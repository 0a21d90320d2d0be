"""Trace an ``nn.Module``: one forward pass records every leaf layer's shape, parameters, MACs and
exact receptive field.

How it works:

* Forward pre-/post-hooks on every module tell which module is running; every leaf module call
  becomes a row (named by its qualified name, e.g. ``layer1.0.conv1``).
* A :class:`torch.overrides.TorchFunctionMode` sees every torch function the forward calls, including
  the functional ones written inside ``forward`` (``out += identity``, ``torch.cat``, ``F.interpolate``,
  ``torch.flatten``). Each tensor carries a :class:`~vislab.arith.geometry.Geometry` keyed by its
  identity; an op builds its output's geometry from its inputs' (a conv window, a pooling bin, a
  transposed conv, a crop ``x[..., a:b, c:d]``, ...). Merging ops (add, multiply, concat) take the
  union of their inputs' regions, so a residual or U-Net/DenseNet skip is handled exactly: the
  longest path wins where the branches are centred alike, and the union is still right where not.
* Functional ops run directly in a container's ``forward`` (a residual ``add``, a ``cat``, a
  ``flatten``) get a row of their own named ``<module>.<op>``.
* Deformable convolutions (:mod:`vislab.layers`) are traced by their geometry: the bilinear
  sampling is replaced, for the trace only, by the regular convolution of the same shape, so a
  ``DeformableConv2d`` row has the nominal receptive field (zero offsets; learned offsets move it)
  and MACs of the convolution plus the sampling (4 per sampled value for the bilinear weights, 1
  more for the v2 mask); its offset/mask predictor is a row of its own (``<layer>.offset_conv``).
* An op the tracer does not know (attention over tokens, a permute that moves the spatial axes)
  makes the receptive field unknown (``None``) from there on and adds a note; a known global
  reduction (global pooling, flatten + dense, a mean over H and W) makes it ``"global"``.

Shapes are computed with the formulas of :mod:`vislab.arith.formulas` and checked against the
shapes the module really produced; a disagreement is a bug and raises. The trace runs on the
model's device; :func:`load_model` builds models on the ``meta`` device, where a trace costs no
compute and no memory.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from vislab.arith import formulas as fm
from vislab.arith import geometry as geo
from vislab.arith.analyze import Analysis
from vislab.arith.geometry import GLOBAL, Geometry
from vislab.arith.spec import pair, parse_shape

_SIGNATURES: dict[str, tuple[str, ...]] = {
    "conv1d": ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
    "conv2d": ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
    "conv3d": ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
    "conv_transpose2d": ("input", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation"),
    "max_pool2d": ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
    "avg_pool2d": ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                   "divisor_override"),
    "adaptive_avg_pool2d": ("input", "output_size"),
    "adaptive_max_pool2d": ("input", "output_size", "return_indices"),
    "interpolate": ("input", "size", "scale_factor", "mode", "align_corners", "recompute_scale_factor",
                    "antialias"),
    "pad": ("input", "pad", "mode", "value"),
    "flatten": ("input", "start_dim", "end_dim"),
    "cat": ("tensors", "dim"),
    "pixel_shuffle": ("input", "upscale_factor"),
    "pixel_unshuffle": ("input", "downscale_factor"),
}
_ALIASES = {"max_pool2d_with_indices": "max_pool2d", "concat": "cat", "concatenate": "cat",
            "upsample": "interpolate", "_pad": "pad"}

# Element-wise (per position) ops: the output unit depends on the same unit of every input.
_ELEMENTWISE = frozenset("""
add sub rsub mul div true_divide floor_divide neg abs relu relu6 leaky_relu elu selu celu gelu silu mish
sigmoid hardsigmoid hardswish hardtanh tanh softplus softsign tanhshrink threshold exp log log1p sqrt rsqrt
pow square clamp clamp_min clamp_max clip prelu rrelu glu logsigmoid erf reciprocal sign maximum minimum
where masked_fill lerp addcmul addcdiv dropout dropout1d dropout2d dropout3d alpha_dropout
feature_alpha_dropout batch_norm instance_norm group_norm layer_norm local_response_norm normalize
contiguous clone detach to type type_as float double half bfloat16 cpu cuda requires_grad_ expand expand_as
broadcast_to channel_shuffle native_channel_shuffle mul_ add_ sub_ div_ zero_ fill_ copy_ identity
""".split())
_REDUCTIONS = frozenset("mean sum amax amin max min std var logsumexp norm prod".split())
# ops along one dimension: (position of the ``dim`` argument, its default); fine along batch/channels
_DIM_ARG = {"chunk": (2, 0), "split": (2, 0), "split_with_sizes": (2, 0), "tensor_split": (2, 0),
            "unbind": (1, 0), "narrow": (1, None), "select": (1, None), "softmax": (1, None),
            "log_softmax": (1, None), "cumsum": (1, None), "roll": (2, None), "flip": (1, None)}
_MATMULS = frozenset("matmul mm bmm addmm baddbmm addbmm einsum scaled_dot_product_attention".split())
_STRUCTURAL = frozenset({"conv1d", "conv2d", "conv3d", "conv_transpose2d", "linear", "max_pool2d", "avg_pool2d",
                         "multi_head_attention_forward",
                         "adaptive_avg_pool2d", "adaptive_max_pool2d", "interpolate", "pad", "cat", "stack",
                         "flatten", "pixel_shuffle", "pixel_unshuffle"} | _MATMULS)
_IGNORED = frozenset({"__get__", "__set__", "size", "dim", "numel", "__len__", "is_contiguous", "__bool__",
                      "item", "tolist", "__repr__", "__format__", "stride", "element_size", "data_ptr"})


def _op_name(func) -> str:
    name = getattr(func, "__name__", "") or ""
    if name.startswith("__i") and name.endswith("__") and name not in ("__index__", "__iter__"):
        name = name[3:-2]  # __iadd__ -> add
    elif name.startswith("__r") and name.endswith("__") and name != "__repr__":
        name = name[3:-2]  # __radd__ -> add
    elif name.startswith("__") and name.endswith("__") and name != "__getitem__":
        name = name[2:-2]  # __add__ -> add, __matmul__ -> matmul
    if name.endswith("_") and not name.startswith("_") and name[:-1] in _ELEMENTWISE | {"relu", "add"}:
        name = name[:-1]  # relu_ -> relu
    return _ALIASES.get(name, name)


def _tensors(obj) -> Iterator[Tensor]:
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            yield from _tensors(x)
    elif isinstance(obj, dict):
        for x in obj.values():
            yield from _tensors(x)


def _bind(name: str, args: tuple, kwargs: dict) -> dict:
    names = _SIGNATURES[name]
    bound = dict(zip(names, args))
    bound.update({k: v for k, v in kwargs.items() if k in names})
    return bound


def _shape(t: Tensor) -> list[int]:
    return [int(s) for s in t.shape[1:]]


@dataclass
class _Frame:
    name: str
    module: nn.Module
    leaf: bool
    input_shape: list[int] | None
    macs: int = 0
    op_counts: dict[str, int] = field(default_factory=dict)
    deformable: bool = False  # a vislab deformable layer: a row of its own although it has children
    sampling_macs: int = 0  # its bilinear sampling (+ mask), added to its row


class _Tracer(TorchFunctionMode):
    def __init__(self, analysis: Analysis) -> None:
        super().__init__()
        self.analysis = analysis
        self.geoms: dict[int, tuple[Tensor, Geometry | None]] = {}
        self.stack: list[_Frame] = []
        self.module_outputs: dict[str, Geometry | None] = {}
        self.seen_params: set[int] = set()
        self.notes: dict[str, None] = {}

    # -- bookkeeping -------------------------------------------------------------------------
    def set_geom(self, t: Tensor, g: Geometry | None, op: str = "") -> None:
        if g is not None and g.kind == "map" and (t.dim() < 3 or tuple(t.shape[-2:]) != (g.h.n, g.w.n)):
            self.note(f"receptive field unknown after '{op}': its output {tuple(t.shape)} is not the map the "
                      "tracer expected")
            g = None
        self.geoms[id(t)] = (t, g)

    def tracked(self, t: Tensor) -> bool:
        entry = self.geoms.get(id(t))
        return entry is not None and entry[0] is t

    def geom(self, t: Tensor) -> Geometry | None:
        return self.geoms[id(t)][1]

    def note(self, text: str) -> None:
        self.notes[text] = None

    # -- the mode ----------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = _op_name(func)
        if name in _IGNORED:
            return out
        inputs = [t for t in _tensors((args, kwargs)) if self.tracked(t)]
        outs = list(_tensors(out))
        if not inputs or not outs:
            return out
        geom, macs = self.rule(name, args, kwargs, inputs, outs)
        for t in outs:
            self.set_geom(t, geom, name)
        frame = self.stack[-1] if self.stack else None
        structural = name in _STRUCTURAL or len({id(t) for t in inputs}) > 1 or (
            name == "__getitem__" and geom is not self.geom(inputs[0]))
        if frame is not None and (frame.leaf or frame.deformable):
            frame.macs += macs
        elif structural or macs:
            self.op_row(frame, name, inputs[0], outs[0], macs)
        return out

    def op_row(self, frame: _Frame | None, name: str, x: Tensor, y: Tensor, macs: int) -> None:
        label = name.strip("_") or name
        prefix = f"{frame.name}." if frame is not None and frame.name else ""
        counts = frame.op_counts if frame is not None else {}
        n = counts.get(label, 0)
        counts[label] = n + 1
        self.analysis.add_row({"name": f"{prefix}{label}" + (f"_{n}" if n else ""), "type": label,
                               "input_shape": _shape(x), "output_shape": _shape(y), "params": 0,
                               "params_no_bias": 0, "macs": int(macs)}, self.geom(y))

    # -- hooks -------------------------------------------------------------------------------
    def pre_hook(self, name: str, module: nn.Module, args: tuple) -> None:
        first = next(_tensors(args), None)
        leaf = next(iter(module.children()), None) is None
        frame = _Frame(name, module, leaf, _shape(first) if first is not None else None)
        if _is_deformable(module) and first is not None and first.dim() == 4:
            frame.deformable = True
            kh, kw = module.kernel_size
            mask = getattr(module, "modulated", False) or (len(args) > 2 and args[2] is not None)
            ho, wo = (fm.conv_output_size(n, k, st, (p, p), d) for n, k, st, p, d in
                      zip(first.shape[2:], module.kernel_size, module.stride, module.padding, module.dilation))
            frame.sampling_macs = first.shape[1] * kh * kw * ho * wo * (4 + int(mask))
        self.stack.append(frame)

    def post_hook(self, name: str, module: nn.Module, output) -> None:
        frame = self.stack.pop()
        y = next(_tensors(output), None)
        g = self.geom(y) if y is not None and self.tracked(y) else None
        self.module_outputs[name] = g
        if not (frame.leaf or frame.deformable):
            return
        frame.macs += frame.sampling_macs
        params = params_no_bias = 0
        for pname, p in module.named_parameters(recurse=False):
            if id(p) in self.seen_params:
                continue
            self.seen_params.add(id(p))
            params += p.numel()
            params_no_bias += 0 if pname.endswith("bias") else p.numel()
        self.analysis.add_row({"name": name or type(module).__name__, "type": type(module).__name__,
                               "input_shape": frame.input_shape, "output_shape": _shape(y) if y is not None else [],
                               "params": params, "params_no_bias": params_no_bias, "macs": int(frame.macs)}, g)

    # -- the rules: (output geometry, MACs) for one op ---------------------------------------
    def rule(self, name: str, args, kwargs, inputs: list[Tensor], outs: list[Tensor]):
        geoms = [self.geom(t) for t in inputs]
        y = outs[0]
        if name in ("conv1d", "conv2d", "conv3d"):
            return self.conv(name, _bind(name, args, kwargs), y)
        if name == "conv_transpose2d":
            return self.conv_transpose(_bind(name, args, kwargs), y)
        if name == "linear":
            w = args[1] if len(args) > 1 else kwargs["weight"]
            return self.dense_geom(geoms, name), y.numel() * w.shape[1]
        if name in _MATMULS:
            return self.dense_geom(geoms, name), self.matmul_macs(name, args, kwargs, y)
        if name == "multi_head_attention_forward":  # nn.MultiheadAttention: (L, N, E) query, (S, N, ·) key/value
            q, k, v = (kwargs.get(n, args[i] if len(args) > i else None)
                       for i, n in enumerate(("query", "key", "value")))
            (lq, e), (s_, kd, vd) = (q.shape[0], q.shape[-1]), (k.shape[0], k.shape[-1], v.shape[-1])
            batch = q.shape[1] if q.dim() == 3 else 1
            macs = batch * (2 * lq * e * e + s_ * (kd + vd) * e + 2 * lq * s_ * e)  # Q, out; K, V; QKᵀ, AV
            return self.dense_geom(geoms, name), macs
        if any(g is None for g in geoms):
            return None, 0
        if name in ("max_pool2d", "avg_pool2d"):
            return self.pool(name, _bind(name, args, kwargs), y), 0
        if name in ("adaptive_avg_pool2d", "adaptive_max_pool2d"):
            return self.adaptive(geoms[0], inputs[0], y), 0
        if name == "interpolate":
            return self.interpolate(_bind(name, args, kwargs), geoms[0], inputs[0], y), 0
        if name == "pad":
            return self.pad(_bind(name, args, kwargs), geoms[0], inputs[0], y), 0
        if name in ("pixel_shuffle", "pixel_unshuffle"):
            return self.shuffle(name, _bind(name, args, kwargs), geoms[0], y), 0
        if name == "__getitem__":
            return self.getitem(args[1], geoms[0], inputs[0], y), 0
        if name == "flatten":
            return self.flatten(_bind(name, args, kwargs), geoms[0], inputs[0]), 0
        if name in ("view", "reshape", "unflatten", "squeeze", "unsqueeze"):
            return self.reshape(name, geoms[0], inputs[0], y), 0
        if name in ("permute", "transpose", "movedim", "swapaxes", "swapdims"):
            return self.permute(name, args, geoms[0], inputs[0]), 0
        if name in ("cat", "stack"):
            return self.cat(name, args, kwargs, geoms, y), 0
        if name in ("max", "min") and len(args) > 1 and isinstance(args[1], Tensor):
            return self.merge(geoms, y), 0  # element-wise maximum of two tensors
        if name in _REDUCTIONS:
            return self.reduction(name, args, kwargs, geoms[0], inputs[0], y), 0
        if name in _DIM_ARG:
            pos, default = _DIM_ARG[name]
            dim = kwargs.get("dim", kwargs.get("dims", args[pos] if len(args) > pos else default))
            g = self.along(dim, geoms[0], inputs[0])
            if g is None:
                self.note(f"receptive field unknown after '{name}' along a spatial axis")
            return g, 0
        if name in _ELEMENTWISE:
            return self.merge(geoms, y), 0
        if all(g.kind == "global" for g in geoms):
            return GLOBAL, 0
        self.note(f"receptive field unknown after '{name}' (the tracer has no rule for it)")
        return None, 0

    def conv(self, name: str, b: dict, y: Tensor):
        x, w = b["input"], b["weight"]
        groups = int(b.get("groups", 1) or 1)
        macs = y.numel() * w.shape[1] * _prod(w.shape[2:])
        g = self.geom(x)
        if name != "conv2d" or x.dim() != 4:
            return (None if g is None or g.kind != "global" else GLOBAL), macs
        c_in, c_out = x.shape[1], w.shape[0]
        k = (w.shape[2], w.shape[3])
        s, d = pair(_two(b.get("stride", 1))), pair(_two(b.get("dilation", 1)))
        p = b.get("padding", 0)
        if p == "valid":
            pads = ((0, 0), (0, 0))
        elif p == "same":
            pads = tuple((d[a] * (k[a] - 1) // 2, d[a] * (k[a] - 1) - d[a] * (k[a] - 1) // 2) for a in range(2))
        else:
            ph, pw = pair(_two(p))
            pads = ((ph, ph), (pw, pw))
        h, wd = x.shape[2], x.shape[3]
        ho, wo = (fm.conv_output_size(n, k[a], s[a], pads[a], d[a]) for a, n in enumerate((h, wd)))
        _check(name, (ho, wo), y)
        macs = fm.conv_macs(c_in, c_out, k, (ho, wo), groups)
        if g is None or g.kind != "map":
            return (GLOBAL if g is not None and g.kind == "global" else None), macs
        return Geometry("map", geo.conv_axis(g.h, ho, k[0], s[0], pads[0][0], d[0]),
                        geo.conv_axis(g.w, wo, k[1], s[1], pads[1][0], d[1])), macs

    def conv_transpose(self, b: dict, y: Tensor):
        x, w = b["input"], b["weight"]
        groups = int(b.get("groups", 1) or 1)
        c_in, c_out = x.shape[1], w.shape[1] * groups
        k = (w.shape[2], w.shape[3])
        s, p = pair(_two(b.get("stride", 1))), pair(_two(b.get("padding", 0)))
        op, d = pair(_two(b.get("output_padding", 0))), pair(_two(b.get("dilation", 1)))
        ho, wo = (fm.conv_transpose_output_size(n, k[a], s[a], p[a], op[a], d[a])
                  for a, n in enumerate(x.shape[2:]))
        _check("conv_transpose2d", (ho, wo), y)
        macs = fm.conv_transpose_macs(c_in, c_out, k, tuple(x.shape[2:]), groups)
        g = self.geom(x)
        if g is None or g.kind != "map":
            return (GLOBAL if g is not None and g.kind == "global" else None), macs
        return Geometry("map", geo.transposed_axis(g.h, ho, k[0], s[0], p[0], d[0]),
                        geo.transposed_axis(g.w, wo, k[1], s[1], p[1], d[1])), macs

    def pool(self, name: str, b: dict, y: Tensor) -> Geometry | None:
        x = b["input"]
        k = pair(_two(b["kernel_size"]))
        s = pair(_two(b.get("stride") or k))
        p = pair(_two(b.get("padding", 0)))
        d = pair(_two(b.get("dilation", 1))) if name == "max_pool2d" else (1, 1)
        ceil = bool(b.get("ceil_mode", False))
        ho, wo = (fm.pool_output_size(n, k[a], s[a], p[a], d[a], ceil) for a, n in enumerate(x.shape[-2:]))
        _check(name, (ho, wo), y)
        g = self.geom(x)
        if g.kind != "map":
            return g if g.kind == "global" else None
        return Geometry("map", geo.conv_axis(g.h, ho, k[0], s[0], p[0], d[0]),
                        geo.conv_axis(g.w, wo, k[1], s[1], p[1], d[1]))

    def adaptive(self, g: Geometry, x: Tensor, y: Tensor) -> Geometry | None:
        if g.kind != "map":
            return g if g.kind == "global" else None
        (h, w), (ho, wo) = x.shape[-2:], y.shape[-2:]
        if (ho, wo) == (1, 1) and (h, w) != (1, 1):
            return GLOBAL
        return Geometry("map", geo.adaptive_axis(g.h, ho), geo.adaptive_axis(g.w, wo))

    def interpolate(self, b: dict, g: Geometry, x: Tensor, y: Tensor) -> Geometry | None:
        if g.kind != "map":
            return g if g.kind == "global" else None
        mode = b.get("mode", "nearest")
        ho, wo = y.shape[-2:]
        if mode == "area":
            return Geometry("map", geo.adaptive_axis(g.h, ho), geo.adaptive_axis(g.w, wo))
        if mode not in ("nearest", "nearest-exact", "bilinear", "bicubic") or b.get("antialias"):
            self.note(f"receptive field unknown after interpolate(mode={mode!r})")
            return None
        sf = b.get("scale_factor")
        scales: tuple = (None, None)
        if sf is not None and not b.get("recompute_scale_factor"):
            sh, sw = (sf, sf) if isinstance(sf, (int, float)) else sf
            scales = (1.0 / sh, 1.0 / sw)
        ac = b.get("align_corners")
        return Geometry("map", geo.interpolate_axis(g.h, ho, mode, ac, scales[0]),
                        geo.interpolate_axis(g.w, wo, mode, ac, scales[1]))

    def pad(self, b: dict, g: Geometry, x: Tensor, y: Tensor) -> Geometry | None:
        if g.kind != "map":
            return g if g.kind == "global" else None
        p = list(b["pad"])
        p += [0] * (4 - len(p))
        mode = b.get("mode", "constant") or "constant"
        return Geometry("map", geo.pad_axis(g.h, p[2], y.shape[-2], mode), geo.pad_axis(g.w, p[0], y.shape[-1], mode))

    def shuffle(self, name: str, b: dict, g: Geometry, y: Tensor) -> Geometry | None:
        if g.kind != "map":
            return g if g.kind == "global" else None
        if name == "pixel_unshuffle":
            r = int(b["downscale_factor"])
            return Geometry("map", geo.conv_axis(g.h, y.shape[-2], r, r, 0), geo.conv_axis(g.w, y.shape[-1], r, r, 0))
        r = int(b["upscale_factor"])

        def up(a: geo.Axis, n: int) -> geo.Axis:
            return geo.WindowAxis(a, n, a.jump / r, lambda o: (o // r,))

        return Geometry("map", up(g.h, y.shape[-2]), up(g.w, y.shape[-1]))

    def getitem(self, key, g: Geometry, x: Tensor, y: Tensor) -> Geometry | None:
        if g.kind != "map":
            return g if g.kind == "global" else None
        key = key if isinstance(key, tuple) else (key,)
        if any(k is None or isinstance(k, (Tensor, list, bool)) for k in key):
            return None
        n_ell = sum(k is Ellipsis for k in key)
        if n_ell > 1:
            return None
        if n_ell:
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (x.dim() - len(key) + 1) + key[i + 1:]
        key = key + (slice(None),) * (x.dim() - len(key))
        spatial = key[-2:]
        if x.dim() - len(key) != 0 or not all(isinstance(k, slice) for k in spatial):
            return None
        if y.dim() < 3:
            return None
        axes = []
        for k, a in zip(spatial, (g.h, g.w)):
            start, stop, step = k.indices(a.n)
            n = len(range(start, stop, step))
            axes.append(a if (start, step, n) == (0, 1, a.n) else geo.slice_axis(a, start, step, n))
        return Geometry("map", axes[0], axes[1]) if axes[0] is not g.h or axes[1] is not g.w else g

    def flatten(self, b: dict, g: Geometry, x: Tensor) -> Geometry | None:
        if g.kind != "map":
            return g
        nd = x.dim()
        start, end = int(b.get("start_dim", 0)) % nd, int(b.get("end_dim", -1)) % nd
        if start <= 1 and end == nd - 1:
            return Geometry("flat", g.h, g.w)
        if end < nd - 2:
            return g
        return None

    def reshape(self, name: str, g: Geometry, x: Tensor, y: Tensor) -> Geometry | None:
        if g.kind == "global":
            return GLOBAL
        if g.kind == "flat":
            return g if y.dim() <= 2 else None
        if tuple(y.shape) == tuple(x.shape):
            return g
        if y.dim() == 2 and y.shape[0] == x.shape[0]:
            return Geometry("flat", g.h, g.w)
        if y.dim() >= 3 and tuple(y.shape[-2:]) == tuple(x.shape[-2:]) and name in ("squeeze", "unsqueeze",
                                                                                     "view", "reshape"):
            # a channel-only reshape keeps the spatial axes when the trailing H, W are untouched
            return g if _prod(y.shape[:-2]) == _prod(x.shape[:-2]) else None
        return None

    def permute(self, name: str, args, g: Geometry, x: Tensor) -> Geometry | None:
        """Keeps the geometry only when H and W stay the last two axes (NHWC layouts are not followed)."""
        if g.kind != "map":
            return g if g.kind == "global" else None
        nd = x.dim()
        if name == "permute":
            perm = args[1] if len(args) == 2 and isinstance(args[1], (list, tuple)) else args[1:]
            moved = [int(d) % nd for d in perm][-2:] != [nd - 2, nd - 1]
        elif name == "movedim":
            src, dst = (a if isinstance(a, (list, tuple)) else (a,) for a in args[1:3])
            moved = any(int(d) % nd >= nd - 2 for d in (*src, *dst)) and tuple(src) != tuple(dst)
        else:
            d0, d1 = int(args[1]) % nd, int(args[2]) % nd
            moved = d0 != d1 and (d0 >= nd - 2 or d1 >= nd - 2)
        if moved:
            self.note(f"receptive field unknown after '{name}' moved the spatial axes (channels-last layout)")
            return None
        return g

    def cat(self, name: str, args, kwargs, geoms: list[Geometry], y: Tensor) -> Geometry | None:
        dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
        if name == "stack" or y.dim() < 3:
            return self.merge(geoms, y) if all(g.kind != "map" for g in geoms) else None
        if dim % y.dim() >= y.dim() - 2:
            return None
        return self.merge(geoms, y)

    def reduction(self, name: str, args, kwargs, g: Geometry, x: Tensor, y: Tensor) -> Geometry | None:
        dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
        if name == "norm":
            dim = kwargs.get("dim", args[2] if len(args) > 2 else None)
        if g.kind != "map":
            return g if g.kind == "global" else (GLOBAL if dim is None else None)
        if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0):
            return GLOBAL
        if isinstance(dim, Tensor) or not isinstance(dim, (int, list, tuple)):
            return None
        dims = {d % x.dim() for d in (dim if isinstance(dim, (list, tuple)) else (dim,))}
        spatial = {x.dim() - 2, x.dim() - 1}
        if spatial <= dims:
            return GLOBAL
        if dims & spatial:
            return None
        return g if y.dim() >= 3 and tuple(y.shape[-2:]) == tuple(x.shape[-2:]) else None

    def along(self, dim, g: Geometry, x: Tensor) -> Geometry | None:
        if g.kind != "map":
            return g if g.kind == "global" else None
        dims = dim if isinstance(dim, (list, tuple)) else (dim,)
        if not all(isinstance(d, int) for d in dims):
            return None
        return g if all(d % x.dim() < x.dim() - 2 for d in dims) else None

    def merge(self, geoms: list[Geometry | None], y: Tensor) -> Geometry | None:
        if any(g is None for g in geoms):
            return None
        if any(g.kind == "global" for g in geoms):
            return GLOBAL
        first = geoms[0]
        if all(g is first for g in geoms):
            return first
        if y.dim() < 3 or any(g.kind != "map" for g in geoms):
            return None
        ho, wo = y.shape[-2:]
        if any(g.h.n not in (1, ho) or g.w.n not in (1, wo) for g in geoms):
            return None
        hs, ws = list({id(g.h): g.h for g in geoms}.values()), list({id(g.w): g.w for g in geoms}.values())
        h = hs[0] if len(hs) == 1 and hs[0].n == ho else geo.MergeAxis(hs, ho)
        w = ws[0] if len(ws) == 1 and ws[0].n == wo else geo.MergeAxis(ws, wo)
        return Geometry("map", h, w)

    def dense_geom(self, geoms: list[Geometry | None], name: str) -> Geometry | None:
        if all(g is not None and g.kind in ("flat", "global") for g in geoms):
            return GLOBAL
        self.note(f"receptive field unknown after '{name}' on a feature map (tokens or channels-last layout)")
        return None

    def matmul_macs(self, name: str, args, kwargs, y: Tensor) -> int:
        """MACs of a matrix product (the trace runs with batch 1, so these are per image)."""
        if name in ("matmul", "mm", "bmm"):
            return y.numel() * args[0].shape[-1]
        if name in ("addmm", "baddbmm", "addbmm"):
            a = args[1] if len(args) > 1 else kwargs.get("mat1", kwargs.get("batch1"))
            return y.numel() * a.shape[-1]
        if name == "scaled_dot_product_attention":
            q, k, v = (kwargs.get(n, args[i] if len(args) > i else None)
                       for i, n in enumerate(("query", "key", "value")))
            return _prod(q.shape[:-2]) * q.shape[-2] * k.shape[-2] * (q.shape[-1] + v.shape[-1])
        self.note(f"MACs of '{name}' are not counted")
        return 0


def _two(v):
    if isinstance(v, (list, tuple)) and len(v) == 1:
        return int(v[0])
    if isinstance(v, (list, tuple)):
        return tuple(int(a) for a in v)
    return int(v)


def _prod(xs) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


class FormulaMismatch(AssertionError):
    """A vislab formula disagrees with what PyTorch computed: a bug in vislab, never bad input."""


def _is_deformable(module: nn.Module) -> bool:
    from vislab.layers.deform_conv import DeformableConv2d, DeformConv2d

    return isinstance(module, (DeformableConv2d, DeformConv2d))


def _nominal_forward(module: nn.Module):
    """The forward a deformable layer gets during a trace: the regular convolution of the same
    geometry (same output shape) after computing the offsets as usual."""
    import torch.nn.functional as F

    def conv(input: Tensor) -> Tensor:
        return F.conv2d(input, module.weight, module.bias, module.stride, module.padding, module.dilation,
                        module.groups)

    if hasattr(module, "offset_and_mask"):
        def forward(input: Tensor) -> Tensor:
            module.offset_and_mask(input)
            return conv(input)
    else:
        def forward(input: Tensor, offset: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
            return conv(input)
    return forward


def _check(op: str, expected: tuple[int, int], y: Tensor) -> None:
    if tuple(y.shape[-2:]) != tuple(expected):
        raise FormulaMismatch(f"vislab.arith formula for {op} gives {expected} but the module produced "
                           f"{tuple(y.shape[-2:])}; please report this bug")


# ----------------------------------------------------------------------------------------------


def trace_module(model: nn.Module, input_shape: str | tuple[int, ...]) -> Analysis:
    """Trace one forward pass of ``model`` on a zero input of ``input_shape`` (batch 1)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"trace_module expects an nn.Module, got {type(model).__name__}")
    shape = parse_shape(input_shape)
    analysis = Analysis(type(model).__name__, shape)
    ref = next(iter(model.parameters()), None)
    if ref is None:
        ref = next(iter(model.buffers()), None)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    x = torch.zeros((1, *shape), device=device, dtype=dtype)

    tracer = _Tracer(analysis)
    tracer.set_geom(x, Geometry.input(shape[1], shape[2]) if len(shape) == 3 else GLOBAL)
    modes = {m: m.training for m in model.modules()}
    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(lambda m, a, n=name: tracer.pre_hook(n, m, a)))
        handles.append(module.register_forward_hook(lambda m, a, o, n=name: tracer.post_hook(n, m, o)))
    deformable = [m for m in model.modules() if _is_deformable(m)]
    for m in deformable:
        m.forward = _nominal_forward(m)
    if deformable:
        tracer.note("deformable layers: nominal receptive field (zero offsets; learned offsets move it); MACs "
                    "include the bilinear sampling (4 per sampled value, +1 with a mask)")
    model.eval()
    try:
        with torch.no_grad(), geo.deep_recursion(), tracer:
            try:
                model(x)
            except FormulaMismatch:
                raise
            except (RuntimeError, AssertionError) as exc:  # the model cannot take this input size
                detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ValueError(f"{type(model).__name__} cannot run on a {'x'.join(map(str, shape))} input: "
                                 f"{detail}") from exc
    finally:
        for h in handles:
            h.remove()
        for m in deformable:
            del m.forward
        for m, training in modes.items():
            m.training = training

    named = dict(model.named_parameters())
    total = sum(p.numel() for p in named.values())
    no_bias = sum(p.numel() for n, p in named.items() if not n.endswith("bias"))
    covered = sum(r["params"] for r in analysis.rows)
    if covered != total:
        rest_no_bias = no_bias - sum(r["params_no_bias"] for r in analysis.rows)
        uncalled = [n for n, m in model.named_modules() if n not in tracer.module_outputs
                    and any(True for _ in m.parameters(recurse=False))]
        if uncalled:
            analysis.notes.append(f"{len(uncalled)} module(s) with parameters were not called by forward "
                                  f"(e.g. {uncalled[0]}); their parameters are in the totals")
        analysis.add_row({"name": "(parameters outside the traced leaf modules)", "type": "-", "input_shape": None,
                          "output_shape": None, "params": total - covered, "params_no_bias": rest_no_bias,
                          "macs": 0}, None)
        analysis.rows[-1].update({"rf": None, "stride": None, "padding": None})
    analysis.notes.extend(tracer.notes)
    analysis.module_outputs = tracer.module_outputs
    finished = analysis.finish(params=total, params_no_bias=no_bias)
    if finished.rows and finished.rows[-1]["output_shape"] is None:
        out_row = next((r for r in reversed(finished.rows) if r["output_shape"] is not None), None)
        finished.totals["output_shape"] = out_row["output_shape"] if out_row else None
    return finished


def load_model(name: str, kwargs: dict | None = None, *, device: str = "meta") -> nn.Module:
    """A model by name, without weights: vislab registry first, then torchvision, then timm.

    ``kwargs`` go to the builder. On ``device="meta"`` (the default) the model costs no memory and no
    initialisation; constructors that compute on their tensors fall back to the CPU.
    """
    kwargs = dict(kwargs or {})
    from vislab.models import create_model, is_vislab_model

    def build() -> nn.Module:
        if is_vislab_model(name):
            return create_model(name, **kwargs)
        import torchvision

        if name in torchvision.models.list_models():
            # never download: no weights, and no pretrained backbone for segmentation/detection models
            builder = torchvision.models.get_model_builder(name)
            if "weights_backbone" in inspect.signature(builder).parameters:
                kwargs.setdefault("weights_backbone", None)
            return builder(weights=None, **kwargs)
        import timm

        if timm.is_model(name):
            return timm.create_model(name, pretrained=False, **kwargs)
        from vislab.models import list_models

        raise ValueError(f"unknown model {name!r}: not a vislab model ({', '.join(list_models())}), "
                         "nor a torchvision or timm model name")

    if device != "meta":
        with torch.device(device):
            return build()
    try:
        with torch.device("meta"):
            return build()
    except ValueError:
        raise
    except Exception:  # some constructors compute on their tensors; build those on the CPU
        return build()
