"""A toy experiment: the whole of what a new experiment declares (README "Adding an experiment").

Two variants (a linear model and a small MLP) classify generated 2-D points on two interleaved half-moons;
one claim (the MLP beats the linear model on accuracy); one figure of its own (the test points).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from vislab.engine.config import CommonConfig, param
from vislab.engine.fit import eval_loader, fit_stage, seed_everything, train_loader
from vislab.engine.module import ClassificationModule, predict
from vislab.experiments._registry import ExperimentInfo
from vislab.experiments.base import Experiment
from vislab.protocol.claims import Claim
from vislab.protocol.results import VariantResult


@dataclass
class ToyConfig(CommonConfig):
    epochs: int = param(3, ge=1)  # epochs per variant
    batch_size: int = param(32, ge=1)  # points per step
    lr: float = param(0.05, gt=0)  # AdamW learning rate
    variants: tuple[str, ...] = param(("linear", "mlp"), choices=("linear", "mlp"))  # models to train
    n_points: int = param(600, ge=30)  # generated points (60 % train, 20 % val, 20 % test)
    noise: float = param(0.15, ge=0)  # standard deviation of the points around the moons


@dataclass
class ToyData:
    splits: dict[str, TensorDataset]
    info: dict[str, Any]


def moons(n: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, np.pi, n)
    y = rng.integers(0, 2, n)
    x = np.stack([np.cos(t) + y * 1.0, np.sin(t) * (1 - 2 * y) + y * 0.5], 1) + rng.normal(0, noise, (n, 2))
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)


class Toy(Experiment):
    name = "toy"
    Config = ToyConfig
    info = ExperimentInfo("toy", "toy:Toy", "linear vs MLP on two moons", "accuracy", True, 10.0)
    claims = (Claim("mlp", "linear", "accuracy"),)
    curve_metrics = ("loss", "accuracy")

    def load_data(self, ctx: Any) -> ToyData:
        x, y = moons(ctx.cfg.n_points, ctx.cfg.noise, ctx.cfg.seed)
        a, b = int(0.6 * len(y)), int(0.8 * len(y))
        splits = {"train": TensorDataset(x[:a], y[:a]), "val": TensorDataset(x[a:b], y[a:b]),
                  "test": TensorDataset(x[b:], y[b:])}
        return ToyData(splits, {"name": "two-moons", "description": "generated 2-D points",
                                **{k: len(v) for k, v in splits.items()}})

    def run_variant(self, ctx: Any, data: ToyData, variant: str) -> VariantResult:
        cfg = ctx.cfg
        seed_everything(cfg.seed)
        model = nn.Linear(2, 2) if variant == "linear" else nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 2))
        module = ClassificationModule(model, lr=cfg.lr, meta={"task": "toy", "variant": variant})
        stage = fit_stage(ctx, module, train_loader(data.splits["train"], batch_size=cfg.batch_size, seed=cfg.seed),
                          eval_loader(data.splits["val"], batch_size=256), variant=variant)
        logits, y = predict(module.model, eval_loader(data.splits["test"], batch_size=256))
        correct = (logits.argmax(1) == y).float().numpy()
        return VariantResult(variant, cfg.seed, test={"accuracy": float(correct.mean())}, train=stage.train,
                             val=stage.val, params=sum(p.numel() for p in model.parameters()), epochs=stage.epochs,
                             time=stage.time, items={"accuracy": correct}, checkpoint=stage.best_checkpoint,
                             state={"model": module.model})

    def report(self, ctx: Any, rep: Any, result: Any, data: ToyData) -> None:
        import matplotlib.pyplot as plt

        from vislab.report.figures import save_figure

        x, y = data.splits["test"].tensors
        fig, ax = plt.subplots(figsize=(4, 3))
        ax.scatter(x[:, 0], x[:, 1], c=y, s=6, cmap="coolwarm")
        rep.heading("Test points")
        rep.figure(save_figure(fig, ctx.run.figure("points.png")), "The generated test points, coloured by class.")

    def load_model(self, checkpoint: Any) -> nn.Module:
        from vislab.engine.checkpoint import model_state, read_checkpoint

        ckpt, meta = read_checkpoint(checkpoint, "toy", what="a toy run")
        model = nn.Linear(2, 2) if meta["variant"] == "linear" else nn.Sequential(nn.Linear(2, 32), nn.ReLU(),
                                                                                   nn.Linear(32, 2))
        model.load_state_dict(model_state(ckpt))
        return model
