"""CAM speed: each vislab CAM method vs pytorch-grad-cam's implementation of it, same model, layer and batch.

Each row times one call that returns the maps of a batch (eval mode; the fastest of ``--rounds`` rounds after a
warm-up; a call slower than ``--slow-after`` seconds is timed once) for both implementations, and records the
largest absolute difference of their maps (the tests hold it under 1e-5). Score-CAM and Ablation-CAM run their
masked forwards with the same batch size in both (``--masked-batch``); pytorch-grad-cam's progress bars are
silenced.

    python benchmarks/explain.py --quick        # small CNN only; printed, not written
    python benchmarks/explain.py                # written into benchmarks/RESULTS.md (its own section)
    python benchmarks/explain.py --no-write     # printed only (use it on a machine shared with other jobs)
    python benchmarks/explain.py --clock cpu    # thread CPU time, 1 thread: for a machine shared with other jobs
    python benchmarks/explain.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import _common
import numpy as np
import pytorch_grad_cam as pgc
import torch
import torchvision
import tqdm
from _common import RESULTS, load_average, machine_info, write_section
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from vislab.explain.cams import CAM_METHODS
from vislab.models import create_model

REFERENCE = {"gradcam": pgc.GradCAM, "gradcam++": pgc.GradCAMPlusPlus, "hirescam": pgc.HiResCAM,
             "xgradcam": pgc.XGradCAM, "layercam": pgc.LayerCAM, "eigencam": pgc.EigenCAM, "scorecam": pgc.ScoreCAM,
             "ablationcam": pgc.AblationCAM}
MASKED = ("scorecam", "ablationcam")


@dataclass
class Row:
    device: str
    config: str
    method: str
    ms: dict = field(default_factory=dict)  # "pytorch-grad-cam" / "vislab" -> ms per call
    max_abs_diff: float | None = None


def configs(quick: bool) -> dict[str, dict]:
    out = {"small_cnn 64 px, batch 8, features.8": {"model": "small_cnn", "size": 64, "batch": 8,
                                                     "layer": "features.8"}}
    if not quick:
        out["resnet18 112 px, batch 2, layer4"] = {"model": "resnet18", "size": 112, "batch": 2, "layer": "layer4"}
        out["resnet18 112 px, batch 2, layer3"] = {"model": "resnet18", "size": 112, "batch": 2, "layer": "layer3"}
    return out


def build(cfg: dict, device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if cfg["model"] == "small_cnn":
        return create_model("small_cnn", num_classes=10).eval().to(device)
    return torchvision.models.resnet18(num_classes=10).eval().to(device)


def time_ms(fn, args) -> float:
    """Milliseconds per call: the fastest of ``args.rounds`` rounds (one call each) after a warm-up call; a call
    slower than ``args.slow_after`` s is timed once. ``--clock cpu``: this thread's CPU time (one torch thread)."""
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    fn()
    sync()
    best = float("inf")
    for i in range(args.rounds):
        t0 = clock()
        fn()
        sync()
        best = min(best, clock() - t0)
        if i == 0 and best > args.slow_after:
            break
    return best * 1e3


def rows_for(name: str, cfg: dict, methods: list[str], args) -> list[Row]:
    model = build(cfg, args.device)
    layer = dict(model.named_modules())[cfg["layer"]]
    x = torch.randn(cfg["batch"], 3, cfg["size"], cfg["size"], device=args.device,
                    generator=torch.Generator(device=args.device).manual_seed(1))
    with torch.no_grad():
        targets = model(x).argmax(1).tolist()
    ref_targets = [ClassifierOutputTarget(t) for t in targets]
    rows = []
    for method in methods:
        kw = {"batch_size": args.masked_batch} if method in MASKED else {}
        ours = CAM_METHODS[method](model, cfg["layer"], **kw)
        ref_kw = {"batch_size": args.masked_batch} if method == "ablationcam" else {}
        ref = REFERENCE[method](model=model, target_layers=[layer], **ref_kw)
        if method == "scorecam":
            ref.batch_size = args.masked_batch
        row = Row(args.device, name, method)
        a = ours(x, targets)[0].cpu().numpy()
        b = ref(input_tensor=x, targets=ref_targets)
        row.max_abs_diff = float(np.abs(a - b).max())
        row.ms["pytorch-grad-cam"] = time_ms(lambda r=ref: r(input_tensor=x, targets=ref_targets), args)
        row.ms["vislab"] = time_ms(lambda o=ours: o(x, targets), args)
        rows.append(row)
        print(f"{name:<38} {method:<12} pytorch-grad-cam {row.ms['pytorch-grad-cam']:9.1f} ms  vislab "
              f"{row.ms['vislab']:9.1f} ms  speed-up {row.ms['pytorch-grad-cam'] / row.ms['vislab']:5.2f}x  "
              f"max diff {row.max_abs_diff:.1e}", flush=True)
    return rows


NOISE = 0.03  # "no slower" allows this, as the other benchmarks: repeated idle runs differ by up to ~3 %


def markdown(rows: list[Row]) -> str:
    lines = ["| device | configuration | method | pytorch-grad-cam ms | vislab ms | speed-up | max abs diff |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        ref, ours = r.ms["pytorch-grad-cam"], r.ms["vislab"]
        lines.append(f"| {r.device} | {r.config} | {r.method} | {ref:.1f} | {ours:.1f} | {ref / ours:.2f}× | "
                     f"{r.max_abs_diff:.1e} |")
    return "\n".join(lines)


def targets_table(rows: list[Row]) -> str:
    by_method: dict[str, list[tuple[float, str]]] = {}
    for r in rows:
        by_method.setdefault(r.method, []).append((r.ms["pytorch-grad-cam"] / r.ms["vislab"], r.config))
    lines = ["| method | smallest speed-up | no slower than pytorch-grad-cam |", "|---|---|---|"]
    for method, vals in by_method.items():
        worst = min(vals)
        verdict = ("met" if worst[0] >= 1 else f"met within the {NOISE:.0%} noise" if worst[0] >= 1 - NOISE
                   else "**not met**")
        lines.append(f"| {method} | {worst[0]:.2f}× ({worst[1]}) | {verdict} |")
    return "\n".join(lines)


SECTION_INTRO = """## CAM methods

`python benchmarks/explain.py` (`--quick`: the small CNN only; `--device cuda` on a GPU). One call that returns the
maps of a batch, for each CAM method of `vislab.explain.cams` and pytorch-grad-cam's class of the same method,
on the same model (random weights), layer, batch and targets; the maps agree to the "max abs diff" column. Score-CAM
and Ablation-CAM run their masked forwards with the same batch size in both (pytorch-grad-cam loops image by image;
vislab batches image × channel pairs). Each time is the fastest of a few rounds after a warm-up."""


def write_results(path: Path, device: str, info: dict, rows: list[Row], command: str) -> None:
    line = _common.machine_line(info, threads_note=f"{info['clock']} clock")
    write_section(path, "explain", device, [f"Generated by `{command}` on {line}.", "", targets_table(rows), "",
                                            markdown(rows)], intro=SECTION_INTRO)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="the small CNN only")
    parser.add_argument("--methods", default=",".join(REFERENCE), help="comma-separated (default: all eight)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 2; 1 with --clock cpu)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds; the fastest counts")
    parser.add_argument("--slow-after", type=float, default=20.0, help="seconds: a slower call is timed once")
    parser.add_argument("--masked-batch", type=int, default=64, help="Score-/Ablation-CAM forward batch (both)")
    parser.add_argument("--no-write", action="store_true", help="print only; do not touch RESULTS.md")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows and machine info here")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in REFERENCE]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {', '.join(REFERENCE)}")
    torch.set_num_threads(args.threads or (1 if args.clock == "cpu" else 2))
    if args.clock == "cpu":  # NumPy's BLAS (Eigen-CAM's SVD in both) would otherwise run in threads not counted
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    tqdm.tqdm = lambda it, *a, **k: it  # pytorch-grad-cam's per-batch progress bars
    info = machine_info(args.device, grad_cam=getattr(pgc, "__version__", "1.5"), clock=args.clock)
    rows = []
    for name, cfg in configs(args.quick).items():
        rows += rows_for(name, cfg, methods, args)
    info["load_average_end"] = load_average()
    print()
    print(targets_table(rows))
    print()
    print(markdown(rows))
    print(f"\nmachine: {_common.machine_line(info, threads_note=f'{args.clock} clock')}")
    if args.json is not None:
        args.json.write_text(json.dumps({"info": info, "rows": [asdict(r) for r in rows]}, indent=1))
    if not args.quick and not args.no_write:
        command = "python benchmarks/explain.py" + (f" --device {args.device}" if args.device != "cpu" else "")
        write_results(RESULTS, args.device, info, rows, command)
        print(f"written: {RESULTS}")


if __name__ == "__main__":
    main()
