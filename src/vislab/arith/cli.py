"""``vislab arith``: conv arithmetic from the command line.

    vislab arith "conv(16,k=5,s=1,p=1) relu maxpool(2) flatten dense(10)" --input 3x128x128 [--json]
    vislab arith --model resnet18 --input 3x224x224 [--arg KEY=VALUE ...] [--json]
    vislab arith conv-steps [--example gap|laplacian] [--x MATRIX --f MATRIX ...]
    vislab arith attention --dim 96 --heads 3 [--dk 32 --dv 32 --dout 96] [--map 56x56 --window 7 --time]
    vislab arith padding --size 7 --kernel 3 --stride 2
    vislab arith probe --model resnet18 --input 3x448x448 --layer layer4 [--unit 7,7]
"""

from __future__ import annotations

import argparse
import ast
import json
import sys

import numpy as np

from vislab.errors import UserError

USAGE = """\
vislab arith SPEC --input CxHxW [--json]                   analyse a layer spec
vislab arith --model NAME [--input CxHxW] [--arg K=V] [--json]  analyse a vislab/torchvision/timm model
vislab arith conv-steps [...]                              a small conv and its backward, step by step
vislab arith attention --dim C --heads H [...]             multi-head attention params, MSA vs W-MSA cost
vislab arith padding --size N --kernel K [--stride S]      'same' vs 'valid' output sizes
vislab arith probe --model NAME --input CxHxW --layer L    receptive field by gradient probing"""

SPEC_HELP = """\
layers (positional values in this order, or key=value; sizes N or HxW):
  conv(out,k=3,s=1,p=0,d=1,g=1,bias=1)  p may be 'same' or 'valid'
  dwconv(k=3,s=1,p=0,d=1,m=1)  deconv(out,k=2,s=2,p=0,op=0)  maxpool(k=2,s=k,p=0,d=1,ceil=0)
  avgpool(k,s,p)  gap  gmp  bn  relu relu6 leakyrelu gelu silu sigmoid tanh  dropout(p)  pad(p)
  upsample(s=2,mode=nearest|bilinear)  flatten  dense(out)  save(name)  concat(name,...)  add(name,...)
example: vislab arith "conv(16,k=5,s=1,p=1) relu maxpool(2) conv(16,k=5) relu maxpool(2) flatten dense(10)" \\
         --input 3x128x128"""


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one :class:`UserError` line (the CLI prints it on stderr, exit 2)."""

    def error(self, message: str):  # noqa: ANN201 - never returns
        raise UserError(f"{message} (see `{self.prog} -h`)")


def _model_kwargs(items: list[str]) -> dict:
    kwargs = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--arg expects KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        kwargs[key.strip()] = value
    return kwargs


def _analyze(argv: list[str]) -> int:
    p = _Parser(prog="vislab arith", usage=USAGE, epilog=SPEC_HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Per-layer output shape, parameters, MACs, receptive field, "
                                            "effective stride and padding.")
    p.add_argument("spec", nargs="?", help="a layer spec string (see below)")
    p.add_argument("--model", help="a vislab, torchvision or timm model name (no weights are loaded)")
    p.add_argument("--input", help="input shape CxHxW without the batch, e.g. 3x224x224 (default for --model)")
    p.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                   help="keyword argument for the model builder, e.g. --arg widths=(32,64) (repeatable)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    from vislab.arith.analyze import analyze_spec
    from vislab.arith.table import format_table

    if args.spec is not None and args.model:
        raise ValueError("give either a layer spec or --model, not both")
    if args.model:
        from vislab.arith.trace import load_model, trace_module

        kwargs = _model_kwargs(args.arg)
        try:
            model = load_model(args.model, kwargs)
        except TypeError as exc:  # a builder's unexpected or missing keyword: the user's --arg
            raise UserError(f"--model {args.model} with --arg {kwargs}: {exc}") from None
        result = trace_module(model, args.input or "3x224x224")
    elif args.spec and args.spec.strip():
        if args.arg:
            raise ValueError("--arg only applies to --model")
        if not args.input:
            raise ValueError("a layer spec needs --input CxHxW, e.g. --input 3x128x128")
        result = analyze_spec(args.spec, args.input)
    elif args.spec is not None:
        raise ValueError("the layer spec is empty; give layers such as \"conv(16,k=3) relu\" and --input CxHxW "
                         "(see `vislab arith -h`)")
    else:
        raise ValueError("give a layer spec and --input CxHxW, or --model NAME (see `vislab arith -h`)")
    data = result.to_dict()
    print(json.dumps(data, indent=2) if args.json else format_table(data))
    return 0


def _conv_steps(argv: list[str]) -> int:
    from vislab.arith.worked import EXAMPLES, conv_steps_text, parse_matrix

    p = _Parser(prog="vislab arith conv-steps",
                                description="Write out a small convolution (cross-correlation), optional global "
                                            "average pooling, and the backward pass, every number as a sum.")
    p.add_argument("--example", choices=sorted(EXAMPLES), default=None,
                   help="a worked example of the course (default: gap unless --x/--f are given)")
    p.add_argument("--x", help="input matrix, '[[2,3,4],[3,1,5],[4,-1,-2]]' or '2,3,4; 3,1,5; 4,-1,-2'")
    p.add_argument("--f", help="kernel matrix, same formats")
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--padding", type=int, default=0)
    p.add_argument("--dilation", type=int, default=1)
    p.add_argument("--gap", action="store_true", help="global average pooling after the conv")
    p.add_argument("--grad", default="1",
                   help="upstream gradient: ∂L/∂y of the GAP output, or ∂L/∂O (a number or a matrix)")
    args = p.parse_args(argv)
    if (args.x is None) != (args.f is None):
        raise ValueError("give both --x and --f (or neither, for a worked example)")
    if args.x is not None and args.example:
        raise ValueError("--example cannot be combined with --x/--f")
    if args.x is None:
        ex = dict(EXAMPLES[args.example or "gap"])
        x, w, padding, gap = ex["x"], ex["w"], ex["padding"], ex["gap"]
        stride, dilation = 1, 1
    else:
        x, w = parse_matrix(args.x), parse_matrix(args.f)
        padding, gap, stride, dilation = args.padding, args.gap, args.stride, args.dilation
    for name, v, low in (("--stride", stride, 1), ("--dilation", dilation, 1), ("--padding", padding, 0)):
        if v < low:
            raise ValueError(f"{name} must be >= {low}, got {v}")
    try:
        upstream: float | np.ndarray = float(args.grad)
    except ValueError:
        upstream = parse_matrix(args.grad)
    print(conv_steps_text(x, w, stride=stride, padding=padding, dilation=dilation, gap=gap, upstream=upstream))
    return 0


def _attention(argv: list[str]) -> int:
    from vislab.arith.attention import measure_attention_flops, mha_params, msa_macs, time_attention, wmsa_macs

    p = _Parser(prog="vislab arith attention",
                                description="Multi-head attention parameters and the Swin MSA vs W-MSA cost; with "
                                            "--map, the FLOPs of our real modules are counted with "
                                            "torch.utils.flop_counter.FlopCounterMode and compared.")
    p.add_argument("--dim", type=int, required=True, help="d_model (= C, channels per token)")
    p.add_argument("--heads", type=int, required=True)
    p.add_argument("--dk", type=int, default=None, help="query/key size per head (default dim/heads)")
    p.add_argument("--dv", type=int, default=None, help="value size per head (default dim/heads)")
    p.add_argument("--dout", type=int, default=None, help="output channels of the output projection (default dim)")
    p.add_argument("--no-bias", action="store_true")
    p.add_argument("--map", default=None, metavar="HxW", help="token map for the cost, e.g. 56x56")
    p.add_argument("--window", type=int, default=7, help="Swin window size M (default 7)")
    p.add_argument("--time", action="store_true", help="also time our modules on this CPU (batch 1)")
    args = p.parse_args(argv)
    params = mha_params(args.dim, args.heads, args.dk, args.dv, bias=not args.no_bias, d_out=args.dout)
    dk, dv = args.dk or args.dim // args.heads, args.dv or args.dim // args.heads
    dout = args.dout or args.dim
    print(f"multi-head attention d_model={args.dim}, heads={args.heads}, d_k={dk}, d_v={dv}"
          + (f", d_out={dout}" if args.dout else "") + f", bias={'no' if args.no_bias else 'yes'}")
    for k in ("q", "k", "v", "out"):
        print(f"  W_{k:<4} {params[k]:>14,}")
    print(f"  total  {params['total']:>14,}")
    if args.map:
        from vislab.arith.spec import parse_shape

        h, w = parse_shape(f"1x{args.map}")[1:]
        c, m = args.dim, args.window
        general = args.dk is not None or args.dv is not None or args.dout is not None
        kw = {"heads": args.heads, "d_k": args.dk, "d_v": args.dv, "d_out": args.dout}
        msa, wmsa = msa_macs(h, w, c, **kw), wmsa_macs(h, w, c, m, **kw)
        print(f"cost on a {h}x{w} map, C={c}, window M={m} (multiply-accumulates; FLOPs = 2·MACs)")
        if general:
            print(f"  MSA    hw·C·h(2d_k+d_v) + hw·h·d_v·d_out + (hw)²·h(d_k+d_v) = {msa['projections']:,} + "
                  f"{msa['attention']:,} = {msa['total']:,}")
            print(f"  W-MSA  hw·C·h(2d_k+d_v) + hw·h·d_v·d_out + M²hw·h(d_k+d_v) = {wmsa['projections']:,} + "
                  f"{wmsa['attention']:,} = {wmsa['total']:,}")
        else:
            print(f"  MSA    4hwC² + 2(hw)²C = {msa['projections']:,} + {msa['attention']:,} = {msa['total']:,}")
            print(f"  W-MSA  4hwC² + 2M²hwC  = {wmsa['projections']:,} + {wmsa['attention']:,} = {wmsa['total']:,}")
        print(f"  W-MSA / MSA = {wmsa['total'] / msa['total']:.4f}")
        print("measured with FlopCounterMode on our modules (one forward, batch 1):")
        rows = [("MSA", None, 0, msa["total"]), ("W-MSA", m, 0, wmsa["total"]),
                ("SW-MSA", m, m // 2, wmsa["total"])]
        for name, win, shift, macs in rows:
            flops = measure_attention_flops(h, w, c, window=win, shift=shift, **kw)
            verdict = "= 2 × formula" if flops == 2 * macs else f"≠ 2 × formula ({2 * macs:,})"
            line = f"  {name:<7}{flops:>16,} FLOPs {verdict}"
            if args.time:
                line += f"; {time_attention(h, w, c, window=win, shift=shift, **kw):.2f} ms on this CPU"
            print(line)
        print("  (MSA: vislab.models.vit.MultiHeadSelfAttention on all hw tokens; W-MSA/SW-MSA: "
              "vislab.layers.swin.WindowAttention on the M×M windows, SW-MSA shifted by M//2 with its mask)")
    return 0


def _padding(argv: list[str]) -> int:
    from vislab.arith.formulas import padding_shapes

    p = _Parser(prog="vislab arith padding",
                                description="Output size and padding of 'valid' and 'same' (TF/Keras convention).")
    p.add_argument("--size", type=int, required=True, help="input length n (one axis)")
    p.add_argument("--kernel", type=int, required=True)
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--dilation", type=int, default=1)
    args = p.parse_args(argv)
    shapes = padding_shapes(args.size, args.kernel, args.stride, args.dilation)
    print(f"n={args.size}, k={args.kernel}, s={args.stride}, d={args.dilation}")
    print(f"  valid: output floor((n - k_eff)/s) + 1 = {shapes['valid']['output']}, no padding")
    same = shapes["same"]
    print(f"  same:  output ceil(n/s) = {same['output']}, padding {same['pad_left']} left/top + "
          f"{same['pad_right']} right/bottom")
    return 0


def _probe(argv: list[str]) -> int:
    from vislab.arith.probe import probe_receptive_field
    from vislab.arith.trace import load_model, trace_module

    p = _Parser(prog="vislab arith probe",
                                description="Measure the receptive field of a layer's units by gradient probing "
                                            "and compare it with the computed one.")
    p.add_argument("--model", required=True, help="a vislab, torchvision or timm model name")
    p.add_argument("--input", required=True, help="input shape CxHxW")
    p.add_argument("--layer", required=True, help="qualified module name, e.g. layer4 or features")
    p.add_argument("--unit", action="append", default=[], metavar="I,J", help="output unit (default: centre)")
    p.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    model = load_model(args.model, _model_kwargs(args.arg), device="cpu")
    analysis = trace_module(model, args.input)
    if args.layer not in analysis.module_outputs:
        raise ValueError(f"no module named {args.layer!r} was called in {args.model}")
    geom = analysis.module_outputs[args.layer]
    if geom is None or geom.kind != "map":
        raise ValueError(f"the output of {args.layer!r} has no per-unit receptive field")
    units = []
    for u in args.unit:
        try:
            i, j = (int(v) for v in u.split(","))
        except ValueError:
            raise ValueError(f"--unit expects I,J like 3,4, got {u!r}") from None
        units.append((i, j))
    units = units or [(geom.h.n // 2, geom.w.n // 2)]
    for i, j in units:
        if not (0 <= i < geom.h.n and 0 <= j < geom.w.n):
            raise ValueError(f"--unit {i},{j} is outside the {geom.h.n}x{geom.w.n} output of {args.layer!r}")
    summary = geom.summary()
    print(f"{args.layer}: output {geom.h.n}x{geom.w.n}, RF {summary['rf']}, stride {summary['stride']}, "
          f"padding {summary['padding']}")
    for r in probe_receptive_field(model, args.input, args.layer, units):
        computed = geom.region(*r["unit"])
        same = computed == (r["rows"], r["cols"])
        print(f"unit {r['unit']}: computed rows {computed[0]} cols {computed[1]}; "
              f"measured rows {r['rows']} cols {r['cols']}{'' if r['rectangular'] else ' (not a rectangle)'} "
              f"-> {'agree' if same else 'DISAGREE'}")
    return 0


_COMMANDS = {"conv-steps": _conv_steps, "attention": _attention, "padding": _padding, "probe": _probe}


def main(argv: list[str]) -> int:
    """Entry point of ``vislab arith`` (``vislab.cli`` forwards the arguments after ``arith``).

    The arithmetic library answers bad specs, shapes and matrices with ``ValueError``; here, at the command
    line's boundary, they become :class:`UserError` (one line on stderr, exit 2). ``vislab arith`` without
    arguments prints its usage on stderr and exits 2.
    """
    argv = list(argv)
    if not argv:
        print(USAGE, file=sys.stderr)
        return 2
    try:
        if argv[0] in _COMMANDS:
            return _COMMANDS[argv[0]](argv[1:])
        return _analyze(argv)
    except UserError:
        raise
    except ValueError as exc:
        raise UserError(str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid arguments") from None
