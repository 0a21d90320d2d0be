"""Per-layer arithmetic of a layer spec or an ``nn.Module``: shapes, parameters, MACs, receptive fields.

:func:`analyze` is the entry point. For a spec string every number comes from the closed-form
formulas of :mod:`vislab.arith.formulas`; for a module the network is traced
(:mod:`vislab.arith.trace`). Both produce an :class:`Analysis` whose :meth:`Analysis.to_dict` is
JSON-ready::

    {"source": ..., "input_shape": [3, 128, 128],
     "rows": [{"index", "name", "type", "input_shape", "output_shape", "params", "params_no_bias",
               "macs", "rf", "stride", "padding"}, ...],
     "totals": {"params", "params_no_bias", "macs", "output_shape", "rf", "stride", "padding"},
     "notes": [...]}

``output_shape`` leaves out the batch; ``rf``/``stride``/``padding`` are ``[h, w]`` (``rf`` is
``"global"`` once every unit sees the whole input, ``None`` when it cannot be known); the totals'
``rf`` is the one of the last layer that still has a local receptive field.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vislab.arith import formulas as fm
from vislab.arith import geometry as geo
from vislab.arith.geometry import GLOBAL, Geometry
from vislab.arith.spec import Layer, SpecError, pair, parse_shape, parse_spec


@dataclass
class Analysis:
    """Rows, totals and notes of one analysis, plus the exact receptive-field state of every row."""

    source: str
    input_shape: tuple[int, ...]
    rows: list[dict] = field(default_factory=list)
    geometries: list[Geometry | None] = field(default_factory=list)
    totals: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    module_outputs: dict[str, Geometry | None] = field(default_factory=dict)  # traced modules only
    _summaries: dict[int, tuple[Geometry, dict]] = field(default_factory=dict, repr=False)

    def add_row(self, row: dict, geometry: Geometry | None) -> None:
        row = {"index": len(self.rows) + 1, **row}
        if geometry is None:
            row.update({"rf": None, "stride": None, "padding": None})
        else:
            if id(geometry) not in self._summaries:
                self._summaries[id(geometry)] = (geometry, geometry.summary())
            row.update(self._summaries[id(geometry)][1])
        self.rows.append(row)
        self.geometries.append(geometry)

    def finish(self, params: int | None = None, params_no_bias: int | None = None) -> Analysis:
        """Fill ``totals`` (parameters default to the sum over rows)."""
        last_local = next((r for r in reversed(self.rows) if isinstance(r["rf"], list)), None)
        self.totals = {
            "params": sum(r["params"] for r in self.rows) if params is None else params,
            "params_no_bias": (sum(r["params_no_bias"] for r in self.rows) if params_no_bias is None
                               else params_no_bias),
            "macs": sum(r["macs"] for r in self.rows),
            "output_shape": self.rows[-1]["output_shape"] if self.rows else list(self.input_shape),
            "rf": last_local["rf"] if last_local else None,
            "stride": last_local["stride"] if last_local else None,
            "padding": last_local["padding"] if last_local else None,
        }
        return self

    def to_dict(self) -> dict:
        return {"source": self.source, "input_shape": list(self.input_shape), "rows": self.rows,
                "totals": self.totals, "notes": list(self.notes)}


# ----------------------------------------------------------------------------------------------


def _fmt(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


def resolve_padding(layer: Layer, hw: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """``((top, bottom), (left, right))`` of a conv/pool layer for an input of size ``hw``."""
    a = layer.args
    p = a.get("p", 0)
    k, s, d = pair(a["k"]), pair(a["s"]), pair(a.get("d", 1))
    if p == "valid":
        return (0, 0), (0, 0)
    if p == "same":
        return fm.same_padding(hw[0], k[0], s[0], d[0]), fm.same_padding(hw[1], k[1], s[1], d[1])
    ph, pw = pair(p)
    return (ph, ph), (pw, pw)


def analyze_spec(spec: str | list[Layer], input_shape: str | tuple[int, ...]) -> Analysis:
    """Analyse a layer spec with the closed-form formulas (no tensors are created)."""
    layers = parse_spec(spec) if isinstance(spec, str) else list(spec)
    shape = parse_shape(input_shape)
    result = Analysis("spec", shape)
    geom: Geometry = Geometry.input(shape[1], shape[2]) if len(shape) == 3 else GLOBAL
    saved: dict[str, tuple[tuple[int, ...], Geometry]] = {}
    for layer in layers:
        out_shape, params, no_bias, macs, new_geom = _step(layer, shape, geom, saved)
        result.add_row({"name": layer.text, "type": layer.kind, "input_shape": list(shape),
                        "output_shape": list(out_shape), "params": params, "params_no_bias": no_bias,
                        "macs": macs}, new_geom)
        shape, geom = out_shape, new_geom
    return result.finish()


def _need_map(layer: Layer, shape: tuple[int, ...]) -> None:
    if len(shape) != 3:
        raise SpecError(f"{layer.label} needs a CxHxW feature map but received the flat shape {_fmt(shape)}; "
                        "put it before 'flatten'")


def _shrunk(layer: Layer, shape: tuple[int, ...], out_hw: tuple[int, int], detail: str) -> SpecError:
    return SpecError(f"{layer.label} received {_fmt(shape)} and would shrink the map to "
                     f"{out_hw[0]}x{out_hw[1]} (below 1 pixel): {detail}")


def _step(layer: Layer, shape: tuple[int, ...], geom: Geometry, saved: dict):
    """One layer: ``(output shape, params, params without bias, MACs, geometry)``."""
    a, kind = layer.args, layer.kind
    local = geom.kind == "map"

    if kind in ("conv", "dwconv"):
        _need_map(layer, shape)
        c, h, w = shape
        out_c, groups = (a["out"], a["g"]) if kind == "conv" else (c * a["m"], c)
        if c % groups or out_c % groups:
            raise SpecError(f"{layer.label} received {_fmt(shape)}: groups={groups} must divide both the "
                            f"{c} input and {out_c} output channels")
        k, s, d = pair(a["k"]), pair(a["s"]), pair(a["d"])
        (pt, pb), (pl, pr) = resolve_padding(layer, (h, w))
        ho = fm.conv_output_size(h, k[0], s[0], (pt, pb), d[0])
        wo = fm.conv_output_size(w, k[1], s[1], (pl, pr), d[1])
        if ho < 1 or wo < 1:
            raise _shrunk(layer, shape, (ho, wo), f"kernel {k[0]}x{k[1]} (dilation {d[0]}x{d[1]}, effective "
                          f"{fm.effective_kernel(k[0], d[0])}x{fm.effective_kernel(k[1], d[1])}) with padding "
                          f"{pt}x{pl} needs at least {fm.effective_kernel(k[0], d[0]) - pt - pb}x"
                          f"{fm.effective_kernel(k[1], d[1]) - pl - pr} input pixels")
        params = fm.conv_params(c, out_c, k, groups, a["bias"])
        macs = fm.conv_macs(c, out_c, k, (ho, wo), groups)
        g = Geometry("map", geo.conv_axis(geom.h, ho, k[0], s[0], pt, d[0]),
                     geo.conv_axis(geom.w, wo, k[1], s[1], pl, d[1])) if local else GLOBAL
        return (out_c, ho, wo), params, params - (out_c if a["bias"] else 0), macs, g

    if kind == "deconv":
        _need_map(layer, shape)
        c, h, w = shape
        out_c, groups = a["out"], a["g"]
        if c % groups or out_c % groups:
            raise SpecError(f"{layer.label} received {_fmt(shape)}: groups={groups} must divide both the "
                            f"{c} input and {out_c} output channels")
        k, s, p, op, d = pair(a["k"]), pair(a["s"]), pair(a["p"]), pair(a["op"]), pair(a["d"])
        for ax in range(2):
            if op[ax] >= max(s[ax], d[ax]):
                raise SpecError(f"{layer.label}: output padding {op[ax]} must be smaller than the stride "
                                f"{s[ax]} or the dilation {d[ax]}")
        ho = fm.conv_transpose_output_size(h, k[0], s[0], p[0], op[0], d[0])
        wo = fm.conv_transpose_output_size(w, k[1], s[1], p[1], op[1], d[1])
        if ho < 1 or wo < 1:
            raise _shrunk(layer, shape, (ho, wo), f"padding {p[0]}x{p[1]} removes more than the transposed "
                          "conv adds")
        params = fm.conv_transpose_params(c, out_c, k, groups, a["bias"])
        macs = fm.conv_transpose_macs(c, out_c, k, (h, w), groups)
        g = Geometry("map", geo.transposed_axis(geom.h, ho, k[0], s[0], p[0], d[0]),
                     geo.transposed_axis(geom.w, wo, k[1], s[1], p[1], d[1])) if local else GLOBAL
        return (out_c, ho, wo), params, params - (out_c if a["bias"] else 0), macs, g

    if kind in ("maxpool", "avgpool"):
        _need_map(layer, shape)
        c, h, w = shape
        k, s, d = pair(a["k"]), pair(a["s"]), pair(a.get("d", 1))
        (pt, pb), (pl, pr) = resolve_padding(layer, (h, w))
        if (pt, pl) == (pb, pr):
            for ax, pad in enumerate((pt, pl)):
                limit = k[ax] // 2  # PyTorch's rule, also for dilated max pooling
                if pad > limit:
                    raise SpecError(f"{layer.label}: padding {pad} is more than half the kernel ({limit} at most)")
            ho = fm.pool_output_size(h, k[0], s[0], pt, d[0], a["ceil"])
            wo = fm.pool_output_size(w, k[1], s[1], pl, d[1], a["ceil"])
        else:  # "same": an explicit asymmetric pad, then an unpadded pool
            ho = fm.pool_output_size(h + pt + pb, k[0], s[0], 0, d[0], a["ceil"])
            wo = fm.pool_output_size(w + pl + pr, k[1], s[1], 0, d[1], a["ceil"])
        if ho < 1 or wo < 1:
            raise _shrunk(layer, shape, (ho, wo), f"pooling window {k[0]}x{k[1]} is larger than the padded input")
        g = Geometry("map", geo.conv_axis(geom.h, ho, k[0], s[0], pt, d[0]),
                     geo.conv_axis(geom.w, wo, k[1], s[1], pl, d[1])) if local else GLOBAL
        return (c, ho, wo), 0, 0, 0, g

    if kind in ("gap", "gmp"):
        _need_map(layer, shape)
        return (shape[0], 1, 1), 0, 0, 0, GLOBAL

    if kind == "bn":
        return shape, fm.batchnorm_params(shape[0]), shape[0], 0, geom

    if kind in ("act", "dropout"):
        return shape, 0, 0, 0, geom

    if kind == "pad":
        _need_map(layer, shape)
        c, h, w = shape
        ph, pw = pair(a["p"])
        g = Geometry("map", geo.pad_axis(geom.h, ph, h + 2 * ph), geo.pad_axis(geom.w, pw, w + 2 * pw)) \
            if local else GLOBAL
        return (c, h + 2 * ph, w + 2 * pw), 0, 0, 0, g

    if kind == "upsample":
        _need_map(layer, shape)
        c, h, w = shape
        s = a["s"]
        g = Geometry("map", geo.interpolate_axis(geom.h, h * s, a["mode"], None, 1 / s),
                     geo.interpolate_axis(geom.w, w * s, a["mode"], None, 1 / s)) if local else GLOBAL
        return (c, h * s, w * s), 0, 0, 0, g

    if kind == "flatten":
        n = 1
        for dim in shape:
            n *= dim
        return (n,), 0, 0, 0, (Geometry("flat", geom.h, geom.w) if local else geom)

    if kind == "dense":
        if len(shape) != 1:
            raise SpecError(f"{layer.label} needs a flat input but received {_fmt(shape)}; add 'flatten' before it")
        params = fm.linear_params(shape[0], a["out"], a["bias"])
        return (a["out"],), params, params - (a["out"] if a["bias"] else 0), \
            fm.linear_macs(shape[0], a["out"]), GLOBAL

    if kind == "save":
        name = a["names"][0]
        if name in saved:
            raise SpecError(f"{layer.label}: the name {name!r} is already saved; use a new name")
        saved[name] = (shape, geom)
        return shape, 0, 0, 0, geom

    if kind in ("concat", "add"):
        parts = [(shape, geom)]
        for name in a["names"]:
            if name not in saved:
                known = ", ".join(saved) or "none yet"
                raise SpecError(f"{layer.label}: nothing was saved under {name!r} (saved: {known}); "
                                f"add save({name}) earlier")
            parts.append(saved[name])
        if kind == "concat":
            bad = [s for s, _ in parts if len(s) != 3 or s[1:] != shape[1:]]
            if bad:
                raise SpecError(f"{layer.label} received {_fmt(shape)} and "
                                f"{', '.join(_fmt(s) for s, _ in parts[1:])}: concatenation needs the same "
                                "height and width")
            out_shape = (sum(s[0] for s, _ in parts), *shape[1:])
        else:
            bad = [s for s, _ in parts if s != shape]
            if bad:
                raise SpecError(f"{layer.label} received {_fmt(shape)} and "
                                f"{', '.join(_fmt(s) for s, _ in parts[1:])}: addition needs equal shapes")
            out_shape = shape
        geoms = [g for _, g in parts]
        if any(g.kind == "global" for g in geoms):
            g = GLOBAL
        elif all(g.kind == "map" for g in geoms):
            g = Geometry("map", geo.MergeAxis([x.h for x in geoms], out_shape[-2]),
                         geo.MergeAxis([x.w for x in geoms], out_shape[-1]))
        else:
            g = GLOBAL
        return out_shape, 0, 0, 0, g

    raise AssertionError(kind)  # pragma: no cover
