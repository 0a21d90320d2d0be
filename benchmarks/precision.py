"""What ``--precision bf16-mixed`` buys on this machine's CPU: one training step (forward, backward, AdamW) of
the experiments' models in float32 and under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (what Lightning's
``bf16-mixed`` does on CPU), timed in one process, interleaved, median of N.

    python benchmarks/precision.py [--repeat 15] [--threads 2] [--no-write]

Rows: the small CNN at the folder classifier's demo size (64 px, batch 16), the vit experiment's ViT (16 px,
2-px patches, 4 blocks of width 64, batch 64), a torchvision ResNet-18 at 96 px (batch 16) and the deform-vs-conv
detector's backbone shape as a deformable 3×3 layer (vislab's operator, which computes in float32 whatever the
autocast: the row says what the rest of a step costs around it). The ratio is bf16 / fp32 time: above 1, bf16 is
slower here. Whether the CPU has native bf16 arithmetic (the ``avx512_bf16`` or ``amx_bf16`` flags) is in the
machine line: without it, bf16 is emulated and usually slower. Writes the ``precision cpu`` section of
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))

from _common import RESULTS, load_average, machine_info, machine_line, write_section  # noqa: E402


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line.split(":", 1)[1].split() for line in f if line.startswith("flags"))
    except (OSError, StopIteration):
        return "unknown"
    have = [f for f in ("avx512_bf16", "amx_bf16", "avx512f") if f in flags]
    return ", ".join(have) if have else "none of avx512f / avx512_bf16 / amx_bf16"


class _DeformBlock(nn.Module):
    """A 3×3 deformable layer with its offset conv (what ``convert_to_deformable`` builds), then pooling and a
    linear head."""

    def __init__(self, channels: int = 64) -> None:
        super().__init__()
        from vislab.layers.deform_conv import DeformConv2d

        self.offset = nn.Conv2d(channels, 18, 3, padding=1)
        self.conv = DeformConv2d(channels, channels, 3, padding=1)
        self.head = nn.Linear(channels, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x, self.offset(x))).mean((2, 3)))


def _cases() -> list[tuple[str, nn.Module, torch.Tensor]]:
    import torchvision

    from vislab.models import create_model
    from vislab.models.vit import VisionTransformer

    g = torch.Generator().manual_seed(0)
    return [
        ("small CNN, 64 px, batch 16", create_model("small_cnn", num_classes=5), torch.randn(16, 3, 64, 64,
                                                                                          generator=g)),
        ("ViT 16 px / 2-px patches, 4×64, batch 64",
         VisionTransformer(image_size=16, patch_size=2, num_layers=4, num_heads=4, hidden_dim=64, mlp_dim=128,
                           num_classes=5), torch.randn(64, 3, 16, 16, generator=g)),
        ("ResNet-18, 96 px, batch 16", torchvision.models.resnet18(num_classes=5), torch.randn(16, 3, 96, 96,
                                                                                                  generator=g)),
        ("deformable 3×3, 64 ch, 32×32, batch 8", _DeformBlock(), torch.randn(8, 64, 32, 32, generator=g)),
    ]


def _step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, bf16: bool) -> float:
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=15, help="timed steps per precision (after 3 warm-up steps)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-write", action="store_true", help="print only; do not touch RESULTS.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    info = machine_info("cpu")
    rows = []
    for name, model, x in _cases():
        y = torch.arange(x.shape[0]) % 5
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        times: dict[bool, list[float]] = {False: [], True: []}
        for bf16 in (False, True):
            for _ in range(3):
                _step(model, opt, x, y, bf16)
        for _ in range(args.repeat):  # interleaved, so a drift in the machine's speed hits both alike
            for bf16 in (False, True):
                times[bf16].append(_step(model, opt, x, y, bf16))
        fp32, bf = (statistics.median(times[b]) * 1e3 for b in (False, True))
        rows.append((name, fp32, bf, bf / fp32))
        print(f"{name:45s} fp32 {fp32:8.1f} ms  bf16-mixed {bf:8.1f} ms  ratio {bf / fp32:5.2f}", flush=True)
    info["load_average_end"] = load_average()
    body = [f"*{machine_line(info)}; CPU bf16 flags: {_cpu_flags()}. One training step (forward, backward, "
            f"AdamW), median of {args.repeat}, fp32 and bf16 interleaved in one process.*", "",
            "| model | fp32 ms/step | bf16-mixed ms/step | bf16 / fp32 |", "|---|---|---|---|"]
    body += [f"| {n} | {a:.3g} | {b:.3g} | {r:.2f} |" for n, a, b, r in rows]
    if not args.no_write:
        write_section(RESULTS, "precision", "cpu", body, heading="CPU",
                      intro="## Mixed precision (`--precision bf16-mixed`)\n\n`python benchmarks/precision.py`: "
                            "what bf16 autocast buys per training step on the CPU (a ratio above 1: slower).")
        print(f"wrote the 'precision cpu' section of {RESULTS}")


if __name__ == "__main__":
    main()
