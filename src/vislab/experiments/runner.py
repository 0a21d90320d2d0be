"""Resolve config and run folder, run an experiment, write summary.json and env.json."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from vislab.engine.config import apply_overrides, config_to_dict
from vislab.engine.context import RunContext
from vislab.engine.run_dir import RunDir, environment_info, is_rank_zero
from vislab.errors import UserError
from vislab.experiments._registry import get_experiment

RUN_DIR_ENV = "VISLAB_RUN_DIR"  # set by rank 0 so DDP children re-executing the CLI find the same folder


@dataclass
class RunOptions:
    name: str
    data: str | None = None
    root: str | None = None
    download: bool = False
    overrides: list[str] | dict[str, Any] | None = None
    out: str | None = None
    resume: bool = False
    devices: int | str = 1
    num_nodes: int = 1
    accelerator: str = "auto"
    quick: bool = False
    demo: bool = False


def run_from_cli(args: Any) -> int:
    overrides = list(args.overrides or [])
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    run_experiment(RunOptions(name=args.name, data=args.data, root=args.root, download=args.download,
                              overrides=overrides, out=args.out, resume=args.resume, devices=args.devices,
                              num_nodes=args.num_nodes, accelerator=args.accelerator))
    return 0


def _resolve_out(opts: RunOptions) -> Path:
    if os.environ.get(RUN_DIR_ENV) and not is_rank_zero():
        return Path(os.environ[RUN_DIR_ENV])
    if opts.out:
        return Path(opts.out)
    if opts.resume:
        raise UserError("--resume needs --out DIR (the folder of the run to continue)")
    return Path("runs") / f"{opts.name}-{datetime.now():%Y%m%d-%H%M%S}"


def run_experiment(opts: RunOptions) -> dict[str, Any]:
    exp = get_experiment(opts.name)
    cfg = exp.Config()
    if opts.demo:
        cfg = apply_overrides(cfg, exp.demo_overrides(opts.quick))
    if opts.overrides:
        cfg = apply_overrides(cfg, opts.overrides)
    out = _resolve_out(opts)
    run = RunDir(out)
    if is_rank_zero():
        check_run_options(opts)
        if not opts.resume:  # a resumed run re-validates with its saved config below
            _validate(exp, cfg, opts)
    cfg_dict = {"experiment": exp.name, "data": opts.data, "root": opts.root, **config_to_dict(cfg)}

    if is_rank_zero():
        if opts.resume:
            old = run.read_config()
            if old is None:
                raise UserError(f"--resume: {out} holds no config.yaml; nothing to resume")
            if old.get("experiment") != exp.name:
                raise UserError(f"--resume: {out} is a run of {old.get('experiment')!r}, not {exp.name!r}")
            # the saved config wins unless the user overrides keys again
            cfg = apply_overrides(exp.Config(), _saved_fields(old))
            if opts.overrides:
                cfg = apply_overrides(cfg, opts.overrides)
            opts.data = opts.data or old.get("data")
            opts.root = opts.root or old.get("root")
            cfg_dict = {"experiment": exp.name, "data": opts.data, "root": opts.root, **config_to_dict(cfg)}
            _validate(exp, cfg, opts)
        elif (out / "summary.json").exists() or (out / "state.json").exists():
            raise UserError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
        out.mkdir(parents=True, exist_ok=True)
        run.write_config(cfg_dict)
        os.environ[RUN_DIR_ENV] = str(out.resolve())
    else:  # a DDP child: take rank 0's resolved config
        old = run.read_config() or {}
        cfg = apply_overrides(exp.Config(), _saved_fields(old))
        opts.data = old.get("data", opts.data)
        opts.root = old.get("root", opts.root)

    ctx = RunContext(cfg=cfg, run=run, data=opts.data, root=opts.root, download=opts.download,
                     resume=opts.resume, devices=opts.devices, num_nodes=opts.num_nodes,
                     accelerator=opts.accelerator, quick=opts.quick, headline=exp.headline[0])
    device = ctx.resolved_accelerator()
    if is_rank_zero():
        import torch

        if opts.accelerator == "auto" and device == "cpu":
            n = torch.get_num_threads()
            ctx.log(f"vislab: no GPU found; training on CPU ({n} thread{'s' if n != 1 else ''}). "
                    "Pass --accelerator gpu to require a GPU.")
        run.write_json("env.json", environment_info(seed=cfg.seed, device=device))
        ctx.log(f"vislab: run folder {out}")
    t0 = time.perf_counter()
    summary = exp.run(ctx)
    if is_rank_zero() and summary is not None:
        summary.setdefault("experiment", exp.name)
        summary["wall_s"] = round(time.perf_counter() - t0, 2)
        run.write_json("summary.json", summary)
        ctx.log(f"vislab: wrote {out / 'report.html'}")
    return summary


def _validate(exp: Any, cfg: Any, opts: RunOptions) -> None:
    import inspect

    kwargs = {"download": opts.download} if "download" in inspect.signature(exp.validate).parameters else {}
    exp.validate(cfg, opts.data, opts.root, **kwargs)


def check_run_options(opts: RunOptions) -> None:
    """The options every experiment shares, checked before anything is created."""
    devices = opts.devices
    if isinstance(devices, str):
        if devices != "auto":
            try:
                devices = int(devices)
            except ValueError:
                raise UserError(f"--devices must be a positive integer or 'auto', got {opts.devices!r}") from None
    if isinstance(devices, int) and devices < 1:
        raise UserError(f"--devices must be >= 1, got {devices}")
    if not isinstance(opts.num_nodes, int) or opts.num_nodes < 1:
        raise UserError(f"--num-nodes must be >= 1, got {opts.num_nodes}")
    if opts.accelerator not in ("auto", "cpu", "gpu", "cuda", "mps"):
        raise UserError(f"--accelerator must be auto, cpu, gpu, cuda or mps, got {opts.accelerator!r}")
    if opts.out and Path(opts.out).exists() and not Path(opts.out).is_dir():
        raise UserError(f"--out {opts.out} exists and is not a folder")
    from vislab.engine.context import RunContext

    RunContext(cfg=None, run=None, accelerator=opts.accelerator).resolved_accelerator()  # gpu without a GPU: error


def _saved_fields(saved: dict[str, Any]) -> dict[str, Any]:
    """Config fields of a saved config.yaml (lists back to tuples where the field is a tuple)."""
    out = {k: v for k, v in saved.items() if k not in ("experiment", "data", "root")}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in out.items()}
