"""SAM fine-tuning: epoch time with and without the embedding cache, for the offline encoder and for SAM's ViT-B.

The image encoder is frozen, so ``sam-finetune`` encodes each augmented view once and its epochs only run the
decoder on cached features. How much that saves depends on what an encoding costs next to a decoder step:

- ``offline lite0``: the default offline encoder (ImageNet EfficientNet-Lite0 at stride 16 + the fine stride-4
  features), at the demo's sizes (96-px images, 192-px encoder input);
- ``official vit_b``: SAM's own ViT-B image encoder at its 1024-px input, built by
  ``segment_anything.sam_model_registry["vit_b"]()`` and saved in the official checkpoint format. Its weights are
  **random** (nothing can be downloaded here): a timing needs the architecture, not the trained values, so this
  row says nothing about accuracy. With a real ``sam_vit_b_01ec64.pth`` the times are the same.

Each row is a real ``vislab run sam-finetune`` (the experiment's own ``time_epochs``: one epoch of AdamW steps
on cached features against one that re-augments and re-encodes every training image, both over the same prompts,
plus validation) on a few generated scenes, in a temporary folder. The cached/uncached ratio is the speed-up of
every epoch after the first.

    python benchmarks/sam_cache.py            # both rows (the ViT-B one takes minutes on 2 CPU cores)
    python benchmarks/sam_cache.py --only lite0
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from _common import RESULTS, load_average, machine_info, machine_line, write_section
from vislab.experiments.runner import RunOptions, run_experiment

SETTINGS = {
    "offline lite0": {"image_size": 96, "encoder_size": 192, "fine_features": True},
    "official vit_b": {"image_size": 128, "model_type": "vit_b"},
}
ENCODERS = {"offline lite0": "EfficientNet-Lite0 at 192 px + stride-4 features (96-px images)",
            "official vit_b": "SAM ViT-B at 1024 px, random weights (128-px images)"}
COMMON = {"epochs": 1, "aug_copies": 2, "figure_prompts": 2, "grabcut_iters": 1, "time_uncached": True,
          "time_fraction": 1.0, "objects": (2, 4)}

INTRO = """## SAM fine-tuning: the embedding cache

`python benchmarks/sam_cache.py`. One epoch of `sam-finetune` with the embedding cache (the decoder on cached
features) against one that re-augments and re-encodes every training image, over the same prompts (validation
included), measured by the experiment itself (`time_epochs`) on a few generated scenes. "official vit_b" is SAM's
ViT-B encoder at its 1024-px input in the official checkpoint format with random weights (the time of an
encoder does not depend on its weights; no weights can be downloaded here). Target (issue 12): epochs after the
first at least 10× faster than re-encoding."""


def run_row(label: str, scenes: int, work: Path) -> dict:
    overrides = {**COMMON, **SETTINGS[label], "scenes": scenes}
    if label.startswith("official"):
        from segment_anything import sam_model_registry

        torch.manual_seed(0)
        ckpt = work / "sam_vit_b_random.pth"
        torch.save(sam_model_registry["vit_b"]().state_dict(), ckpt)
        overrides["sam_checkpoint"] = str(ckpt)
    summary = run_experiment(RunOptions(name="sam-finetune", out=str(work / label.replace(" ", "_")),
                                        overrides=overrides))
    c = summary["cache"]
    return {"setting": label, "encoder": ENCODERS[label], "scenes": scenes,
            "train_views": c["train_views"], "cached_epoch_s": c["cached_epoch_s"],
            "uncached_epoch_s": c["uncached_epoch_s"], "uncached_encode_s": c["uncached_encode_s"],
            "speedup": c["speedup"], "cache_build_s": c["cache_build_s"]}


def tables(rows: list[dict]) -> list[str]:
    out = ["| target | measured | |", "|---|---|---|"]
    for r in rows:
        out.append(f"| cached epochs ≥ 10× faster than re-encoding ({r['setting']}) | {r['speedup']:.2f}× | "
                   f"{'met' if r['speedup'] >= 10 else '**not met**'} |")
    out += ["", "| setting | encoder | scenes | train views | cache build s | cached epoch s | uncached epoch s "
            "| of which encoding s | speed-up |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['setting']} | {r['encoder']} | {r['scenes']} | {r['train_views']} | "
                   f"{r['cache_build_s']:.1f} | {r['cached_epoch_s']:.2f} | {r['uncached_epoch_s']:.2f} | "
                   f"{r['uncached_encode_s']:.2f} | {r['speedup']:.2f}× |")
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenes", type=int, default=24, help="generated scenes per row (default 24)")
    parser.add_argument("--only", action="append", default=[], help="the settings whose label contains it")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--json", help="also write machine info and rows to this JSON file")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    if args.scenes < 10:
        parser.error(f"--scenes must be >= 10 (train, val and test need images), got {args.scenes}")
    labels = [k for k in SETTINGS if not args.only or any(t in k for t in args.only)]
    if not labels:
        parser.error(f"--only {args.only}: no setting matches")
    torch.set_num_threads(args.threads)
    info = machine_info("cpu")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label in labels:
            rows.append(run_row(label, args.scenes, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    info["load_average_end"] = load_average()
    cmd = "python benchmarks/sam_cache.py" + (f" --scenes {args.scenes}" if args.scenes != 24 else "")
    body = [f"Generated by `{cmd}` on {machine_line(info)}.", "", *tables(rows)]
    print("\n".join(body))
    if not args.no_write:
        write_section(args.results, "sam_cache", "cpu", body, intro=INTRO)
        print(f"\nwritten to {args.results}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
