"""Experiment ``change-detection`` (SPEC §6): a tiny end-to-end run through the real runner, the summary and
report, the same test pairs for every method, a --data folder, argument errors before any work; slow: the
demo settings reach the demo target and the demo checkpoint generalises to textures."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from vislab.engine.run_dir import RunDir
from vislab.errors import UserError
from vislab.experiments.change_detection import METHODS, ChangeDetection
from vislab.metrics.registration import METRIC_KEYS
from vislab.protocol.runner import RunOptions, run_experiment

TINY = {"image_size": 64, "max_shift": 8.0, "min_shift": 2.0, "widths": (8, 8, 16, 16), "hidden": 32, "epochs": 1,
        "n_train": 48, "n_val": 16, "n_test": 16, "batch_size": 16, "examples": 2}


def _run_with_instance(out: Path, overrides: dict, **opts):
    """run_experiment through the real runner: the RunResult."""
    return run_experiment(RunOptions(name="change-detection", out=str(out), overrides=overrides, **opts))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("change") / "run"
    return out, _run_with_instance(out, TINY)


def test_run_folder_summary_and_report(tiny_run):
    out, summary = tiny_run
    for name in ("config.yaml", "metrics.csv", "summary.json", "report.md", "report.html", "env.json",
                 "checkpoints/net/best.ckpt", "figures/curves.png", "figures/error_vs_change.png",
                 "figures/confusion.png", "figures/examples.png", "figures/dataset_pairs.png",
                 "figures/dataset_sources.png", "figures/time.png"):
        assert (out / name).exists(), name
    saved = json.loads((out / "summary.json").read_text())
    assert saved["experiment"] == "change-detection"
    d = saved["data"]
    assert d["name"] == "skimage-photos" and (d["train"], d["val"], d["test"]) == (48, 16, 16)
    src = d["sources"]
    assert set(src["train"]).isdisjoint(src["test"]) and set(src["val"]).isdisjoint(src["test"])
    assert len(src["train"]) + len(src["val"]) + len(src["test"]) == 16
    assert list(saved["runs"]) == ["net", "hybrid"] and list(saved["baselines"]) == ["phase", "fourier_mellin"]
    rows = {**saved["runs"], **saved["baselines"]}
    assert set(rows) == set(METHODS)
    per_type = {f"{k}_{t}" for k in METRIC_KEYS for t in ("none", "shift", "scale", "both")}
    for m, r in rows.items():
        assert set(r) >= {"params", "epochs", "train", "val", "test", "time", "method"}, m
        assert set(r["test"]) >= set(METRIC_KEYS) | per_type | {"ms_per_pair"}, m
        assert 0.0 <= r["test"]["type_accuracy"]["mean"] <= 1.0 and r["test"]["ms_per_pair"]["mean"] > 0
        assert set(r["time"]) >= {"fit_s", "epoch_s_mean", "step_ms_mean"}
    assert rows["phase"]["params"] == 0 and rows["phase"]["epochs"] == 0
    assert rows["net"]["params"] > 0 and rows["net"]["epochs"] == 1
    assert rows["hybrid"]["params"] == rows["net"]["params"]
    assert rows["phase"]["test"]["scale_error_median_none"]["mean"] == 0.0  # phase correlation says s = 1
    assert rows["hybrid"]["test"]["ms_per_pair"]["mean"] > rows["net"]["test"]["ms_per_pair"]["mean"]
    # every method on the same 16 test pairs: same number of pairs per true type in every confusion matrix
    counts = {m: np.array(cm).sum(1).tolist() for m, cm in saved["confusion"].items()}
    assert set(counts) == set(METHODS)
    assert all(v == counts["net"] for v in counts.values()) and sum(counts["net"]) == 16
    assert counts["net"] == [4, 4, 4, 4]
    assert saved["checkpoint"] == "checkpoints/net/best.ckpt" == rows["net"]["checkpoints"][0]
    assert saved["data"]["shift_threshold_px"] == 1.0 and "s·(p − c) + c + t" in saved["data"]["convention"]
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 7
    md = (out / "report.md").read_text()
    assert "How the dataset was built" in md and "s·(p − c) + c + t" in md and "Target —" in md
    # per change type, the shared tie-aware sentence: phase correlation's exact 0 % on unchanged pairs is a
    # tie with every other method at exactly 0 %, never a win
    zero = [m for m in METHODS if rows[m]["test"]["scale_error_median_none"]["mean"] == 0.0]
    line = next(ln for ln in md.splitlines() if "**none** pairs: median scale error" in ln)
    assert ("tie for best" in line) == (len(zero) > 1) and "**phase**" in line
    metrics = RunDir(out).read_metrics()
    assert metrics and {"train_loss_shift", "train_loss_scale", "train_loss_type", "val_type_accuracy",
                        "val_translation_error_median"} <= set(metrics[0])


def test_claims_hybrid_vs_classical_and_net_type_accuracy(tiny_run):
    out, result = tiny_run
    claims = [(c["a"], c["b"], c["metric"], c["higher_is_better"]) for c in result.claims]
    assert claims == [("hybrid", "phase", "translation_error_mean", False),
                      ("hybrid", "fourier_mellin", "translation_error_mean", False),
                      ("net", "phase", "type_accuracy", True), ("net", "fourier_mellin", "type_accuracy", True)]
    rows = {**result["runs"], **result["baselines"]}
    for c in result.claims:
        assert c["n_seeds"] == 1 and "bootstrap over 16 test items" in c["note"], c
        assert c["verdict"] in ("holds", "not shown", "fails")
        lo, hi = c["diff"]["ci95"]
        assert lo <= c["diff"]["mean"] <= hi
        assert c["diff"]["mean"] == pytest.approx(rows[c["a"]]["test"][c["metric"]]["mean"]
                                                  - rows[c["b"]]["test"][c["metric"]]["mean"])
    md = (out / "report.md").read_text()
    assert "Claims checked" in md and "hybrid beats phase on translation error mean" in md
    # the trained network comes back from its checkpoint
    assert result.model("net").image_size == 64


def test_two_seeds(tmp_path):
    out = tmp_path / "run"
    result = _run_with_instance(out, {**TINY, "n_train": 32, "n_val": 8, "n_test": 8, "examples": 1}, seeds=2)
    assert result.seeds == [0, 1]
    for m in ("net", "hybrid"):
        assert len(result["runs"][m]["test"]["type_accuracy"]["per_seed"]) == 2
    assert len(result["baselines"]["phase"]["test"]["type_accuracy"]["per_seed"]) == 1  # computed once
    assert all(c["n_seeds"] == 2 and "paired over 2 seeds" in c["note"] for c in result.claims)
    assert (out / "checkpoints" / "s1" / "net" / "best.ckpt").exists()
    md = (out / "report.md").read_text()
    assert "Claims checked over 2 seeds" in md and "Claims checked" in md


def test_checkpoint_rebuilds_the_network(tiny_run):
    from vislab.commands.change import load_change_net

    out, _ = tiny_run
    model, meta = load_change_net(out / "checkpoints/net/best.ckpt")
    assert meta["task"] == "change-detection" and model.image_size == 64 and model.arch == "stacked"
    assert meta["shift_threshold"] == 1.0 and meta["scale_threshold"] == pytest.approx(math.log(1.08) / 2)


def test_data_folder(tmp_path):
    from PIL import Image
    from scipy.ndimage import gaussian_filter

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        t = gaussian_filter(rng.normal(size=(160, 200)), 2.0)
        t = (t - t.min()) / (t.max() - t.min())
        Image.fromarray((t * 255).astype(np.uint8)).save(folder / f"tex{i}.png")
    summary = _run_with_instance(tmp_path / "run", {**TINY, "n_train": 16, "n_val": 8, "n_test": 8},
                                 data=str(folder))
    d = summary["data"]
    assert d["name"] == "image-folder" and d["test"] == 8
    assert sorted(d["sources"]["train"] + d["sources"]["val"] + d["sources"]["test"]) == [
        "tex0.png", "tex1.png", "tex2.png"]


@pytest.mark.parametrize("opts, overrides, match", [
    ({"data": "/nonexistent/folder"}, {}, "does not exist"),
    ({"root": "/tmp"}, {}, "takes no --root"),
    ({}, {"image_size": 48}, "image_size must be >= 64"),
    ({}, {"max_shift": 40.0}, "max_shift must be <= image_size / 4"),
    ({}, {"min_shift": 20.0}, "min_shift < max_shift"),
    ({}, {"max_scale": 2.5}, "max_scale must be <= 2"),
    ({}, {"schedule": "cosine"}, "invalid value for schedule: 'cosine'"),
    ({}, {"val_fraction": 0.5, "test_fraction": 0.5}, r"val_fraction \+ test_fraction < 1"),
    ({}, {"widths": (8, 0, 16, 16)}, "widths must be >= 1"),
    ({}, {"min_scale": 1.4}, "min_scale < max_scale"),
    ({}, {"loss_shift": 0.0, "loss_scale": 0.0, "loss_type": 0.0}, "not all 0"),
    ({}, {"arch": "siamese", "widths": (8, 8)}, "3 encoder widths"),
    ({}, {"n_test": 2}, "n_test must be >= 4"),
])
def test_bad_arguments_fail_before_any_work(tmp_path, opts, overrides, match):
    out = tmp_path / "run"
    with pytest.raises(UserError, match=match):
        _run_with_instance(out, {**TINY, **overrides}, **opts)
    assert not out.exists()


def test_too_few_images_in_the_data_folder(tmp_path):
    from PIL import Image

    (tmp_path / "d").mkdir()
    for i in range(2):
        Image.fromarray(np.full((80, 80), 100 + i, np.uint8)).save(tmp_path / "d" / f"{i}.png")
    with pytest.raises(UserError, match="needs at least 3"):
        _run_with_instance(tmp_path / "run", TINY, data=str(tmp_path / "d"))
    (tmp_path / "f.png").write_bytes(b"x")
    with pytest.raises(UserError, match="is not a folder"):
        _run_with_instance(tmp_path / "run2", TINY, data=str(tmp_path / "f.png"))


def test_demo_settings_validate():
    from vislab.engine.config import apply_overrides, check_constraints
    from vislab.experiments._registry import get_experiment

    exp = get_experiment("change-detection")
    assert isinstance(exp, ChangeDetection)
    for cfg in (exp.Config(), *(apply_overrides(exp.Config(), exp.demo_overrides(q)) for q in (False, True))):
        check_constraints(cfg)
        exp.validate(cfg, None, None)
    assert exp.headline == ("type_accuracy", True)


@pytest.mark.slow
def test_demo_settings_reach_the_demo_target_and_generalise(tmp_path):
    """The demo run: network type accuracy >= 0.8 on held-out photos; its checkpoint through `vislab change`
    on pairs of generated textures (another kind of image than the training photos)."""
    import argparse

    from test_change_cli import texture_pair
    from vislab.commands.change import change_command

    summary = _run_with_instance(tmp_path / "demo", {}, demo=True)
    net = summary["runs"]["net"]["test"]
    assert net["type_accuracy"]["mean"] >= 0.8, json.dumps(summary["runs"]["net"]["test"], indent=1)
    hyb = summary["runs"]["hybrid"]["test"]
    assert (hyb["translation_error_median_both"]["mean"]
            < summary["baselines"]["phase"]["test"]["translation_error_median_both"]["mean"])
    ckpt = str(tmp_path / "demo" / summary["checkpoint"])
    right, n = 0, 0
    for i, (dx, dy, s, kind) in enumerate([(5.0, -3.0, 1.0, "shift"), (0.0, 0.0, 1.2, "scale"),
                                           (-4.0, 6.0, 0.85, "both"), (0.0, 0.0, 1.0, "none"),
                                           (6.0, 2.0, 1.15, "both"), (-5.0, -5.0, 1.0, "shift")]):
        a, b = texture_pair(tmp_path, i, dx, dy, s, size=64)
        for method in ("net", "hybrid"):
            import contextlib
            import io

            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                change_command(argparse.Namespace(img1=str(a), img2=str(b), method=method, checkpoint=ckpt,
                                                  json=True, out=str(tmp_path / "ov")))
            res = json.loads(buf.getvalue())
            n += 1
            right += res["change"] == kind
            if method == "hybrid" and kind != "none":
                assert math.hypot(res["dx"] - dx, res["dy"] - dy) < 1.0, (kind, res)
    assert right / n >= 0.75, (right, n)
