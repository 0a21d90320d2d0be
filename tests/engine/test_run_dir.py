from vislab.engine.run_dir import RunDir


def test_upsert_replaces_rows_by_key(tmp_path):
    run = RunDir(tmp_path)
    run.upsert_metrics([{"variant": "a", "stage": "train", "epoch": 1, "train_loss": 1.0}])
    run.upsert_metrics([{"variant": "a", "stage": "train", "epoch": 2, "train_loss": 0.5, "val_loss": 0.7}])
    run.upsert_metrics([{"variant": "a", "stage": "train", "epoch": 2, "train_loss": 0.4, "val_loss": 0.6}])
    rows = run.read_metrics()
    assert [(r["epoch"], r["train_loss"]) for r in rows] == [(1, 1.0), (2, 0.4)]
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0]
    assert header == "seed,variant,stage,epoch,train_loss,val_loss"


def test_rows_of_several_seeds_stay_apart(tmp_path):
    run = RunDir(tmp_path)
    run.upsert_metrics([{"seed": s, "variant": "a", "stage": "train", "epoch": 1, "train_loss": float(s)}
                        for s in (0, 1)])
    run.drop_metrics("a", "train", seed=1)
    assert [(r["seed"], r["train_loss"]) for r in run.read_metrics()] == [(0, 0.0)]
    assert [r["seed"] for r in run.stage_rows("a", "train", seed=0)] == [0]


def test_corrupt_files_are_one_line_errors(tmp_path):
    import pytest

    from vislab.errors import UserError

    run = RunDir(tmp_path)
    (tmp_path / "config.yaml").write_text("experiment: [unclosed")
    (tmp_path / "metrics.csv").write_bytes(b"variant,stage,epoch\nA,train,notanint\n")
    (tmp_path / "state.json").write_text("{truncated")
    with pytest.raises(UserError, match="config.yaml is not a vislab config.yaml"):
        run.read_config()
    with pytest.raises(UserError, match="metrics.csv is not a vislab metrics.csv"):
        run.read_metrics()
    with pytest.raises(UserError, match="state.json is not a JSON file"):
        run.state()


def test_one_owner_lock(tmp_path):
    import os
    import subprocess
    import sys

    import pytest

    from vislab.errors import UserError

    run = RunDir(tmp_path / "r")
    run.acquire()
    (tmp_path / "r" / ".lock").write_text(f"{os.getppid()}\nhost\n")  # another live process holds it
    with pytest.raises(UserError, match="in use by another vislab run"):
        RunDir(tmp_path / "r").acquire()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "r" / ".lock").write_text(dead.stdout.strip() + "\nhost\n")  # a killed run's stale lock
    RunDir(tmp_path / "r").acquire()
    assert (tmp_path / "r" / ".lock").read_text().split()[0] == str(os.getpid())


def test_drop_metrics(tmp_path):
    run = RunDir(tmp_path)
    run.upsert_metrics([{"variant": v, "stage": "train", "epoch": e} for v in "ab" for e in (1, 2, 3)])
    run.drop_metrics("a", "train", from_epoch=2)
    assert [(r["variant"], r["epoch"]) for r in run.read_metrics()] == [("a", 1), ("b", 1), ("b", 2), ("b", 3)]


def test_atomic_write_leaves_no_temp_files(tmp_path):
    run = RunDir(tmp_path)
    run.write_json("summary.json", {"x": 1})
    run.write_json("summary.json", {"x": 2})
    assert run.read_json("summary.json") == {"x": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
