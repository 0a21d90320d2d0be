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
    assert len(lines) == 1 and lines[0].startswith("vislab: error: "), err  # argparse's errors too


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


# -- faults at the CLI boundary: argparse, the OSError family, exit codes 3 / 130 / 1 / 141 ------------------------


def test_argparse_errors_are_one_line(capsys):
    cases = [(["run"], "the following arguments are required: name (see `vislab run -h`)"),
             (["run", "folder-classifier", "--seed", "abc"], "argument --seed: invalid int value: 'abc'"),
             (["run", "folder-classifier", "--accelerator", "tpu"], "argument --accelerator: invalid choice"),
             (["nonsense-command"], "invalid choice: 'nonsense-command'"),
             (["list", "--bogus"], "unrecognized arguments: --bogus (see `vislab list -h`)"),
             (["arith", "--input"], "argument --input: expected one argument (see `vislab arith -h`)"),
             (["arith", "padding", "--size", "x"], "argument --size: invalid int value"),
             (["arith", ""], "the layer spec is empty"),
             (["arith", "conv(3,k=3)"], "a layer spec needs --input")]
    for argv, needle in cases:
        code = _main(argv)
        out, err = capsys.readouterr()
        _assert_one_line(code, err)
        assert needle in err, (argv, err)
        assert out == "", (argv, out)  # nothing on stdout: `vislab arith ""` printed its usage there


def _texture_pair(tmp: Path) -> tuple[Path, Path]:
    import numpy as np
    from PIL import Image
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    big = gaussian_filter(rng.normal(size=(160, 160)), 2.0)
    big = (big - big.min()) / (big.max() - big.min())
    a, b = tmp / "a.png", tmp / "b.png"
    Image.fromarray((big[10:106, 10:106] * 255).astype(np.uint8)).save(a)
    Image.fromarray((big[13:109, 12:108] * 255).astype(np.uint8)).save(b)
    return a, b


def _os_error(errno_code: int, path: Path) -> OSError:
    import os

    cls = {13: PermissionError, 17: FileExistsError, 21: IsADirectoryError}.get(errno_code, OSError)
    return cls(errno_code, os.strerror(errno_code), str(path))


@pytest.mark.parametrize("errno_code, where, needle", [
    (13, "mkdir", "permission denied"),
    (30, "mkdir", "read-only file system"),
    (28, "save", "no space left on the device"),
    (21, "save", "it is a folder, where a file is needed"),
])
def test_os_errors_are_one_line_naming_the_path(tmp_path, capsys, monkeypatch, errno_code, where, needle):
    """Simulated (CI runs as root: chmod proves nothing): the OSError family at the points a command writes."""
    import pathlib

    import PIL.Image

    a, b = _texture_pair(tmp_path)
    out = tmp_path / "out"

    def fail(self, *args, **kwargs):
        raise _os_error(errno_code, out if where == "mkdir" else out / "x.png")

    monkeypatch.setattr(pathlib.Path if where == "mkdir" else PIL.Image.Image, "mkdir" if where == "mkdir" else "save",
                        fail)
    code = _main(["change", str(a), str(b), "--method", "phase", "--out", str(out)])
    err = capsys.readouterr().err
    _assert_one_line(code, err)
    assert needle in err and str(out) in err, err


def test_out_that_is_a_file_is_one_line(tmp_path, capsys):
    a, b = _texture_pair(tmp_path)
    (tmp_path / "taken").write_text("a file")
    code = _main(["change", str(a), str(b), "--method", "phase", "--out", str(tmp_path / "taken")])
    err = capsys.readouterr().err
    _assert_one_line(code, err)
    assert "taken" in err


def test_exit_codes_of_diverged_interrupted_and_bugs(capsys, monkeypatch):
    from vislab import cli
    from vislab.errors import TrainingDiverged

    def raising(exc):
        def dispatch(args, rest):
            raise exc
        return dispatch

    monkeypatch.setattr(cli, "_dispatch", raising(TrainingDiverged("variant cnn, epoch 2, step 14: loss is nan")))
    assert main(["list"]) == 3
    assert capsys.readouterr().err.strip() == "vislab: training diverged: variant cnn, epoch 2, step 14: loss is nan"
    monkeypatch.setattr(cli, "_dispatch", raising(KeyboardInterrupt()))
    assert main(["list"]) == 130
    assert "--resume" in capsys.readouterr().err
    for bug in (RuntimeError("boom"), ValueError("a bug, not bad input"), TypeError("also a bug"), KeyError("k")):
        monkeypatch.setattr(cli, "_dispatch", raising(bug))
        assert main(["list"]) == 1
        err = capsys.readouterr().err
        assert "Traceback" in err and err.strip().splitlines()[-1].startswith("vislab: internal error: this is a bug")
    monkeypatch.setenv("VISLAB_DEBUG", "1")
    monkeypatch.setattr(cli, "_dispatch", raising(_os_error(13, Path("/x"))))
    with pytest.raises(PermissionError):
        main(["list"])


def test_closed_stdout_exits_141_after_the_files_are_written(tmp_path):
    import subprocess
    import sys

    a, b = _texture_pair(tmp_path)
    out = tmp_path / "ov"
    cmd = (f"{sys.executable} -m vislab change {a} {b} --method phase --json --out {out} | true; "
           "echo \"status ${PIPESTATUS[0]}\" >&2")
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "status 141", proc.stderr
    assert len(list(out.glob("*.png"))) == 1


# -- data faults found before the run folder exists, and image faults of the task commands ------------------------


def _coco_folder(root: Path, edit=None) -> Path:
    import json

    import numpy as np
    from PIL import Image

    (root / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(6):
        Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(root / "images" / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "width": 40, "height": 40})
        anns.append({"id": i + 1, "image_id": i, "category_id": 1, "bbox": [1.0, 2.0, 10.0, 10.0]})
    d = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}
    if edit:
        edit(d)
    (root / "annotations.json").write_text(json.dumps(d))
    return root


@pytest.mark.parametrize("fault, edit, needle", [
    ("nan-box", lambda d: d["annotations"][3]["bbox"].__setitem__(2, float("nan")), "non-finite bbox"),
    ("negative-box", lambda d: d["annotations"][1]["bbox"].__setitem__(3, -2.0), "negative width or height"),
    ("no-bbox", lambda d: d["annotations"][0].pop("bbox"), "lacks 'bbox'"),
    ("no-categories", lambda d: d.__setitem__("categories", []), "'categories' is empty"),
    ("duplicate-id", lambda d: d["images"][2].__setitem__("id", 1), "image id 1 appears twice"),
    ("missing-image", lambda d: d["images"][4].__setitem__("file_name", "gone.png"), "not found"),
    ("not-json", "not json", "is not valid JSON"),
])
def test_detection_data_faults_before_the_run_folder(tmp_path, capsys, fault, edit, needle):
    root = _coco_folder(tmp_path / "coco", None if isinstance(edit, str) else edit)
    if isinstance(edit, str):
        (root / "annotations.json").write_text(edit)
    out = tmp_path / "run"
    code = _main(["run", "detection", "--data", str(root), "--out", str(out)])
    err = capsys.readouterr().err
    _assert_one_line(code, err)
    assert needle in err and not out.exists(), err


def test_task_command_image_faults(tmp_path, capsys, monkeypatch):
    import re

    import numpy as np
    from PIL import Image

    a, b = _texture_pair(tmp_path)
    (tmp_path / "folder.png").mkdir()
    Image.fromarray(np.full((96, 96), 77, np.uint8)).save(tmp_path / "flat.png")
    cases = [(["change", str(tmp_path / "folder.png"), str(b)], "is a folder"),
             (["change", "--pairs", str(tmp_path / "nope")], "--pairs .*nope does not exist"),
             (["change", str(tmp_path / "flat.png"), str(tmp_path / "flat.png"), "--method", "phase"],
              "no texture to register"),
             (["change", str(a)], "give two images IMG1 IMG2"),
             (["detect", "--checkpoint", str(tmp_path / "folder.png"), str(a)], "is a folder")]
    for argv, needle in cases:
        code = _main(argv + ["--out", str(tmp_path / "o")])
        err = capsys.readouterr().err
        _assert_one_line(code, err)
        assert re.search(needle, err), (argv, err)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)  # 96×96 = 9216 pixels: a "bomb" at this limit
    code = _main(["change", str(a), str(b), "--method", "phase", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    _assert_one_line(code, err)
    assert "decompression bomb" in err
