"""Bad arguments and unusable data, for every command and every registered experiment: one line on
stderr, exit code 2, no traceback, and no run folder for a run that cannot start.

The cases are generated from the experiment registry and each experiment's config, so an experiment
registered later is covered without editing this file. Most cases call ``vislab.cli.main`` in-process
(fast); ``test_subprocess_*`` check the same through the real entry point.
"""

import dataclasses
import typing
from pathlib import Path

import pytest

from helpers import run_cli
from vislab.cli import build_parser, main
from vislab.experiments import get_experiment, list_experiments

EXPERIMENTS = [name for name, _ in list_experiments()]


def _run_cases() -> list[tuple[str, list[str]]]:
    cases = []
    for name in EXPERIMENTS:
        fields = {f.name: f for f in dataclasses.fields(get_experiment(name).Config)}
        hints = typing.get_type_hints(get_experiment(name).Config)
        cases += [
            (name, ["--set", "epochs=0"]),
            (name, ["--set", "batch_size=-2"]),
            (name, ["--set", "image_size=0"]),
            (name, ["--set", "lr=-1"]),
            (name, ["--set", "no_such_key=1"]),
            (name, ["--set", "epochs=three"]),
            (name, ["--set", "epochs"]),
            (name, ["--devices", "0"]),
            (name, ["--devices", "two"]),
            (name, ["--num-nodes", "0"]),
            (name, ["--data", "/no/such/folder"]),
            (name, ["--resume"]),
        ]
        if "variants" in fields:
            cases.append((name, ["--set", "variants=no_such_variant"]))
        for key, tp in hints.items():  # every bool key rejects a non-boolean
            if tp is bool:
                cases.append((name, ["--set", f"{key}=maybe"]))
                break
    return cases


@pytest.mark.parametrize("name, args", _run_cases(), ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_run_rejects_bad_input(tmp_path, capsys, name, args):
    out = tmp_path / "run"
    argv = ["run", name, *args] + ([] if "--resume" in args else ["--out", str(out)])
    if "--resume" in args:
        argv += ["--out", str(out)]
    code = _main(argv)
    err = capsys.readouterr().err
    _assert_one_line(code, err)
    assert not out.exists(), f"a run folder was created for a run that cannot start: {argv}"


def _main(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse errors
        return int(exc.code)


def _assert_one_line(code: int, err: str) -> None:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err, err
    if lines and lines[0].startswith("usage:"):  # argparse: its usage block, then one error line
        assert sum("error:" in line for line in lines) == 1 and "error:" in lines[-1], err
    else:
        assert len(lines) == 1, err


def _other_cases(tmp: Path) -> list[list[str]]:
    img = tmp / "img.png"
    img.write_bytes(b"not a png")
    cases = [
        ["run", "no-such-experiment"],
        ["show", "no-such-experiment"],
        ["demo", "--only", "no-such-experiment"],
        ["nonsense-command"],
        ["arith", "conv(3,x)", "--input", "3x32x32"],
        ["arith", "conv3x3(16)", "--input", "0x32x32"],
        ["arith", "--model", "no_such_model_name", "--input", "3x32x32"],
        ["gradcam", "--checkpoint", str(tmp / "missing.ckpt"), str(img)],
    ]
    sub = build_parser()._subparsers._group_actions[0].choices  # noqa: SLF001 - the registered sub-commands
    if "detect" in sub:
        cases += [["detect", "--checkpoint", str(tmp / "missing.ckpt"), str(img)],
                  ["detect", "--checkpoint", str(img), str(img), "--score", "2"]]
    if "segment" in sub:
        cases += [["segment", "--checkpoint", str(tmp / "missing.ckpt"), str(img), "--box", "0,0,10,10"],
                  ["segment", "--checkpoint", str(img), str(img), "--box", "1,2,3"]]
    if "change" in sub:
        cases += [["change", str(tmp / "a.png"), str(tmp / "b.png")],
                  ["change", str(img), str(img), "--method", "bogus"],
                  ["change", str(img), str(img), "--method", "net"]]
    return cases


def test_other_commands_reject_bad_input(tmp_path, capsys):
    for argv in _other_cases(tmp_path):
        code = _main(argv)
        err = capsys.readouterr().err
        try:
            _assert_one_line(code, err)
        except AssertionError as exc:
            raise AssertionError(f"{argv}: {exc}") from None


def test_subprocess_bad_input_is_one_line(tmp_path):
    out = tmp_path / "run"
    res = run_cli("run", "folder-classifier", "--devices", "0", "--out", str(out))
    assert res.returncode == 2 and res.stderr.strip() == "vislab: error: --devices must be >= 1, got 0"
    assert not out.exists()
    one = tmp_path / "one-class" / "cats"
    one.mkdir(parents=True)
    res = run_cli("run", "folder-classifier", "--data", str(one.parent), "--out", str(out))
    assert res.returncode == 2 and "a classifier needs at least two classes" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not out.exists()


def test_output_into_a_closed_pipe_is_quiet(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(f"{sys.executable} -m vislab show folder-classifier | head -n 1", shell=True,
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.startswith("folder-classifier") and "Traceback" not in proc.stderr
