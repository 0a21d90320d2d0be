"""Plain-text rendering of an analysis (the table ``vislab arith`` prints)."""

from __future__ import annotations

from fractions import Fraction


def _pair(v, fraction: bool = False) -> str:
    if v is None:
        return "?"
    if isinstance(v, str):
        return v
    a, b = (_num(x, fraction) for x in v)
    return a if a == b else f"{a}x{b}"


def _num(x, fraction: bool) -> str:
    if x is None:
        return "?"
    if fraction and isinstance(x, float) and not float(x).is_integer():
        f = Fraction(x).limit_denominator(1 << 16)
        return f"{f.numerator}/{f.denominator}"
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _shape(s) -> str:
    return "-" if s is None else "x".join(str(d) for d in s)


def human(n: float) -> str:
    """``1814073344 → '1.81 G'``."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(int(n))


def format_table(result: dict) -> str:
    """The per-layer table and totals of :func:`vislab.arith.analyze`'s result."""
    is_spec = result.get("source") == "spec"
    head = ["#", "layer"] + ([] if is_spec else ["type"]) + ["output", "params", "MACs", "RF", "stride", "pad"]
    lines = []
    for r in result["rows"]:
        cells = [str(r["index"]), r["name"]] + ([] if is_spec else [r["type"]])
        dash = r["rf"] == "global"
        cells += [_shape(r["output_shape"]), f"{r['params']:,}", f"{r['macs']:,}", _pair(r["rf"]),
                  "-" if dash else _pair(r["stride"], fraction=True), "-" if dash else _pair(r["padding"])]
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) if lines else len(h) for i, h in enumerate(head)]
    right = {0} | {i for i, h in enumerate(head) if h in ("params", "MACs", "RF", "stride", "pad")}

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    t = result["totals"]
    out = [f"input {_shape(result['input_shape'])} ({result['source']})", fmt(head),
           "  ".join("-" * w for w in widths)]
    out += [fmt(c) for c in lines]
    out.append("")
    out.append(f"output      {_shape(t['output_shape'])}")
    out.append(f"params      {t['params']:,} ({human(t['params'])}); without bias {t['params_no_bias']:,}")
    out.append(f"MACs        {t['macs']:,} ({human(t['macs'])}); FLOPs ≈ 2·MACs = {human(2 * t['macs'])}")
    if t.get("rf") is not None:
        out.append(f"RF          {_pair(t['rf'])} (effective stride {_pair(t['stride'], fraction=True)}, "
                   f"effective padding {_pair(t['padding'])}) at the last layer with a local receptive field")
    for note in result.get("notes", []):
        out.append(f"note: {note}")
    return "\n".join(out)
