"""Make the figures of docs/deformable.md (run from the repository root, about two minutes on 2 cores):

    python docs/figures/deform_make_figures.py

- ``deform_offsets.png``: what one deformable 3×3 layer computes at one output pixel — the regular
  grid, the offsets that move it, the bilinear corners each moved tap reads and the modulation.
- ``deform_sampling.png``: where a trained stack of deformable layers samples (the DCN paper's
  Figure 1), next to the regular grid, on digit canvases of the deformable-vs-regular experiment.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from vislab.data.digit_canvases import MEAN, STD, make_digit_canvases
from vislab.explain.deform_sampling import deform_sampling_locations, plot_deform_sampling
from vislab.layers import DeformableConv2d, convert_to_deformable, deformable_param_groups

OUT = Path(__file__).resolve().parent


def offsets_figure(path: Path) -> None:
    torch.manual_seed(3)
    layer = DeformableConv2d(1, 1, 3, padding=1, mask_activation="sigmoid")
    with torch.no_grad():  # a hand-made deformation: taps pushed outwards and rotated a little
        offsets = []
        for i in range(3):
            for j in range(3):
                dy, dx = i - 1, j - 1
                angle = 0.35
                ry = dy * math.cos(angle) + dx * math.sin(angle)
                rx = -dy * math.sin(angle) + dx * math.cos(angle)
                offsets += [1.6 * ry - dy + 0.15 * torch.randn(()).item(), 1.6 * rx - dx]
        layer.offset_conv.bias[:18] = torch.tensor(offsets)
        layer.offset_conv.bias[18:] = torch.linspace(2.5, -1.5, 9)  # mask logits
    image = torch.zeros(1, 9, 9)
    s = deform_sampling_locations(layer, image, [(4, 4)])
    regular = deform_sampling_locations(layer, image, [(4, 4)], regular=True)
    moved, grid, mask = s.levels[0][0], regular.levels[0][0], s.weights[0][0]

    fig = Figure(figsize=(9.6, 3.4))
    axes = fig.subplots(1, 3)
    for ax in axes:
        ax.set_xlim(0.5, 7.5)
        ax.set_ylim(7.5, 0.5)
        ax.set_aspect("equal")
        ax.set_xticks(range(1, 8))
        ax.set_yticks(range(1, 8))
        ax.grid(True, color="0.85", linewidth=0.8)
        ax.tick_params(labelsize=7)
    axes[0].scatter(grid[:, 0], grid[:, 1], s=60, c="tab:blue")
    axes[0].set_title("regular 3×3 taps\n(pixel centres on the grid lines)", fontsize=9)
    axes[1].scatter(grid[:, 0], grid[:, 1], s=30, c="tab:blue", alpha=0.35)
    for (x0, y0), (x1, y1) in zip(grid.tolist(), moved.tolist()):
        axes[1].annotate("", (x1, y1), (x0, y0), arrowprops=dict(arrowstyle="->", color="0.3", lw=1))
    axes[1].scatter(moved[:, 0], moved[:, 1], s=60, c="tab:red")
    axes[1].set_title("+ offsets (Δy, Δx) per tap\n(fractional positions)", fontsize=9)
    for (x, y) in moved.tolist():
        x0, y0 = math.floor(x), math.floor(y)
        for cx, cy in ((x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)):
            axes[2].plot([x, cx], [y, cy], color="0.6", lw=0.6)
        axes[2].scatter([x0, x0 + 1, x0, x0 + 1], [y0, y0, y0 + 1, y0 + 1], s=6, c="0.4")
    axes[2].scatter(moved[:, 0], moved[:, 1], s=160 * mask.numpy(), c="tab:red")
    axes[2].set_title("bilinear: 4 corners per tap;\ndot size = modulation mask (v2)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def _model() -> nn.Sequential:
    def block(c_in, c_out):
        return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]

    return nn.Sequential(*block(1, 16), nn.MaxPool2d(2), *block(16, 32), nn.MaxPool2d(2),
                         *block(32, 32), *block(32, 48), *block(48, 64),
                         nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def sampling_figure(path: Path, *, n_train: int = 3000, epochs: int = 6, seed: int = 0) -> None:
    torch.manual_seed(seed)
    images, labels, _ = make_digit_canvases(n_train, seed=seed, split="train")
    x = (torch.from_numpy(images).float().unsqueeze(1) / 255 - MEAN) / STD  # (N, 1, 64, 64)
    y = torch.from_numpy(labels)
    model = convert_to_deformable(_model(), ["8", "11", "14"])  # the three 3×3 convs at 16×16
    opt = torch.optim.AdamW(deformable_param_groups(model, lr=3e-3, offset_lr_mult=0.3), weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[3e-3, 1e-3], total_steps=epochs * math.ceil(n_train / 64))
    start = time.time()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n_train)
        total = 0.0
        for i in range(0, n_train, 64):
            idx = perm[i:i + 64]
            loss = F.binary_cross_entropy_with_logits(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch + 1}: train loss {total / n_train:.4f} ({time.time() - start:.0f} s)", flush=True)

    test_images, test_labels, placements = make_digit_canvases(8, seed=seed + 1, split="test")
    model.eval()
    panels = []
    for k in range(3):
        image = (torch.from_numpy(test_images[k]).float()[None] / 255 - MEAN) / STD
        centre = placements[k][0].center  # (x, y) of the first digit
        panels.append((image, torch.from_numpy(test_images[k]).float(), [centre]))
    figs = [plot_deform_sampling(model, img, pts, display_image=disp,
                                 title=f"digits {[int(d) for d in test_labels[k].nonzero()[0]]}")
            for k, (img, disp, pts) in enumerate(panels)]
    # stack the per-image figures into one
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    rows = []
    for f in figs:
        canvas = FigureCanvasAgg(f)
        canvas.draw()
        rows.append(np.asarray(canvas.buffer_rgba()))
    stacked = Figure(figsize=(figs[0].get_figwidth(), figs[0].get_figheight() * len(rows)))
    ax = stacked.add_axes((0, 0, 1, 1))
    ax.imshow(np.concatenate(rows, 0))
    ax.axis("off")
    stacked.savefig(path, dpi=100)


if __name__ == "__main__":
    offsets_figure(OUT / "deform_offsets.png")
    sampling_figure(OUT / "deform_sampling.png")
    print("wrote", OUT / "deform_offsets.png", OUT / "deform_sampling.png")
