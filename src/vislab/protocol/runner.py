"""The protocol that runs every experiment, and ``vislab.run()``.

validate (config constraints, the experiment's checks, the output folder) → lock and write the config →
data (once) → untrained baselines (once) → seeds × variants (``run_variant``, then ``after_seed``) →
aggregate (mean, std, 95 % interval per metric) → claims → ``summary.json`` (schema 2) → report (the shared
skeleton around the experiment's own sections). ``--resume`` continues at the right seed, variant and epoch:
finished stages load their best weights (``fit_stage``), unfinished ones resume from ``last.ckpt``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from vislab.engine.config import apply_overrides, check_constraints, config_to_dict
from vislab.engine.context import RunContext
from vislab.engine.run_dir import RunDir, environment_info, is_rank_zero
from vislab.errors import TrainingDiverged, UserError
from vislab.experiments._registry import get_experiment
from vislab.protocol.claims import judge
from vislab.protocol.results import SCHEMA, RunResult, VariantResult, aggregate_variant, to_strict_json

RUN_DIR_ENV = "VISLAB_RUN_DIR"  # set by rank 0 so DDP children re-executing the CLI find the same folder
PRECISIONS = ("32", "32-true", "bf16-mixed", "16-mixed")
LOGGERS = ("tensorboard", "none")


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
    seeds: int = 1
    logger: str = "tensorboard"
    precision: str = "32"
    experiment: Any = None  # an Experiment instance not in the registry (tests, notebooks)
    extra: dict[str, Any] = field(default_factory=dict)


def run_from_cli(args: Any) -> int:
    overrides = list(args.overrides or [])
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    run_experiment(RunOptions(name=args.name, data=args.data, root=args.root, download=args.download,
                              overrides=overrides, out=args.out, resume=args.resume, devices=args.devices,
                              num_nodes=args.num_nodes, accelerator=args.accelerator, seeds=args.seeds,
                              logger=args.logger, precision=args.precision,
                              demo=bool(getattr(args, "demo_settings", False))))
    return 0


def run(name: str, *, data: str | None = None, root: str | None = None, seeds: int = 1, out: str | None = None,
        resume: bool = False, logger: str = "tensorboard", precision: str = "32", accelerator: str = "auto",
        **config: Any) -> RunResult:
    """Run experiment ``name`` from Python: ``vislab.run("vit", seeds=3, epochs=5)``. Config fields are keyword
    arguments (typed values, checked as ``--set`` is); returns the :class:`RunResult`. Bad input raises
    ``ValueError`` (``vislab.errors.UserError``) before anything is written."""
    if not isinstance(seeds, int) or isinstance(seeds, bool):
        raise TypeError(f"seeds must be an int, got {type(seeds).__name__}")
    return run_experiment(RunOptions(name=name, data=data, root=root, overrides=dict(config), out=out, resume=resume,
                                     seeds=seeds, logger=logger, precision=precision, accelerator=accelerator))


def _resolve_out(opts: RunOptions) -> Path:
    if os.environ.get(RUN_DIR_ENV) and not is_rank_zero():
        return Path(os.environ[RUN_DIR_ENV])
    if opts.out:
        return Path(opts.out)
    if opts.resume:
        raise UserError("--resume needs --out DIR (the folder of the run to continue)")
    return Path("runs") / f"{opts.name}-{datetime.now():%Y%m%d-%H%M%S}"


def _check_out(out: Path, resume: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    run = RunDir(out)
    if resume:
        if not (out / "config.yaml").exists():
            raise UserError(f"--resume: {out} holds no config.yaml; nothing to resume")
        return
    if out.exists() and run.holds_run():
        raise UserError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if out.exists() and any(p.name != ".lock" for p in out.iterdir()):
        raise UserError(f"--out {out} is a folder with other files in it, not a vislab run; choose an empty or new "
                        "folder")


def resolve(opts: RunOptions) -> tuple[Any, Any, Path, RunDir]:
    """The experiment, its resolved config, the run folder: everything checked, nothing written."""
    exp = opts.experiment or get_experiment(opts.name)
    if not isinstance(opts.seeds, int) or opts.seeds < 1:
        raise UserError(f"--seeds must be a positive integer, got {opts.seeds!r}")
    if opts.logger not in LOGGERS:
        raise UserError(f"--logger must be one of {', '.join(LOGGERS)}, got {opts.logger!r}")
    if opts.precision not in PRECISIONS:
        raise UserError(f"--precision must be one of 32, bf16-mixed, 16-mixed, got {opts.precision!r}")
    out = _resolve_out(opts)
    run = RunDir(out)
    cfg = exp.Config()
    if is_rank_zero():
        _check_out(out, opts.resume)
    if opts.resume or not is_rank_zero():
        old = run.read_config() or {}
        if is_rank_zero() and old.get("experiment") != exp.name:
            raise UserError(f"--resume: {out} is a run of {old.get('experiment')!r}, not {exp.name!r}")
        cfg = apply_overrides(cfg, _saved_fields(old, cfg))  # the saved config wins unless overridden again
        opts.data = opts.data or old.get("data")
        opts.root = opts.root or old.get("root")
        opts.seeds = int(old.get("seeds", opts.seeds)) if not isinstance(old.get("seeds"), list) else len(old["seeds"])
    elif opts.demo:
        cfg = apply_overrides(cfg, exp.demo_overrides(opts.quick))
    if opts.overrides:
        cfg = apply_overrides(cfg, opts.overrides)
    if is_rank_zero():
        check_run_options(opts)
        check_constraints(cfg)
        _validate(exp, cfg, opts)
    return exp, cfg, out, run


def run_experiment(opts: RunOptions) -> RunResult:
    exp, cfg, out, run = resolve(opts)
    seeds = [int(cfg.seed) + i for i in range(opts.seeds)]
    precision = "32-true" if opts.precision == "32" else opts.precision
    ctx = RunContext(cfg=cfg, run=run, data=opts.data, root=opts.root, download=opts.download, resume=opts.resume,
                     devices=opts.devices, num_nodes=opts.num_nodes, accelerator=opts.accelerator, quick=opts.quick,
                     headline=exp.headline[0], logger=opts.logger, precision=precision)
    if is_rank_zero():
        run.acquire()
    try:
        if is_rank_zero():
            run.write_config({"experiment": exp.name, "data": opts.data, "root": opts.root, "seeds": seeds,
                              **config_to_dict(cfg)})
            os.environ[RUN_DIR_ENV] = str(out.resolve())
            device = ctx.resolved_accelerator()
            if opts.accelerator == "auto" and device == "cpu":
                import torch

                n = torch.get_num_threads()
                ctx.log(f"vislab: no GPU found; training on CPU ({n} thread{'s' if n != 1 else ''}). "
                        "Pass --accelerator gpu to require a GPU.")
            env = environment_info(seed=cfg.seed, device=device)
            env.update(precision=precision, seeds=seeds, logger=opts.logger)
            run.write_json("env.json", env)
            ctx.log(f"vislab: run folder {out}")
        return execute(exp, ctx, seeds)
    except TrainingDiverged as exc:
        _write_status(run, exp, seeds, "diverged", str(exc))
        raise
    except KeyboardInterrupt:
        _write_status(run, exp, seeds, "interrupted", "interrupted; continue with --resume --out " + str(out))
        raise
    finally:
        if is_rank_zero():
            run.release()


def _write_status(run: RunDir, exp: Any, seeds: list[int], status: str, message: str) -> None:
    if not is_rank_zero():
        return
    summary = run.read_json("summary.json", default=None) if (run.path / "summary.json").exists() else None
    summary = summary if isinstance(summary, dict) else {"schema": SCHEMA, "experiment": exp.name, "seeds": seeds,
                                                         "runs": {}}
    summary.update(status=status, message=message)
    run.write_text("summary.json", to_strict_json(summary))


def execute(exp: Any, ctx: RunContext, seeds: list[int]) -> RunResult:
    """Data → baselines → seeds × variants → aggregate → claims → summary.json → report."""
    t0 = time.perf_counter()
    data = exp.load_data(ctx)
    info = getattr(data, "info", {}) or {}
    ctx.log(f"data: {info.get('name')}: train {info.get('train')}, val {info.get('val')}, test {info.get('test')}")
    baselines = exp.baselines(ctx, data) or {}
    per_seed: dict[int, dict[str, VariantResult]] = {}
    multi = len(seeds) > 1
    for i, seed in enumerate(seeds):
        sctx = ctx.for_seed(seed, multi=multi)
        if multi:
            ctx.log(f"vislab: seed {seed} ({i + 1}/{len(seeds)})")
        results = {v: exp.run_variant(sctx, data, v) for v in exp.variants(sctx.cfg)}
        results.update(exp.after_seed(sctx, data, results) or {})
        if i > 0:  # only the first seed's models and predictions are kept for the report's pictures
            for r in results.values():
                r.state.clear()
        per_seed[seed] = results
    summary = build_summary(exp, data, seeds, per_seed, baselines)
    summary["wall_s"] = round(time.perf_counter() - t0, 2)
    result = RunResult(ctx.run.path, summary, experiment=exp, variants=per_seed)
    result.baseline_results = baselines
    if ctx.is_main:
        summary.update(exp.summary_extra(ctx, data, result) or {})
        ctx.run.write_text("summary.json", to_strict_json(summary))
        from vislab.protocol.report import write_report

        write_report(exp, ctx, data, result)
        if getattr(ctx, "logger", "none") == "tensorboard":
            from vislab.report.tensorboard import log_report

            log_report(ctx.run.path, summary, ctx.cfg)
        ctx.log(f"vislab: wrote {ctx.run.path / 'report.html'}")
    return result


def build_summary(exp: Any, data: Any, seeds: list[int], per_seed: dict[int, dict[str, VariantResult]],
                  baselines: dict[str, VariantResult]) -> dict[str, Any]:
    info = dict(getattr(data, "info", {}) or {})
    info.pop("description", None)
    names = list(per_seed[seeds[0]])
    runs = {v: aggregate_variant([per_seed[s][v] for s in seeds if v in per_seed[s]]) for v in names}
    base = {b: aggregate_variant([r]) for b, r in baselines.items()}
    rows = {**runs, **base}
    items = {v: {s: per_seed[s][v].items for s in seeds if v in per_seed[s]} for v in names}
    items.update({b: {None: r.items} for b, r in baselines.items()})
    # a claim about a row this run did not train (a subset of --set variants) is left out, not judged
    claims = [judge(c, rows, items, seeds) for c in exp.claims if c.a in rows and c.b in rows]
    key, higher = exp.headline
    return {"schema": SCHEMA, "experiment": exp.name, "data": info, "seeds": seeds,
            "headline": {"metric": key, "higher_is_better": higher}, "runs": runs, "baselines": base,
            "claims": claims, "status": "complete"}


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
    RunContext(cfg=None, run=None, accelerator=opts.accelerator).resolved_accelerator()  # gpu without a GPU: error
    if opts.precision == "16-mixed":
        import torch

        if not torch.cuda.is_available():
            raise UserError("--precision 16-mixed needs a CUDA GPU; on the CPU use bf16-mixed or 32")


def _saved_fields(saved: dict[str, Any], cfg: Any) -> dict[str, Any]:
    """Config fields of a saved config.yaml (lists back to tuples where the field is a tuple)."""
    from dataclasses import fields

    valid = {f.name for f in fields(cfg)}
    out = {k: v for k, v in saved.items() if k in valid}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in out.items()}
