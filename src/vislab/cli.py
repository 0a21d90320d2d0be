"""The ``vislab`` command line. Heavy imports (torch, lightning) happen inside the commands so that
``vislab --help`` and ``vislab list`` answer at once."""

from __future__ import annotations

import argparse
import sys

EXIT_USAGE = 2

# Task commands: each module defines ``add_arguments(parser)`` and ``<name>_command(args)``, and keeps its
# heavy imports (torch, scipy, skimage) inside functions, so building the parser stays cheap.
TASK_COMMANDS = {
    "gradcam": "vislab.explain.cli",
    "detect": "vislab.commands.detect",
    "segment": "vislab.commands.segment",
    "change": "vislab.commands.change",
}
TASK_HELP = {
    "gradcam": {"help": "Grad-CAM overlays for images, from a vislab checkpoint"},
    "detect": {"help": "boxes on images from a detection checkpoint (Faster R-CNN)"},
    "segment": {"help": "a mask from a box prompt with a fine-tuned SAM checkpoint"},
    "change": {"help": "displacement and scaling between two images",
               "description": "Estimate how IMG2 differs from IMG1. Convention: IMG2 is IMG1 scaled by s about the "
                              "image centre c, then shifted by t = (dx, dy) pixels (x right, y down): a point p of "
                              "IMG1 appears at s*(p - c) + c + t in IMG2. Change types: none, shift, scale, both."},
}


def _import(module: str):  # noqa: ANN202 - a module
    import importlib

    return importlib.import_module(module)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", metavar="DIR", help="run folder (default: runs/NAME-YYYYmmdd-HHMMSS)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (repeatable); unknown keys are an error listing the valid ones")
    p.add_argument("--seed", type=int, help="random seed (same as --set seed=N)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in --out from its last checkpoints")
    p.add_argument("--devices", default="1",
                   help="devices per node for Lightning (e.g. 2 runs DDP; on CPU it uses gloo)")
    p.add_argument("--num-nodes", type=int, default=1, help="nodes for multi-node DDP (torchrun/SLURM)")
    p.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu", "cuda", "mps"],
                   help="where to train; 'gpu' without a GPU is an error, never a silent CPU run")
    p.add_argument("--seeds", type=int, default=1, metavar="N",
                   help="train every variant with N seeds (seed, seed+1, ...): metrics get a mean and a 95%% "
                        "interval, claims a paired interval over seeds (default 1)")
    p.add_argument("--logger", default="tensorboard", choices=["tensorboard", "none"],
                   help="TensorBoard event files in the run folder's tb/ (default), or none")
    p.add_argument("--precision", default="32", choices=["32", "bf16-mixed", "16-mixed"],
                   help="training precision passed to Lightning (16-mixed needs a CUDA GPU)")
    p.add_argument("--demo-settings", action="store_true", dest="demo_settings",
                   help="start from the experiment's `vislab demo` settings (then --set applies), e.g. to repeat "
                        "the demo's comparison over --seeds 3")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vislab",
        description="vislab: the classic deep-learning vision curriculum, as a library plus one-command "
                    "experiments that write curves, tables and pictures for a report.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="run every experiment on its embedded data and write the reports")
    p.add_argument("--quick", action="store_true", help="smaller data and fewer epochs (a smoke run)")
    p.add_argument("--out", metavar="DIR", default=None, help="folder for the demo runs (default: runs/demo)")
    p.add_argument("--only", action="append", default=[], metavar="NAME",
                   help="run only this experiment (repeatable)")
    p.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu", "cuda", "mps"])
    p.add_argument("--logger", default="tensorboard", choices=["tensorboard", "none"],
                   help="TensorBoard event files in each run's tb/ (default), or none")

    sub.add_parser("list", help="list the registered experiments")

    p = sub.add_parser("run", help="run one experiment")
    p.add_argument("name", help="experiment name (see `vislab list`)")
    p.add_argument("--data", help="dataset: a folder path or a named dataset (the experiment's help says which)")
    p.add_argument("--root", help="root folder of a named dataset (CIFAR-10, COCO)")
    p.add_argument("--download", action="store_true", help="allow downloading the named dataset into --root")
    _add_run_options(p)

    p = sub.add_parser("show", help="show an experiment's config fields, defaults and data options")
    p.add_argument("name")

    sub.add_parser("arith", help="conv arithmetic: shapes, params, MACs, receptive fields (see `vislab arith -h`)",
                   add_help=False)

    for name, module in TASK_COMMANDS.items():
        _import(module).add_arguments(sub.add_parser(name, **TASK_HELP[name]))
    return parser


def _dispatch(args: argparse.Namespace, rest: list[str]) -> int:
    if args.command == "list":
        from vislab.experiments import list_experiments

        for name, summary in list_experiments():
            print(f"{name:<20} {summary}")
        return 0
    if args.command == "show":
        from vislab.experiments import describe_experiment

        print(describe_experiment(args.name))
        return 0
    if args.command == "run":
        from vislab.protocol.runner import run_from_cli

        return run_from_cli(args)
    if args.command == "demo":
        from vislab.experiments.demo import run_demo

        return run_demo(quick=args.quick, out=args.out, only=args.only, accelerator=args.accelerator,
                        logger=args.logger)
    if args.command in TASK_COMMANDS:
        return getattr(_import(TASK_COMMANDS[args.command]), f"{args.command}_command")(args)
    raise AssertionError(args.command)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "arith":
        # `vislab arith` has its own parser (layer specs, --model, --json, conv-steps ...).
        from vislab.arith.cli import main as arith_main

        return _guard(lambda: arith_main(argv[1:]))
    from vislab.commands._console import parse_args_one_line

    if argv and argv[0] in TASK_COMMANDS:
        # a task command parses with its own module only: it starts without importing the other commands'
        parser = argparse.ArgumentParser(prog="vislab")
        sub = parser.add_subparsers(dest="command", metavar="COMMAND")
        _import(TASK_COMMANDS[argv[0]]).add_arguments(sub.add_parser(argv[0], **TASK_HELP[argv[0]]))
    else:
        parser = build_parser()
    parsed = parse_args_one_line(parser, argv)  # argparse errors: one line, exit 2
    if isinstance(parsed, int):
        return parsed
    args, rest = parsed
    if rest:
        print(f"vislab: error: unrecognized arguments: {' '.join(rest)} (see `vislab "
              f"{args.command + ' ' if args.command else ''}-h`)", file=sys.stderr)
        return EXIT_USAGE
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    return _guard(lambda: _dispatch(args, rest))


def _guard(fn) -> int:
    """Run a command: bad input (``UserError``, the ``OSError`` family) is one line on stderr and exit 2, a
    diverged training one line and exit 3, Ctrl-C the resume hint and 130, a closed stdout 141; anything else
    is a bug and keeps its traceback, followed by a line asking for a report (exit 1). VISLAB_DEBUG=1 shows
    every traceback. See :mod:`vislab.commands._console`."""
    from vislab.commands._console import guard

    return guard(fn)


if __name__ == "__main__":
    sys.exit(main())
