import time

from helpers import run_cli


def test_help_is_quick_and_lists_commands():
    t = time.perf_counter()
    out = run_cli("--help")
    assert out.returncode == 0
    for cmd in ("demo", "list", "run", "arith", "gradcam"):
        assert cmd in out.stdout
    assert time.perf_counter() - t < 20  # no torch import for --help (generous for a loaded CI box)


def test_list_shows_experiments():
    out = run_cli("list")
    assert out.returncode == 0
    listed = [line.split()[0] for line in out.stdout.splitlines() if line.strip()]
    from vislab.experiments import list_experiments

    # `vislab list` prints the registry, in its order, with the same one-line summaries as `vislab show`
    assert listed == [name for name, _ in list_experiments()], out.stdout
    for name, summary in list_experiments():
        assert f"{name:<20} {summary}" in out.stdout


def _one_line_error(out, needle):
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.strip().splitlines() if line.startswith("vislab: error:")]
    assert len(lines) == 1 and needle in lines[0], out.stderr
    assert "Traceback" not in out.stderr


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    _one_line_error(run_cli("run", "nope"), "unknown experiment 'nope'")
    _one_line_error(run_cli("run", "folder-classifier", "--data", str(tmp_path / "missing"), "--out",
                            str(tmp_path / "r1")), "does not exist")
    _one_line_error(run_cli("run", "folder-classifier", "--set", "epoch=2", "--out", str(tmp_path / "r2")),
                    "unknown config key 'epoch'; valid keys: epochs")
    _one_line_error(run_cli("run", "folder-classifier", "--set", "variants=big_cnn", "--out", str(tmp_path / "r3")),
                    "invalid value for variants: 'big_cnn'")
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    (empty / "b").mkdir(parents=True)
    _one_line_error(run_cli("run", "folder-classifier", "--data", str(empty), "--out", str(tmp_path / "r4")),
                    "no readable images")
    _one_line_error(run_cli("run", "folder-classifier", "--resume", "--out", str(tmp_path / "r5")),
                    "holds no config.yaml")
