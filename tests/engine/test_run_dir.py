from vislab.engine.run_dir import RunDir


def test_upsert_replaces_rows_by_key(tmp_path):
    run = RunDir(tmp_path)
    run.upsert_metrics([{"variant": "a", "stage": "train", "epoch": 1, "train_loss": 1.0}])
    run.upsert_metrics([{"variant": "a", "stage": "train", "epoch": 2, "train_loss": 0.5, "val_loss": 0.7}])
    run.upsert_metrics([{"variant": "a", "stage": "train", "epoch": 2, "train_loss": 0.4, "val_loss": 0.6}])
    rows = run.read_metrics()
    assert [(r["epoch"], r["train_loss"]) for r in rows] == [(1, 1.0), (2, 0.4)]
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0]
    assert header == "variant,stage,epoch,train_loss,val_loss"


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
