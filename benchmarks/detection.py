"""Faster R-CNN speed: vislab's FasterRCNN vs torchvision's FasterRCNN at equal settings.

Both models are built around copies of the same backbone (same weights) with the same anchors, proposal
numbers, samplers, RoI op and head sizes (:func:`vislab.models.detection.build_torchvision_faster_rcnn`),
and get the same RPN / head weights (:func:`copy_weights_to_torchvision`). For each setting it times

- a **train step**: forward in training mode (the four losses), backward of their sum, an SGD step;
- **inference**: eval-mode forward of the batch, reported per image;

alternating the two implementations iteration by iteration (so that a change of machine load hits both) and
seeding torch's generator identically before each pair (the same random samples for both). Reported: medians.

    python benchmarks/detection.py --quick        # few iterations (minutes on 2 CPU cores)
    python benchmarks/detection.py                # more iterations
    python benchmarks/detection.py --device cuda  # on a GPU
    python benchmarks/detection.py --only lite0   # the settings whose label contains it

Settings: ``efficientnet_lite0`` (packaged ImageNet weights), batch 4 at 256 px, anchors (32, 64, 128),
representation 1024; ``vgg16`` (random weights unless torchvision's are in the hub cache), batch 1 at the
paper's 600 px (max 1000), anchors (128, 256, 512), representation 4096. Each run rewrites this device's
section of ``benchmarks/RESULTS.md`` (``--no-write`` prints only).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from _common import RESULTS, load_average, machine_info, machine_line, write_section

from vislab.errors import UserError
from vislab.models.detection import (
    FasterRCNN,
    build_backbone,
    build_torchvision_faster_rcnn,
    copy_weights_to_torchvision,
)

NUM_CLASSES = 6  # 5 object classes + background


@dataclass
class Setting:
    label: str
    backbone: str
    batch: int
    size: int  # image side (square images) = min_size
    kwargs: dict
    iters: int
    quick_iters: int


SETTINGS = [
    Setting("efficientnet_lite0, batch 4, 256 px", "efficientnet_lite0", 4, 256,
            {"min_size": 256, "max_size": 427, "anchor_sizes": (32, 64, 128), "representation_size": 1024}, 10, 4),
    Setting("vgg16, batch 1, 600 px", "vgg16", 1, 600,
            {"min_size": 600, "max_size": 1000, "anchor_sizes": (128, 256, 512), "representation_size": 4096}, 4, 2),
]


@dataclass
class Row:
    device: str
    setting: str
    iters: int
    # "{impl} train" (wall ms per step), "{impl} infer" (wall ms per image), "... cpu": process CPU time
    ms: dict = field(default_factory=dict)
    note: str = ""


def _backbone(name: str):
    try:
        return build_backbone(name), "pretrained"
    except UserError:
        return build_backbone(name, pretrained=False), "random weights"


def _batch(setting: Setting, device: str, seed: int = 0):
    """Square images with 1–5 random boxes each (labels 1..5)."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    S = setting.size
    for _ in range(setting.batch):
        images.append(torch.rand(3, S, S, generator=g).to(device))
        n = int(torch.randint(1, 6, (1,), generator=g))
        xy = torch.rand(n, 2, generator=g) * (S * 0.7)
        wh = S * (0.1 + torch.rand(n, 2, generator=g) * 0.3)
        boxes = torch.cat([xy, torch.clamp(xy + wh, max=float(S))], 1)
        targets.append({"boxes": boxes.to(device), "labels": torch.randint(1, NUM_CLASSES, (n,), generator=g)
                        .to(device)})
    return images, targets


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _train_step(model, opt, images, targets, device: str, seed: int) -> tuple[float, float]:
    """Wall and process-CPU milliseconds of one forward + backward + optimizer step."""
    torch.manual_seed(seed)
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    losses = model(images, targets)
    loss = sum(losses.values())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    _sync(device)
    return (time.perf_counter() - t0) * 1e3, (time.process_time() - c0) * 1e3


def _infer(model, images, device: str) -> tuple[float, float]:
    """Wall and process-CPU milliseconds per image of an eval-mode forward of the batch."""
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.no_grad():
        model(images)
    _sync(device)
    return (time.perf_counter() - t0) * 1e3 / len(images), (time.process_time() - c0) * 1e3 / len(images)


def _heads_step(model, images, targets, device: str, seed: int) -> tuple[float, float]:
    """Wall and CPU milliseconds of the detection part alone: RPN + RoI heads forward and backward on fixed
    backbone features (the transform and backbone run outside the timing), in training mode."""
    torch.manual_seed(seed)
    if isinstance(model, FasterRCNN):
        batch, sizes, tt = model.transform(images, targets)
    else:
        image_list, tt = model.transform(images, targets)
        batch, sizes = image_list.tensors, image_list.image_sizes
    with torch.no_grad():
        feats = model.backbone(batch)
    feats.requires_grad_()
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    if isinstance(model, FasterRCNN):
        props, rpn_losses = model.rpn(feats, sizes, tuple(batch.shape[-2:]), tt)
        _, head_losses = model.roi_heads(feats, props, sizes, 1.0 / (batch.shape[-2] // feats.shape[-2]), tt)
    else:
        fd = {"0": feats}
        props, rpn_losses = model.rpn(image_list, fd, tt)
        _, head_losses = model.roi_heads(fd, props, sizes, tt)
    sum({**rpn_losses, **head_losses}.values()).backward()
    _sync(device)
    return (time.perf_counter() - t0) * 1e3, (time.process_time() - c0) * 1e3


def run_setting(setting: Setting, device: str, quick: bool) -> Row:
    iters = setting.quick_iters if quick else setting.iters
    backbone, weights = _backbone(setting.backbone)
    torch.manual_seed(0)
    ours = FasterRCNN(backbone, NUM_CLASSES, **setting.kwargs)
    tv = build_torchvision_faster_rcnn(copy.deepcopy(backbone), NUM_CLASSES, **setting.kwargs)
    copy_weights_to_torchvision(ours, tv)
    models = {"vislab": ours.to(device), "torchvision": tv.to(device)}
    opts = {k: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
            for k, m in models.items()}
    images, targets = _batch(setting, device)
    row = Row(device=device, setting=setting.label, iters=iters, note=f"backbone {weights}")
    train = {k: [] for k in models}
    infer = {k: [] for k in models}
    for m in models.values():  # warm-up: one train step and one inference each
        m.train()
    for k, m in models.items():
        _train_step(m, opts[k], images, targets, device, seed=0)
    for i in range(iters):
        order = list(models) if i % 2 == 0 else list(models)[::-1]
        for k in order:
            train[k].append(_train_step(models[k], opts[k], images, targets, device, seed=i + 1))
    heads = {k: [] for k in models}
    for m in models.values():
        _heads_step(m, images, targets, device, seed=0)
    for i in range(max(iters, 6)):
        order = list(models) if i % 2 == 0 else list(models)[::-1]
        for k in order:
            heads[k].append(_heads_step(models[k], images, targets, device, seed=i + 1))
    for m in models.values():
        m.eval()
    for m in models.values():
        _infer(m, images, device)
    for i in range(iters):
        order = list(models) if i % 2 == 0 else list(models)[::-1]
        for k in order:
            infer[k].append(_infer(models[k], images, device))
    for k in models:
        row.ms[f"{k} train"] = statistics.median(t[0] for t in train[k])
        row.ms[f"{k} train cpu"] = statistics.median(t[1] for t in train[k])
        row.ms[f"{k} train min"], row.ms[f"{k} train max"] = min(t[0] for t in train[k]), max(t[0] for t in train[k])
        row.ms[f"{k} heads"] = statistics.median(t[0] for t in heads[k])
        row.ms[f"{k} heads cpu"] = statistics.median(t[1] for t in heads[k])
        row.ms[f"{k} infer"] = statistics.median(t[0] for t in infer[k])
        row.ms[f"{k} infer cpu"] = statistics.median(t[1] for t in infer[k])
    return row


def _fmt(v, digits=1):
    return "—" if v is None else f"{v:.{digits}f}"


def markdown(rows: list[Row], batches: dict[str, int]) -> str:
    lines = ["| device | setting | timed iters | train step ms vislab / tv (wall) | × | wall range vislab; tv "
             "| train step CPU ms vislab / tv | × | RPN + heads f+b CPU ms vislab / tv | × "
             "| train img/s vislab / tv | infer ms/img vislab / tv (wall) | infer CPU ms/img vislab / tv | note |",
             "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        m = r.ms
        v, t = m["vislab train"], m["torchvision train"]
        vc, tc = m["vislab train cpu"], m["torchvision train cpu"]
        b = batches[r.setting]
        spread = "; ".join(f"{m[f'{k} train min']:.0f}–{m[f'{k} train max']:.0f}" for k in ("vislab", "torchvision"))
        lines.append(f"| {r.device} | {r.setting} | {r.iters} | {_fmt(v)} / {_fmt(t)} | {_fmt(t / v, 2)} | {spread} | "
                     f"{_fmt(vc)} / {_fmt(tc)} | {_fmt(tc / vc, 2)} | "
                     f"{_fmt(m['vislab heads cpu'])} / {_fmt(m['torchvision heads cpu'])} | "
                     f"{_fmt(m['torchvision heads cpu'] / m['vislab heads cpu'], 2)} | "
                     f"{_fmt(1e3 * b / v, 2)} / {_fmt(1e3 * b / t, 2)} | "
                     f"{_fmt(m['vislab infer'])} / {_fmt(m['torchvision infer'])} | "
                     f"{_fmt(m['vislab infer cpu'])} / {_fmt(m['torchvision infer cpu'])} | {r.note} |")
    return "\n".join(lines)


def targets(rows: list[Row]) -> str:
    """The speed target per setting, judged on wall time and on process CPU time; "no slower" allows 3 % for the
    noise of a median over few steps."""
    lines = ["| target | wall ms vislab vs tv | | CPU ms vislab vs tv | |", "|---|---|---|---|---|"]

    def verdict(v, t):
        return "met" if v <= t * 1.03 else "**not met**"

    for r in rows:
        v, t = r.ms["vislab train"], r.ms["torchvision train"]
        vc, tc = r.ms["vislab train cpu"], r.ms["torchvision train cpu"]
        lines.append(f"| train step no slower than torchvision's ({r.setting}) | {v:.0f} vs {t:.0f} ({t / v:.2f}×) | "
                     f"{verdict(v, t)} | {vc:.0f} vs {tc:.0f} ({tc / vc:.2f}×) | {verdict(vc, tc)} |")
        hv, ht = r.ms["vislab heads"], r.ms["torchvision heads"]
        hvc, htc = r.ms["vislab heads cpu"], r.ms["torchvision heads cpu"]
        lines.append(f"| … its RPN + heads part (fixed features, f+b) | {hv:.0f} vs {ht:.0f} ({ht / hv:.2f}×) | "
                     f"{verdict(hv, ht)} | {hvc:.0f} vs {htc:.0f} ({htc / hvc:.2f}×) | {verdict(hvc, htc)} |")
    return "\n".join(lines)


HEADER = """## Faster R-CNN

`python benchmarks/detection.py` (`--quick` for fewer iterations, `--device cuda` on a GPU, `--only TEXT`).
vislab's `FasterRCNN` and torchvision's `FasterRCNN` built with the same settings around copies of the same
backbone and with the same head weights; train step = forward (four losses) + backward + SGD step; inference =
eval-mode forward of the batch, per image. Medians over the timed iterations, the two implementations
alternating, the same seed before each pair. Wall time and process CPU time (all threads) are both given; on an
overloaded machine neither is steady (waiting OpenMP threads spin and count as CPU time). "no slower" allows
3 % for the noise of a median of few steps; × = torchvision's time / vislab's (above 1: vislab faster); the wall
range (fastest–slowest timed step) shows how much of a difference the machine's load alone makes.
"RPN + heads f+b" times the part vislab writes itself (RPN, proposal layer, target assignment, sampling, RoI
pooling, head, losses; forward and backward) on fixed backbone features, which takes the shared backbone's cost
and its noise out of the comparison.
"""


def write_results(path: Path, device: str, info: dict, rows: list[Row], batches: dict[str, int],
                  quick: bool) -> None:
    """Replace this device's generated section of ``path`` (between its markers), or append one."""
    cmd = "python benchmarks/detection.py" + (" --quick" if quick else "") + (" --device cuda" if device == "cuda"
                                                                              else "")
    write_section(path, "detection", device, [f"Generated by `{cmd}` on {machine_line(info)}.", "", targets(rows), "",
                                              markdown(rows, batches)], intro=HEADER)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="fewer timed iterations")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--only", action="append", default=[], help="run the settings whose label contains it")
    parser.add_argument("--json", help="also write machine info and rows to this JSON file")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    torch.set_num_threads(args.threads)
    settings = [s for s in SETTINGS if not args.only or any(t in s.label for t in args.only)]
    if not settings:
        parser.error(f"--only {args.only}: no setting matches")
    info = machine_info(args.device)
    print("machine:", json.dumps(info), flush=True)
    batches = {s.label: s.batch for s in SETTINGS}
    rows = []
    for s in settings:
        row = run_setting(s, args.device, args.quick)
        rows.append(row)
        print(markdown([row], batches).splitlines()[-1], flush=True)
    info["load_average_end"] = load_average()
    print()
    print(machine_line(info))
    print(targets(rows))
    print()
    print(markdown(rows, batches))
    if not args.no_write:
        write_results(args.results, args.device, info, rows, batches, args.quick)
        print(f"\nwritten to {args.results}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "rows": [asdict(r) for r in rows]}, f, indent=1)


if __name__ == "__main__":
    main()
