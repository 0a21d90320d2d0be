"""Deformable convolution speed and memory: vislab vs torchvision vs nn.Conv2d.

For each shape of a ResNet-like grid it times forward and forward+backward (torch.utils.benchmark)
of ``vislab.ops.deform_conv2d``, ``torchvision.ops.deform_conv2d`` and ``F.conv2d`` (the same
weights, zero padding 1, 3×3), measures the peak extra memory of one forward+backward and checks
that vislab's output and all five gradients agree with torchvision's. Rows are tagged by device.

    python benchmarks/deform_conv.py --quick                 # a few shapes, CPU, 2 threads
    python benchmarks/deform_conv.py                         # the full grid (several minutes),
                                                             # written into benchmarks/RESULTS.md
    python benchmarks/deform_conv.py --device cuda           # the same on a GPU
    python benchmarks/deform_conv.py --json out.json         # also keep the raw numbers
    python benchmarks/deform_conv.py --only "N=8 C=64 56×56 mask"   # the shapes whose label contains it
    python benchmarks/deform_conv.py --quick --busy          # also time each shape with a competing
                                                             # busy process (one spinning thread)

Two floor columns say how far the op is from its limit at the same shape: "GEMM" is the three
matrix products of a convolution's forward+backward alone (output, weight gradient, column
gradient: the work ``nn.Conv2d`` also does), "sampling" is vislab's C++ sampling passes alone
(padded input, im2col twice, the fused backward pass), without the matrix products.

Peak memory on CPU is read from the profiler's allocation events (tensors allocated by PyTorch;
library-internal buffers such as MKL's are not seen), on CUDA from ``max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from _common import RESULTS, load_average, machine_info, machine_line, write_section
from torch.utils import benchmark

from vislab.ops import deform_conv2d


@dataclass
class Shape:
    batch: int
    channels: int  # output channels (and input channels unless in_channels is given)
    size: int
    mask: bool = True
    groups: int = 1
    offset_groups: int = 1
    in_channels: int | None = None

    @property
    def c_in(self) -> int:
        return self.channels if self.in_channels is None else self.in_channels

    def label(self) -> str:
        c = self.channels if self.in_channels is None else f"{self.in_channels}→{self.channels}"
        s = f"N={self.batch} C={c} {self.size}×{self.size}"
        if self.groups > 1 or self.offset_groups > 1:
            s += f" g={self.groups} G={self.offset_groups}"
        return s + (" mask" if self.mask else " no-mask")


@dataclass
class Row:
    device: str
    shape: str
    ms: dict = field(default_factory=dict)  # "{impl} {fwd|fwd+bwd}" -> median ms (None: skipped)
    busy_ms: dict = field(default_factory=dict)  # the same with a competing busy process (--busy)
    floor_ms: dict = field(default_factory=dict)  # "gemm", "sampling" -> f+b ms (the floors)
    peak_mb: dict = field(default_factory=dict)  # impl -> peak extra MB of one forward+backward
    max_rel_err: float | None = None  # vislab vs torchvision, over the output and the five gradients
    note: str = ""


RESNET_STAGES = [(64, 56), (128, 28), (256, 14), (512, 7)]
TARGET_SHAPE = "N=8 C=64 56×56 mask"  # the shape the targets are stated at
FIRST_LAYER = Shape(64, 16, 64, True, in_channels=1)  # deform-vs-conv's grayscale first layer (default run)


def grid(quick: bool) -> list[Shape]:
    if quick:
        return [Shape(8, 64, 56, True), Shape(8, 64, 56, False), Shape(8, 256, 14, True),
                Shape(8, 64, 56, True, groups=1, offset_groups=4), FIRST_LAYER]
    shapes = [Shape(n, c, s, m) for n in (1, 8, 32) for c, s in RESNET_STAGES for m in (True, False)]
    shapes += [Shape(8, c, s, True, groups=g, offset_groups=G) for c, s in RESNET_STAGES
               for g, G in ((1, 4), (4, 4))]
    return shapes + [FIRST_LAYER]


def make_inputs(shape: Shape, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    N, C, C_in, S = shape.batch, shape.channels, shape.c_in, shape.size
    G, K = shape.offset_groups, 9
    x = torch.randn(N, C_in, S, S, generator=g)
    weight = torch.randn(C, C_in // shape.groups, 3, 3, generator=g) / (3 * (C_in // shape.groups) ** 0.5)
    bias = torch.randn(C, generator=g)
    offset = torch.randn(N, 2 * G * K, S, S, generator=g) * 2
    mask = torch.rand(N, G * K, S, S, generator=g) if shape.mask else None
    tensors = [x, offset, weight, bias, mask]
    return [None if t is None else t.to(device).requires_grad_() for t in tensors]


def implementations(shape: Shape):
    def conv(x, offset, weight, bias, mask):
        return F.conv2d(x, weight, bias, padding=1, groups=shape.groups)

    def tv(x, offset, weight, bias, mask):
        return torchvision.ops.deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)

    def ours(x, offset, weight, bias, mask):
        return deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)

    return {"conv": conv, "torchvision": tv, "vislab": ours}


def forward_backward(fn, tensors, grad_out=None):
    for t in tensors:
        if t is not None:
            t.grad = None
    out = fn(*tensors)
    out.backward(torch.ones_like(out) if grad_out is None else grad_out)
    return out


def time_ms(stmt_fn, min_run_time: float, device: str, slow_after_s: float) -> tuple[float, int]:
    """Median milliseconds of ``stmt_fn()`` and the number of timed runs, after one warm-up run.
    When a first timed run takes longer than ``slow_after_s`` it is the measurement (one run)."""
    stmt_fn()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    # num_threads: Timer runs the statement with 1 thread unless told otherwise
    timer = benchmark.Timer(stmt="fn()", globals={"fn": stmt_fn}, num_threads=torch.get_num_threads())
    probe = timer.timeit(1)
    if probe.median > slow_after_s:
        return probe.median * 1e3, 1
    m = timer.blocked_autorange(min_run_time=min_run_time)
    return m.median * 1e3, len(m.times) * m.number_per_run


def peak_extra_mb(fn, tensors, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        forward_backward(fn, tensors)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    from torch.profiler import ProfilerActivity, profile

    for t in tensors:
        if t is not None:
            t.grad = None
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        forward_backward(fn, tensors)
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = [e["args"] for e in json.load(f)["traceEvents"] if e.get("name") == "[memory]"
                      and e["args"].get("Device Type", 0) == 0]
    finally:
        os.remove(path)
    if not events:
        return 0.0
    base = events[0]["Total Allocated"] - events[0]["Bytes"]
    return (max(e["Total Allocated"] for e in events) - base) / 2**20


def max_relative_error(fn_a, fn_b, tensors) -> float:
    results = []
    for fn in (fn_a, fn_b):
        out = forward_backward(fn, tensors)
        results.append([out.detach()] + [None if t is None else t.grad.detach().clone() for t in tensors])
    worst = 0.0
    for a, b in zip(*results):
        if a is not None and b is not None and b.numel():
            worst = max(worst, ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item())
    return worst


def floor_functions(shape: Shape, device: str) -> dict:
    """The two floors at ``shape`` (forward+backward): the convolution's three matrix products alone
    and vislab's C++ sampling passes alone (None where the C++ kernel is not in use)."""
    from vislab.ops import _deform_cpp
    from vislab.ops import deform_conv as dc

    x, offset, weight, bias, mask = (None if t is None else t.detach() for t in make_inputs(shape, device))
    N, C, C_in, L, g = shape.batch, shape.channels, shape.c_in, shape.size**2, shape.groups
    R = C_in // g * 9
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(g, C // g, R, generator=gen).to(device)
    cols = torch.randn(g, R, N * L, generator=gen).to(device)
    go = torch.randn(g, C // g, N * L, generator=gen).to(device)

    def gemm():  # out = W @ cols, grad_W = go @ colsᵀ, grad_cols = Wᵀ @ go
        torch.bmm(w, cols)
        torch.bmm(go, cols.transpose(1, 2))
        torch.bmm(w.transpose(1, 2), go)

    floors = {"gemm": gemm, "sampling": None}
    if device != "cpu" or _deform_cpp.library() is None:
        return floors
    geom = dc._check(x, offset, weight, bias, 1, 1, 1, mask)
    grad_offset, grad_mask = torch.empty_like(offset), None if mask is None else torch.empty_like(mask)
    grad_input = torch.empty_like(x)

    def sampling():  # forward: padded input + im2col; backward: the same + the fused pass + un-padding
        k = dc._Kernels(x, offset, mask, geom)
        X_buffer, cols_buffer = dc._buffers(geom, k.dtype, x.device, k.chunks[0][1])
        gX = X_buffer.new_empty((len(_deform_cpp.row_ranges(k.chunks[0][1] * geom.out_h)), *X_buffer.shape))
        for backward in (False, True):
            for s, e in k.chunks:
                k.start_chunk(s, e, X_buffer)
                c = k.sample(cols_buffer[:(e - s) * L * geom.sub_groups * 9])
                if backward:
                    k.sample_backward(c, gX[:len(k.ranges), :e - s], grad_offset[s:e],
                                      None if grad_mask is None else grad_mask[s:e])
                    k.unpad_sum(gX[:len(k.ranges), :e - s], grad_input[s:e])

    floors["sampling"] = sampling
    return floors


class BusyCompetitor:
    """A separate process spinning one thread at full speed while the block runs."""

    def __enter__(self):
        import subprocess
        import sys
        import time

        # spins; every few million iterations it checks that the benchmark still runs (no orphan)
        spin = ("import os\nparent = os.getppid()\nwhile os.getppid() == parent:\n"
                "    for _ in range(5_000_000):\n        pass\n")
        self.process = subprocess.Popen([sys.executable, "-c", spin])
        time.sleep(0.5)
        return self

    def __exit__(self, *exc):
        self.process.kill()
        self.process.wait()


def run_shape(shape: Shape, device: str, args) -> Row:
    row = Row(device=device, shape=shape.label())
    tensors = make_inputs(shape, device)
    impls = implementations(shape)
    skip_tv = device == "cpu" and args.tv_max_seconds is not None and _tv_estimate_s(shape) > args.tv_max_seconds
    for name, fn in impls.items():
        if name == "torchvision" and skip_tv:
            row.ms[f"{name} fwd"] = row.ms[f"{name} fwd+bwd"] = None
            row.note = f"torchvision skipped: estimated {_tv_estimate_s(shape):.0f} s per forward+backward"
            continue
        with torch.no_grad():
            row.ms[f"{name} fwd"], _ = time_ms(lambda fn=fn: fn(*tensors), args.min_run_time, device,
                                               args.slow_after)
        row.ms[f"{name} fwd+bwd"], runs = time_ms(lambda fn=fn: forward_backward(fn, tensors), args.min_run_time,
                                                  device, args.slow_after)
        if runs == 1:
            row.note = (row.note + "; " if row.note else "") + f"{name}: single timed run"
        row.peak_mb[name] = peak_extra_mb(fn, tensors, device)
    if not skip_tv:
        row.max_rel_err = max_relative_error(impls["vislab"], impls["torchvision"], tensors)
    with torch.no_grad():
        for name, fn in floor_functions(shape, device).items():
            row.floor_ms[name] = None if fn is None else time_ms(fn, args.min_run_time, device, args.slow_after)[0]
    if args.busy:  # the same forward+backward timings with one competing busy thread
        with BusyCompetitor():
            for name, fn in impls.items():
                if name == "torchvision" and skip_tv:
                    continue
                row.busy_ms[name] = time_ms(lambda fn=fn: forward_backward(fn, tensors), args.min_run_time, device,
                                            args.slow_after)[0]
            with torch.no_grad():
                for name, fn in floor_functions(shape, device).items():
                    if fn is not None:
                        row.busy_ms[name] = time_ms(fn, args.min_run_time, device, args.slow_after)[0]
    return row


def _tv_estimate_s(shape: Shape) -> float:
    # torchvision's CPU kernels: ~2.5 s for forward+backward at N=8, C=64, 56×56 (2 threads), ~linear
    return 2.5 * shape.batch * shape.channels * shape.size**2 / (8 * 64 * 56 * 56)


def _fmt(v, digits=1):
    return "—" if v is None else f"{v:.{digits}f}"


def markdown(rows: list[Row]) -> str:
    busy = any(r.busy_ms for r in rows)
    lines = ["| device | shape | conv f+b ms | torchvision f+b ms | vislab f+b ms | speed-up vs tv | "
             "× conv | GEMM floor ms | sampling ms | vislab fwd ms | tv fwd ms | peak MB conv / tv / vislab | "
             "max rel err |" + (" busy slowdown conv / tv / vislab / GEMM / sampling |" if busy else "") + " note |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|" + ("---|" if busy else "") + "---|"]
    for r in rows:
        c, t, v = r.ms.get("conv fwd+bwd"), r.ms.get("torchvision fwd+bwd"), r.ms.get("vislab fwd+bwd")
        speedup = None if t is None or not v else t / v
        vs_conv = None if not c or v is None else v / c
        peak = " / ".join(_fmt(r.peak_mb.get(k)) for k in ("conv", "torchvision", "vislab"))
        err = "—" if r.max_rel_err is None else f"{r.max_rel_err:.1e}"
        slow = ""
        if busy:
            idle = {**{k: r.ms.get(f"{k} fwd+bwd") for k in ("conv", "torchvision", "vislab")}, **r.floor_ms}
            slow = " " + " / ".join(
                "—" if r.busy_ms.get(k) is None or not idle.get(k) else f"{r.busy_ms[k] / idle[k]:.2f}×"
                for k in ("conv", "torchvision", "vislab", "gemm", "sampling")) + " |"
        lines.append(f"| {r.device} | {r.shape} | {_fmt(c)} | {_fmt(t)} | {_fmt(v)} | {_fmt(speedup)}× | "
                     f"{_fmt(vs_conv, 2)} | {_fmt(r.floor_ms.get('gemm'))} | {_fmt(r.floor_ms.get('sampling'))} | "
                     f"{_fmt(r.ms.get('vislab fwd'))} | {_fmt(r.ms.get('torchvision fwd'))} | "
                     f"{peak} | {err} |{slow} {r.note} |")
    return "\n".join(lines)


def targets(rows: list[Row]) -> str:
    """The issue's CPU targets, evaluated on these rows (a Markdown table)."""
    by_shape = {r.shape: r for r in rows}
    target = by_shape.get(TARGET_SHAPE)
    if target is None:
        return ""

    def speedup(r):
        t, v = r.ms.get("torchvision fwd+bwd"), r.ms.get("vislab fwd+bwd")
        return None if t is None or not v else t / v

    def mem_ratio(r):
        t, v = r.peak_mb.get("torchvision"), r.peak_mb.get("vislab")
        return None if not t or v is None else v / t

    lines = ["| target (CPU fp32) | measured | |", "|---|---|---|"]

    def add(name, value, ok, text):
        verdict = "—" if value is None else ("met" if ok(value) else "**not met**")
        lines.append(f"| {name} | {text} | {verdict} |")

    s_t = speedup(target)
    add(f"≥ 8× faster than torchvision at {TARGET_SHAPE} (f+b)", s_t, lambda v: v >= 8, f"{_fmt(s_t)}×")
    measured = [(speedup(r), r.shape) for r in rows if speedup(r) is not None]
    worst = min(measured) if measured else (None, "")
    add("never slower than torchvision (f+b), any shape", worst[0], lambda v: v >= 1,
        f"smallest speed-up {_fmt(worst[0])}× ({worst[1]})")
    m_t = mem_ratio(target)
    mems = [(mem_ratio(r), r.shape) for r in rows if mem_ratio(r) is not None]
    worst_mem = max(mems) if mems else (None, "")
    add(f"peak memory ≤ 2× torchvision's at {TARGET_SHAPE}", m_t, lambda v: v <= 2,
        f"{_fmt(target.peak_mb.get('vislab'))} MB vs {_fmt(target.peak_mb.get('torchvision'))} MB "
        f"({_fmt(m_t, 2)}×); largest ratio over the grid {_fmt(worst_mem[0], 2)}× ({worst_mem[1]})")
    c, v = target.ms.get("conv fwd+bwd"), target.ms.get("vislab fwd+bwd")
    ratio = None if not c or v is None else v / c
    add(f"within 2× of nn.Conv2d at {TARGET_SHAPE} (f+b)", ratio, lambda v: v <= 2,
        f"{_fmt(ratio, 2)}× ({_fmt(v)} vs {_fmt(c)} ms)")

    def vs_conv(r):
        c, v = r.ms.get("conv fwd+bwd"), r.ms.get("vislab fwd+bwd")
        return None if not c or v is None else v / c

    plain = [(vs_conv(r), r.shape) for r in rows if vs_conv(r) is not None and " g=" not in r.shape
             and r.shape != FIRST_LAYER.label()]
    worst_conv = max(plain) if plain else (None, "")
    add("≤ 3× nn.Conv2d at every groups=1 shape of the grid (f+b)", worst_conv[0], lambda v: v <= 3,
        f"largest {_fmt(worst_conv[0], 2)}× ({worst_conv[1]})")
    first = by_shape.get(FIRST_LAYER.label())
    if first is not None:
        add(f"≤ 3× nn.Conv2d for the 1-channel first layer ({first.shape})", vs_conv(first), lambda v: v <= 3,
            f"{_fmt(vs_conv(first), 2)}×")
    if target.busy_ms.get("vislab") and v:
        slow = target.busy_ms["vislab"] / v
        add(f"≤ 2.2× slower with one competing busy thread at {TARGET_SHAPE}", slow, lambda s: s <= 2.2,
            f"{_fmt(slow, 2)}× ({_fmt(target.busy_ms['vislab'])} vs {_fmt(v)} ms)")
    return "\n".join(lines)


def write_results(path: Path, device: str, info: dict, rows: list[Row]) -> None:
    """Replace this device's generated section of ``path`` (between its markers), or append one."""
    body = [f"Generated by `python benchmarks/deform_conv.py{' --device cuda' if device == 'cuda' else ''}`"
            f" on {machine_line(info)}.", ""]
    table = targets(rows)
    if table:
        body += [table, ""]
    write_section(path, "deform_conv", device, body + [markdown(rows)])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="a few shapes only")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--min-run-time", type=float, default=0.5, help="seconds of timing per measurement")
    parser.add_argument("--slow-after", type=float, default=1.0,
                        help="calls slower than this many seconds are timed once")
    parser.add_argument("--tv-max-seconds", type=float, default=60.0,
                        help="skip torchvision (CPU) where one forward+backward would take longer")
    parser.add_argument("--only", action="append", default=[],
                        help="run only the shapes whose label contains this text (repeatable), e.g. 'N=8 C=64 '")
    parser.add_argument("--busy", action="store_true",
                        help="also time every shape with a competing busy process (one spinning thread)")
    parser.add_argument("--json", help="write machine info and rows to this JSON file")
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="the Markdown file whose section for this device a full-grid run rewrites")
    parser.add_argument("--no-write", action="store_true",
                        help="print only (runs with --quick or --only never write)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    torch.set_num_threads(args.threads)
    info = machine_info(args.device)
    print("machine:", json.dumps(info), flush=True)
    rows = []
    shapes = [s for s in grid(args.quick) if not args.only or any(text in s.label() for text in args.only)]
    if not shapes:
        parser.error(f"--only {args.only}: no shape of the grid matches")
    for shape in shapes:
        row = run_shape(shape, args.device, args)
        rows.append(row)
        print(markdown([row]).splitlines()[-1], flush=True)
    info["load_average_end"] = load_average()
    print()
    print(machine_line(info))
    print(markdown(rows))
    table = targets(rows)
    if table:
        print()
        print(table)
    if not (args.quick or args.only or args.no_write):
        write_results(args.results, args.device, info, rows)
        print(f"\nwritten to {args.results}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "rows": [asdict(r) for r in rows]}, f, indent=1)


if __name__ == "__main__":
    main()
