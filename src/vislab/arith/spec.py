"""Layer-spec strings: ``"conv(16,k=5,s=1,p=1) relu maxpool(2) conv(16,k=5) flatten dense(10)"``.

A spec is a sequence of layers separated by spaces (or ``,`` ``;`` ``|`` ``->``). Each layer is a name
with optional arguments in parentheses: positional values in the order listed below, or
``key=value``. Sizes may be one number or ``HxW`` (``k=3x5``). Grammar of the layers:

=============================================  ==========================================================
``conv(out, k=3, s=1, p=0, d=1, g=1, bias=1)``  2-D convolution; ``p`` may be ``same`` (TF/Keras
                                                convention, extra pixel right/bottom) or ``valid``
``dwconv(k=3, s=1, p=0, d=1, m=1, bias=1)``     depthwise conv (``groups = C_in``, ``C_out = m·C_in``)
``deconv(out, k=2, s=2, p=0, op=0, d=1, g=1)``  transposed conv (aliases ``convT``, ``upconv``)
``maxpool(k=2, s=k, p=0, d=1, ceil=0)``         max pooling (``p`` may be ``same``)
``avgpool(k=2, s=k, p=0, ceil=0)``              average pooling
``gap`` / ``gmp``                               global average / max pooling → ``C×1×1``
``bn``                                          batch norm (2 parameters per channel)
``relu relu6 leakyrelu gelu silu sigmoid``      activations (and ``tanh elu hardswish softmax identity``)
``dropout(p=0.5)``                              dropout
``pad(p)``                                      zero padding
``upsample(s=2, mode=nearest)``                 nearest or ``bilinear`` upsampling
``flatten`` then ``dense(out, bias=1)``         fully connected (aliases ``fc``, ``linear``)
``save(name)``                                  remember the current tensor under ``name``
``concat(name, ...)``                           concatenate channels with saved tensors (U-Net skips,
                                                dense blocks)
``add(name, ...)``                              add saved tensors (residual connections)
=============================================  ==========================================================

:func:`parse_spec` turns the string into :class:`Layer` records; :func:`build_module` builds the
equivalent ``nn.Module`` so that every number vislab computes can be checked against PyTorch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_POS = "positive"      # a positive int
_SIZE = "size"         # a positive int or an HxW pair
_PAD = "pad"           # a non-negative int, HxW pair, "same" or "valid"
_NONNEG = "nonneg"     # a non-negative int or HxW pair
_BOOL = "bool"
_PROB = "prob"         # a float in [0, 1)
_FLOAT = "float"
_NAME = "name"
_MODE = "mode"


@dataclass(frozen=True)
class _Kind:
    positional: tuple[str, ...]
    types: dict[str, str]
    defaults: dict[str, object] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    varargs: str | None = None  # collects every positional value (save/concat/add names)


_ACTIVATIONS = ("relu", "relu6", "leakyrelu", "elu", "gelu", "silu", "sigmoid", "tanh", "hardswish",
                "softmax", "identity")

_KINDS: dict[str, _Kind] = {
    "conv": _Kind(("out", "k", "s", "p", "d", "g"),
                  {"out": _POS, "k": _SIZE, "s": _SIZE, "p": _PAD, "d": _SIZE, "g": _POS, "bias": _BOOL},
                  {"k": 3, "s": 1, "p": 0, "d": 1, "g": 1, "bias": True}, ("out",)),
    "dwconv": _Kind(("k", "s", "p", "d"),
                    {"k": _SIZE, "s": _SIZE, "p": _PAD, "d": _SIZE, "m": _POS, "bias": _BOOL},
                    {"k": 3, "s": 1, "p": 0, "d": 1, "m": 1, "bias": True}),
    "deconv": _Kind(("out", "k", "s", "p", "op", "d", "g"),
                    {"out": _POS, "k": _SIZE, "s": _SIZE, "p": _NONNEG, "op": _NONNEG, "d": _SIZE, "g": _POS,
                     "bias": _BOOL},
                    {"k": 2, "s": 2, "p": 0, "op": 0, "d": 1, "g": 1, "bias": True}, ("out",)),
    "maxpool": _Kind(("k", "s", "p", "d"), {"k": _SIZE, "s": _SIZE, "p": _PAD, "d": _SIZE, "ceil": _BOOL},
                     {"k": 2, "s": None, "p": 0, "d": 1, "ceil": False}),
    "avgpool": _Kind(("k", "s", "p"), {"k": _SIZE, "s": _SIZE, "p": _PAD, "ceil": _BOOL},
                     {"k": 2, "s": None, "p": 0, "ceil": False}),
    "gap": _Kind((), {}),
    "gmp": _Kind((), {}),
    "bn": _Kind((), {}),
    "act": _Kind(("slope",), {"slope": _FLOAT}, {"slope": 0.01}),
    "dropout": _Kind(("p",), {"p": _PROB}, {"p": 0.5}),
    "pad": _Kind(("p",), {"p": _NONNEG}, {"p": 1}),
    "upsample": _Kind(("s", "mode"), {"s": _POS, "mode": _MODE}, {"s": 2, "mode": "nearest"}),
    "flatten": _Kind((), {}),
    "dense": _Kind(("out",), {"out": _POS, "bias": _BOOL}, {"bias": True}, ("out",)),
    "save": _Kind((), {}, varargs="names"),
    "concat": _Kind((), {}, varargs="names"),
    "add": _Kind((), {}, varargs="names"),
}

_KIND_ALIASES = {
    "conv2d": "conv", "depthwise": "dwconv", "dwconv2d": "dwconv", "convt": "deconv", "tconv": "deconv",
    "upconv": "deconv", "conv_transpose": "deconv", "convtranspose": "deconv", "maxpool2d": "maxpool",
    "max_pool": "maxpool", "pool": "maxpool", "avgpool2d": "avgpool", "avg_pool": "avgpool",
    "globalavgpool": "gap", "global_avg_pool": "gap", "globalmaxpool": "gmp", "global_max_pool": "gmp",
    "batchnorm": "bn", "batchnorm2d": "bn", "fc": "dense", "linear": "dense", "cat": "concat",
    "swish": "silu", "leaky_relu": "leakyrelu", "id": "identity", "zeropad": "pad",
}

_ARG_ALIASES = {
    "kernel": "k", "kernel_size": "k", "stride": "s", "padding": "p", "pad": "p", "dilation": "d",
    "groups": "g", "filters": "out", "out_channels": "out", "channels": "out", "c": "out", "units": "out",
    "multiplier": "m", "output_padding": "op", "scale": "s", "scale_factor": "s", "ceil_mode": "ceil",
    "negative_slope": "slope",
}

_MODES = ("nearest", "bilinear")


class SpecError(ValueError):
    """A layer spec that cannot be parsed or does not fit its input; the message names the layer."""


@dataclass(frozen=True)
class Layer:
    """One parsed layer: canonical ``kind``, normalised ``args``, the ``text`` as written, 1-based ``index``."""

    kind: str
    args: dict
    text: str
    index: int

    @property
    def label(self) -> str:
        return f"layer {self.index} '{self.text}'"


_TOKEN = re.compile(r"\s*(?:->|[,;|])?\s*([A-Za-z_][\w\-]*)\s*(\(([^()]*)\))?")


def parse_spec(spec: str) -> list[Layer]:
    """Parse a layer-spec string; raises :class:`SpecError` (a ``ValueError``) naming the bad layer."""
    if not isinstance(spec, str):
        raise TypeError(f"a layer spec must be a string, got {type(spec).__name__}")
    depth = 0
    for i, ch in enumerate(spec):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0 or depth > 1:
            raise SpecError(f"unbalanced parentheses in the layer spec at position {i + 1}: "
                            f"{spec[max(0, i - 15):i + 1]!r}")
    if depth:
        raise SpecError(f"unbalanced parentheses in the layer spec: a '(' is never closed in {spec!r}")
    layers: list[Layer] = []
    pos = 0
    text = spec.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            rest = text[pos:].strip()
            if not rest or re.fullmatch(r"(->|[,;|]|\s)*", rest):
                break
            raise SpecError(f"cannot parse the layer spec at position {pos + 1}: {rest[:30]!r} "
                            f"(expected a layer like conv(16,k=3) or relu)")
        pos = m.end()
        name, body = m.group(1), m.group(3)
        token = name + (f"({body.replace(' ', '')})" if body is not None else "")
        layers.append(_parse_layer(name, body, token, len(layers) + 1))
    if not layers:
        raise SpecError("the layer spec is empty; expected layers like 'conv(16,k=3) relu maxpool(2)'")
    return layers


def _parse_layer(name: str, body: str | None, token: str, index: int) -> Layer:
    label = f"layer {index} '{token}'"
    key = name.lower()
    key = _KIND_ALIASES.get(key, key)
    act = None
    if key in _ACTIVATIONS:
        act, key = key, "act"
    if key not in _KINDS:
        known = sorted(set(_KINDS) - {"act"} | set(_ACTIVATIONS))
        raise SpecError(f"{label}: unknown layer type {name!r}; known: {', '.join(known)}")
    kind = _KINDS[key]
    args: dict[str, object] = dict(kind.defaults)
    if act is not None:
        args["name"] = act
    values = [] if body is None or not body.strip() else [v.strip() for v in body.split(",")]
    names: list[str] = []
    n_pos = 0
    for raw in values:
        if not raw:
            raise SpecError(f"{label}: empty argument")
        if "=" in raw:
            k, v = (s.strip() for s in raw.split("=", 1))
            k = _ARG_ALIASES.get(k.lower(), k.lower())
            if k not in kind.types:
                raise SpecError(f"{label}: unknown argument {k!r}; expected one of "
                                f"{', '.join(kind.types) or '(none)'}")
            args[k] = _parse_value(label, k, v, kind.types[k])
        elif kind.varargs:
            if not re.fullmatch(r"[A-Za-z_]\w*", raw):
                raise SpecError(f"{label}: {raw!r} is not a valid name (letters, digits, _)")
            names.append(raw)
        else:
            if n_pos >= len(kind.positional):
                raise SpecError(f"{label}: too many positional arguments; expected at most "
                                f"{len(kind.positional)} ({', '.join(kind.positional) or 'none'})")
            k = kind.positional[n_pos]
            n_pos += 1
            args[k] = _parse_value(label, k, raw, kind.types[k])
    if kind.varargs:
        if not names:
            raise SpecError(f"{label}: needs at least one name, e.g. {key}(skip1)")
        if key == "save" and len(names) != 1:
            raise SpecError(f"{label}: save takes exactly one name, got {len(names)}")
        args[kind.varargs] = tuple(names)
    for req in kind.required:
        if req not in args:
            raise SpecError(f"{label}: missing required argument {req!r}")
    if key in ("maxpool", "avgpool") and args["s"] is None:
        args["s"] = args["k"]
    return Layer(key, args, token, index)


def _parse_value(label: str, key: str, raw: str, typ: str) -> object:
    low = raw.lower()
    if typ == _BOOL:
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise SpecError(f"{label}: {key} must be true/false, got {raw!r}")
    if typ in (_PROB, _FLOAT):
        try:
            value = float(raw)
        except ValueError:
            raise SpecError(f"{label}: {key} must be a number, got {raw!r}") from None
        if typ == _PROB and not 0 <= value < 1:
            raise SpecError(f"{label}: {key} must be in [0, 1), got {raw!r}")
        return value
    if typ == _MODE:
        if low not in _MODES:
            raise SpecError(f"{label}: {key} must be one of {', '.join(_MODES)}, got {raw!r}")
        return low
    if typ == _PAD and low in ("same", "valid"):
        return low
    m = re.fullmatch(r"(-?\d+)(?:x(-?\d+))?", low)
    if m is None:
        expected = {"positive": "a positive integer", "size": "a positive integer or HxW",
                    "pad": "a non-negative integer, HxW, 'same' or 'valid'",
                    "nonneg": "a non-negative integer or HxW"}[typ]
        raise SpecError(f"{label}: {key} must be {expected}, got {raw!r}")
    nums = (int(m.group(1)),) if m.group(2) is None else (int(m.group(1)), int(m.group(2)))
    if typ == _POS and len(nums) == 2:
        raise SpecError(f"{label}: {key} must be a single positive integer, got {raw!r}")
    low_bound = 0 if typ in (_PAD, _NONNEG) else 1
    for n in nums:
        if n < low_bound:
            what = "non-negative" if low_bound == 0 else "positive"
            raise SpecError(f"{label}: {key} must be {what}, got {raw!r}")
    return nums[0] if len(nums) == 1 else nums


def pair(v: object) -> tuple[int, int]:
    """``3 → (3, 3)``; ``(3, 5) → (3, 5)``."""
    return (v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


def parse_shape(text: str) -> tuple[int, ...]:
    """``"3x224x224"`` (or ``3,224,224``) → ``(3, 224, 224)``; also ``"784"`` for a flat input."""
    if isinstance(text, (tuple, list)):
        dims = tuple(text)
    else:
        parts = re.split(r"[x×,\s]+", str(text).strip().lower())
        try:
            dims = tuple(int(p) for p in parts if p)
        except ValueError:
            dims = ()
    if len(dims) not in (1, 3) or any(not isinstance(d, int) or d < 1 for d in dims):
        raise ValueError(f"input shape must be CxHxW with positive sizes, like 3x224x224, got {text!r}")
    return dims
