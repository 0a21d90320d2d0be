"""Where a deform-all training step of the deform-vs-conv network spends its time, and its floor.

The experiment's network at its default settings (batch 64, 64-px one-channel canvases, widths 16-128,
11 3×3 convs in 5 stages), built by the experiment itself, is timed three ways in one process:

* whole training steps (forward, BCE loss, backward, AdamW) of ``regular``, ``deform-all`` and
  ``deform-first2``, and the evaluation forward pass (the epoch's validation/precise-BN share);
* per conv layer, forward+backward of ``nn.Conv2d`` (the regular layer), of the layer's offset/mask
  predictor (``offset_conv``: a regular conv with 27 output channels, part of DCNv2 itself), and of
  ``vislab.ops.deform_conv2d`` at the same shape (with offsets of about half a pixel);
* the **floor**: a deform-all step can not cost less than the regular step plus the offset predictors'
  convolutions (``floor = (step_regular + Σ offset_conv) / step_regular``), even with free sampling and a
  deformable product as fast as ``nn.Conv2d``.

    python benchmarks/deform_network.py            # 2 threads; writes its section of benchmarks/RESULTS.md
    python benchmarks/deform_network.py --no-write --threads 1
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from _common import RESULTS, load_average, machine_info, machine_line, write_section

from vislab.experiments.deform_vs_conv import DeformVsConv, DeformVsConvConfig
from vislab.layers import DeformableConv2d
from vislab.ops import deform_conv2d


def best_ms(fn, repeats: int) -> float:
    """The best of ``repeats`` timed calls after one warm-up call (the minimum is the least disturbed)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) * 1000


def step_times(cfg: DeformVsConvConfig, repeats: int) -> dict[str, dict[str, float]]:
    exp = DeformVsConv()
    torch.manual_seed(0)
    x = torch.rand(cfg.batch_size, 1, cfg.image_size, cfg.image_size)
    y = (torch.rand(cfg.batch_size, 10) > 0.7).float()
    out = {}
    for variant in ("regular", "deform-all", "deform-first2"):
        model = exp._build(cfg, variant, 1, 10).train()
        with torch.no_grad():  # offsets of a trained layer, not the zero initialisation
            for name, p in model.named_parameters():
                if "offset_conv" in name:
                    p.normal_(0, 0.01)
        opt = torch.optim.AdamW(model.parameters(), 1e-3)

        def step(model=model, opt=opt):
            loss = F.binary_cross_entropy_with_logits(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        def evaluate(model=model):
            model.eval()
            with torch.no_grad():
                model(x)
            model.train()

        out[variant] = {"step": best_ms(step, repeats), "eval": best_ms(evaluate, repeats)}
        print(f"{variant:14s} train step {out[variant]['step']:7.1f} ms  eval forward {out[variant]['eval']:6.1f} ms",
              flush=True)
    return out


def layer_times(cfg: DeformVsConvConfig, repeats: int) -> list[dict]:
    """Per conv layer of the deform-all network: the shapes it sees at the default settings, timed."""
    model = DeformVsConv()._build(cfg, "deform-all", 1, 10)
    shapes, hooks = [], []
    for m in model.modules():
        if isinstance(m, DeformableConv2d):
            hooks.append(m.register_forward_hook(
                lambda mod, inp, out: shapes.append((mod.in_channels, mod.out_channels, inp[0].shape[-1]))))
    with torch.no_grad():
        model.eval()(torch.zeros(cfg.batch_size, 1, cfg.image_size, cfg.image_size))
    for h in hooks:
        h.remove()
    rows = []
    b = cfg.batch_size
    for c_in, c_out, size in shapes:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(b, c_in, size, size, generator=g).requires_grad_(c_in > 1)  # the first layer: data
        w = torch.randn(c_out, c_in, 3, 3, generator=g).requires_grad_()
        w_off = torch.randn(27, c_in, 3, 3, generator=g).requires_grad_()
        offset = (0.5 * torch.randn(b, 18, size, size, generator=g)).requires_grad_()
        mask = torch.rand(b, 9, size, size, generator=g).requires_grad_()
        r = {"layer": f"{c_in}→{c_out} {size}×{size}",
             "conv": best_ms(lambda x=x, w=w: F.conv2d(x, w, padding=1).sum().backward(), repeats),
             "offset_conv": best_ms(lambda x=x, w=w_off: F.conv2d(x, w, padding=1).sum().backward(), repeats),
             "deform": best_ms(lambda x=x, o=offset, w=w, m=mask: deform_conv2d(x, o, w, padding=1, mask=m).sum()
                               .backward(), repeats)}
        rows.append(r)
        print(f"{r['layer']:16s} conv {r['conv']:7.1f}  offset conv {r['offset_conv']:7.1f}  deform op "
              f"{r['deform']:7.1f} ms", flush=True)
    return rows


def markdown(steps: dict, layers: list[dict]) -> list[str]:
    reg = steps["regular"]["step"]
    off = sum(r["offset_conv"] for r in layers)
    conv = sum(r["conv"] for r in layers)
    deform = sum(r["deform"] for r in layers)
    lines = ["| variant | training step ms | × regular | evaluation forward ms | × regular |",
             "|---|---:|---:|---:|---:|"]
    for v, t in steps.items():
        lines.append(f"| {v} | {t['step']:.0f} | {t['step'] / reg:.2f}× | {t['eval']:.0f} | "
                     f"{t['eval'] / steps['regular']['eval']:.2f}× |")
    lines += ["", f"Floor of a deform-all step (the regular step plus the offset predictors' convolutions, free "
                  f"sampling): **{(reg + off) / reg:.2f}×** the regular step; measured "
                  f"**{steps['deform-all']['step'] / reg:.2f}×**.", "",
              "| layer (batch 64) | nn.Conv2d fwd+bwd ms | offset conv (27 ch) ms | deform op ms | op × conv | "
              "(op + offset conv) × conv |", "|---|---:|---:|---:|---:|---:|"]
    for r in layers:
        lines.append(f"| {r['layer']} | {r['conv']:.1f} | {r['offset_conv']:.1f} | {r['deform']:.1f} | "
                     f"{r['deform'] / r['conv']:.2f}× | {(r['deform'] + r['offset_conv']) / r['conv']:.2f}× |")
    lines.append(f"| **all 11 layers** | {conv:.0f} | {off:.0f} | {deform:.0f} | {deform / conv:.2f}× | "
                 f"{(deform + off) / conv:.2f}× |")
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (the best is kept)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    info = machine_info("cpu")
    print("machine:", info, flush=True)
    cfg = DeformVsConvConfig()
    steps = step_times(cfg, args.repeats)
    layers = layer_times(cfg, args.repeats)
    info["load_average_end"] = load_average()
    body = [f"Generated by `python benchmarks/deform_network.py` on {machine_line(info)}. The deform-vs-conv "
            "network at its default settings (batch 64, 64×64, widths 16-128); best of "
            f"{args.repeats} calls.", "", *markdown(steps, layers)]
    print("\n".join(body))
    if not args.no_write:
        write_section(RESULTS, "deform_network", "cpu", body, heading="Deformable network (deform-vs-conv), CPU")
        print(f"\nwritten to {RESULTS}")


if __name__ == "__main__":
    main()
