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


def test_show_is_kept_under_a_fingerprint_of_the_sources(tmp_path, monkeypatch):
    """`vislab show` imports the experiment once (torch, Lightning: seconds); the text is kept in the cache under
    a fingerprint of the sources, read back by later calls, computed again when the sources change, and a cache
    that cannot be written only costs the time."""
    from vislab.experiments import _registry, describe_experiment, list_experiments

    monkeypatch.setenv("VISLAB_CACHE", str(tmp_path / "cache"))
    name = list_experiments()[0][0]
    live = _registry._describe_live(name)
    assert describe_experiment(name) == live and "config (--set KEY=VALUE):" in live
    (kept,) = (tmp_path / "cache" / "show").glob(f"{name}-*.txt")
    kept.write_text("kept text")
    assert describe_experiment(name) == "kept text"  # read back, no import
    monkeypatch.setattr(_registry, "_source_fingerprint", lambda: "changed")
    assert describe_experiment(name) == live  # other sources: computed again, the old text removed
    assert [p.name for p in (tmp_path / "cache" / "show").iterdir()] == [f"{name}-changed.txt"]
    (tmp_path / "ro").write_text("a file where the cache folder should be")
    monkeypatch.setenv("VISLAB_CACHE", str(tmp_path / "ro"))
    assert describe_experiment(name) == live
    out = run_cli("show", name)
    assert out.returncode == 0 and out.stdout.strip() == live.strip()
