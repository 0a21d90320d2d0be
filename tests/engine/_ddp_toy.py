"""A toy detection-shaped task and a toy tensor task trained with ``fit_stage``, in one process or under
DDP: ``python _ddp_toy.py OUT DEVICES``. Run by tests/engine/test_structured_outputs.py (Lightning's DDP
launcher re-executes this script in the child processes, which pytest itself could not survive)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from vislab.engine.config import CommonConfig
from vislab.engine.context import RunContext
from vislab.engine.fit import fit_stage, seed_everything
from vislab.engine.module import StructuredTaskModule, TaskModule, evaluate
from vislab.engine.run_dir import RunDir, is_rank_zero

N_TRAIN, N_VAL = 8, 7  # an odd validation split: DistributedSampler pads it with a duplicate on 2 ranks


class Boxes(Dataset):
    """Item ``i``: a 16-vector image and a target with one box and its id."""

    def __init__(self, n: int, offset: int) -> None:
        g = torch.Generator().manual_seed(offset)
        self.x = torch.randn(n, 16, generator=g)
        lo = torch.rand(n, 2, generator=g) * 8
        self.boxes = torch.cat([lo, lo + 2 + torch.rand(n, 2, generator=g) * 6], 1)  # (n, 4) xyxy
        self.offset = offset

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], {"boxes": self.boxes[i:i + 1], "labels": torch.ones(1, dtype=torch.int64),
                           "id": self.offset + i}


def collate(items):
    return torch.stack([x for x, _ in items]), [t for _, t in items]


class ToyDetection(StructuredTaskModule):
    def compute_loss(self, batch):
        x, targets = batch
        pred = self.model(x)  # (B, 4)
        gt = torch.cat([t["boxes"] for t in targets])
        losses = {"loss_box": nn.functional.l1_loss(pred, gt), "loss_aux": pred.pow(2).mean() * 0}
        losses["loss"] = losses["loss_box"] + losses["loss_aux"]
        outputs = [{"boxes": p[None], "scores": torch.ones(1)} for p in pred]
        return losses, outputs, list(targets)

    def metrics(self, outputs, targets):
        from torchvision.ops import box_iou

        ious = [float(box_iou(o["boxes"], t["boxes"])[0, 0]) for o, t in zip(outputs, targets)]
        return {"miou": sum(ious) / len(ious), "n": float(len(targets)),
                "id_sum": float(sum(t["id"] for t in targets))}


class ToyTensor(TaskModule):
    def compute_loss(self, batch):
        x, targets = batch
        pred = self.model(x)
        gt = torch.cat([t["boxes"] for t in targets])
        return nn.functional.l1_loss(pred, gt), pred, gt

    def metrics(self, outputs, targets):
        return {"n": float(len(outputs)), "err": float((outputs - targets).abs().sum())}


def main(out: str, devices: str) -> None:
    cfg = CommonConfig(epochs=2, batch_size=2, patience=5)
    run = RunDir(Path(out))
    if is_rank_zero():
        run.path.mkdir(parents=True, exist_ok=True)
    ctx = RunContext(cfg=cfg, run=run, devices=int(devices), accelerator="cpu")
    results = {}
    for name, cls in (("structured", ToyDetection), ("tensor", ToyTensor)):
        seed_everything(0)
        model = nn.Linear(16, 4)
        module = cls(model, lr=1e-12, monitor="val/loss")  # weights stay put: every rank count sees one model
        train = DataLoader(Boxes(N_TRAIN, 0), batch_size=2, shuffle=True, collate_fn=collate)
        val = DataLoader(Boxes(N_VAL, 1000), batch_size=2, collate_fn=collate)
        fit_stage(ctx, module, train, val, variant=name, epochs=2)
        results[name] = {"evaluate": evaluate(module, val).metrics}
    if is_rank_zero():
        rows = run.read_metrics()
        for name in results:
            results[name]["val"] = {k[4:]: v for k, v in
                                    [r for r in rows if r["variant"] == name and r["epoch"] == 2][0].items()
                                    if k.startswith("val_")}
        (run.path / "toy.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
