import json

import pytest

from helpers import photo_folder, run_cli
from vislab.protocol.runner import RunOptions, run_experiment

TINY = {"epochs": 2, "per_class": 6, "image_size": 32, "batch_size": 8, "cam_images": 4, "explain_images": 2,
        "explain_methods": ("gradcam", "layercam", "random")}


def test_end_to_end_embedded_small(tmp_path):
    out = tmp_path / "run"
    summary = run_experiment(RunOptions(name="folder-classifier", out=str(out),
                                        overrides={**TINY, "variants": ("small_cnn",)}))
    for name in ("config.yaml", "metrics.csv", "summary.json", "report.md", "report.html", "env.json",
                 "split.json", "figures/curves.png", "figures/confusion_small_cnn.png",
                 "figures/gradcam_small_cnn.png", "checkpoints/small_cnn/best.ckpt",
                 "checkpoints/small_cnn/last.ckpt"):
        assert (out / name).exists(), name
    saved = json.loads((out / "summary.json").read_text())
    assert saved["data"]["name"] == "embedded-shapes"
    assert (saved["data"]["train"], saved["data"]["val"], saved["data"]["test"]) == (20, 5, 5)
    run = saved["runs"]["small_cnn"]
    assert set(run) >= {"params", "epochs", "train", "val", "test", "time"}
    assert set(run["time"]) == {"fit_s", "epoch_s_mean", "step_ms_mean"}
    assert 0.0 <= run["test"]["accuracy"]["mean"] <= 1.0 and len(run["test"]["accuracy"]["per_seed"]) == 1
    assert run["params"] > 0 and run["checkpoints"] == ["checkpoints/small_cnn/best.ckpt"]
    assert saved["claims"] == []  # the claim needs the pretrained row, which this run did not train
    # the Grad-CAM layer is chosen on the validation split (or the default when nothing can be scored)
    choice = run["cam_layer_choice"]
    if choice["how"] == "best validation pointing game":
        assert set(choice["validation"]) <= {"features.0", "features.4", "features.8"}
        assert choice["validation"][run["cam_layer"]] == max(choice["validation"].values())
    else:
        assert choice["how"].startswith("default") and run["cam_layer"] == "features.8"  # the last conv
    assert "validation pointing game per candidate" in (out / "report.md").read_text()
    # every CAM method on the same 2 test images of the Grad-CAM figure: one row per method, intervals over images
    ex = saved["explanations"]["small_cnn"]
    assert list(ex["methods"]) == ["gradcam", "layercam", "random"] and len(ex["test_images"]) == 2
    assert set(ex["test_images"]) <= set(range(5)) and ex["layer"] == run["cam_layer"] and ex["seconds"] > 0
    for m, row in ex["methods"].items():
        assert len(row["deletion_auc"]["per_image"]) == 2 and len(row["pointing_game"]["per_image"]) == 2, m
        assert row["deletion_auc"]["ci95"][0] <= row["deletion_auc"]["mean"] <= row["deletion_auc"]["ci95"][1]
        assert set(row["pointing_game"]["per_image"]) <= {0.0, 1.0} and row["ms_per_image"] > 0
        assert 0.0 <= row["sanity_passed"]["mean"] <= 1.0 and set(row["sanity_passed"]["per_image"]) <= {0.0, 1.0}
    report = (out / "report.md").read_text()
    assert "## Explanation methods compared" in report and "| `layercam` |" in report
    assert (out / "figures" / "explain_methods_small_cnn.jpg").exists()
    assert summary["runs"]["small_cnn"]["test"] == run["test"]
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3 and "<img src=\"figures" not in html
    # same seed, same numbers (CPU determinism)
    again = run_experiment(RunOptions(name="folder-classifier", out=str(tmp_path / "again"),
                                      overrides={**TINY, "variants": ("small_cnn",)}))
    assert again["runs"]["small_cnn"]["test"] == run["test"]
    assert again["runs"]["small_cnn"]["train"] == run["train"]


def test_two_seeds_both_variants_claim_and_report(tmp_path):
    """seeds=2: per-seed values, a claim judged on the paired differences over 2 seeds, per-seed checkpoints,
    and the report's claims table."""
    out = tmp_path / "run"
    summary = run_experiment(RunOptions(name="folder-classifier", out=str(out), seeds=2,
                                        overrides={**TINY, "epochs": 1, "pretrained_epochs": 1, "cam_images": 2,
                                                   "explain_images": 1, "explain_methods": ("gradcam", "random")}))
    assert summary["seeds"] == [0, 1] and list(summary["runs"]) == ["small_cnn", "pretrained"]
    for v, r in summary["runs"].items():
        assert len(r["test"]["accuracy"]["per_seed"]) == 2 and len(r["train"]["loss"]["per_seed"]) == 2
        assert r["checkpoints"] == [f"checkpoints/s{s}/{v}/best.ckpt" for s in (0, 1)]
        assert all((out / c).exists() for c in r["checkpoints"])
    (claim,) = summary["claims"]
    assert claim["text"] == "pretrained beats small_cnn on accuracy" and claim["n_seeds"] == 2
    assert "paired over 2 seeds" in claim["note"] and claim["verdict"] in ("holds", "not shown", "fails")
    report = (out / "report.md").read_text()
    assert "## Claims checked" in report and "pretrained beats small_cnn on accuracy" in report
    assert (out / "figures" / "gradcam_pretrained.png").exists()
    assert (out / "figures" / "explain_methods_pretrained.jpg").exists()  # the first seed's models only
    assert set(summary["explanations"]) == {"small_cnn", "pretrained"}
    assert (out / "figures" / "confusion_small_cnn.png").exists()


def test_one_seed_claim_is_a_bootstrap_over_test_images(tmp_path):
    """One seed: the per-image correctness of both variants gives a paired bootstrap interval. The method ×
    measure table only for the variants in explain_variants (the demo leaves EfficientNet's out)."""
    out = tmp_path / "run"
    summary = run_experiment(RunOptions(name="folder-classifier", out=str(out),
                                        overrides={**TINY, "epochs": 1, "pretrained_epochs": 1, "cam_images": 1,
                                                   "explain_images": 1, "explain_methods": ("gradcam", "random"),
                                                   "explain_variants": ("small_cnn",)}))
    assert set(summary["explanations"]) == {"small_cnn"}
    assert not (out / "figures" / "explain_methods_pretrained.jpg").exists()
    (claim,) = summary["claims"]
    assert "paired bootstrap over 5 test items" in claim["note"]
    acc = {v: summary["runs"][v]["test"]["accuracy"]["mean"] for v in ("pretrained", "small_cnn")}
    assert claim["diff"]["mean"] == pytest.approx(acc["pretrained"] - acc["small_cnn"])
    lo, hi = claim["diff"]["ci95"]
    assert lo <= claim["diff"]["mean"] <= hi


def test_single_field_constraints_are_declared():
    from vislab.engine.config import check_constraints
    from vislab.errors import UserError
    from vislab.experiments.folder_classifier import FolderClassifierConfig

    for bad, match in (({"variants": ("small_cnn", "vgg")}, "invalid value for variants: 'vgg'"),
                       ({"pretrained_lr": 0.0}, "pretrained_lr must be > 0"),
                       ({"pretrained_epochs": 0}, "pretrained_epochs must be >= 1"),
                       ({"cam_images": 0}, "cam_images must be >= 1"),
                       ({"small_lr": float("inf")}, "small_lr must be a finite number"),
                       ({"explain_methods": ("gradcam", "magiccam")}, "invalid value for explain_methods: 'magiccam'"),
                       ({"explain_images": -1}, "explain_images must be >= 0")):
        with pytest.raises(UserError, match=match):
            check_constraints(FolderClassifierConfig(**bad))
    check_constraints(FolderClassifierConfig(pretrained_epochs=None, small_lr=None))


def test_existing_run_is_not_overwritten(tmp_path):
    out = tmp_path / "run"
    run_experiment(RunOptions(name="folder-classifier", out=str(out),
                              overrides={**TINY, "epochs": 1, "variants": ("small_cnn",), "explain_images": 0}))
    from vislab.errors import UserError

    with pytest.raises(UserError, match="already holds a run; pass --resume"):
        run_experiment(RunOptions(name="folder-classifier", out=str(out), overrides={"epochs": 1}))


def test_resume_after_kill(tmp_path):
    """Kill the process after epoch 2 of 4; --resume finishes with 4 epochs and no duplicate rows."""
    out = tmp_path / "run"
    args = ["run", "folder-classifier", "--out", str(out), "--set", "epochs=4", "--set", "patience=10",
            "--set", "per_class=6", "--set", "image_size=32", "--set", "batch_size=8", "--set", "variants=small_cnn",
            "--set", "cam_images=2", "--set", "explain_images=0"]
    killed = run_cli(*args, env={"VISLAB_KILL_AFTER_EPOCHS": "2"})
    assert killed.returncode == 75, killed.stderr
    assert (out / "checkpoints/small_cnn/last.ckpt").exists()
    assert not (out / "summary.json").exists()
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2

    resumed = run_cli("run", "folder-classifier", "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr
    lines = (out / "metrics.csv").read_text().strip().splitlines()
    assert lines[0].startswith("seed,variant,stage,epoch,")
    keys = [tuple(line.split(",")[:4]) for line in lines[1:]]
    assert keys == [("0", "small_cnn", "train", str(e)) for e in (1, 2, 3, 4)]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runs"]["small_cnn"]["epochs"] == 4
    # a second --resume finds the stage finished and only re-evaluates
    again = run_cli("run", "folder-classifier", "--out", str(out), "--resume")
    assert again.returncode == 0 and "finished earlier" in again.stderr


def test_ddp_two_cpu_processes(tmp_path):
    out = tmp_path / "run"
    res = run_cli("run", "folder-classifier", "--out", str(out), "--devices", "2", "--accelerator", "cpu",
                  "--set", "epochs=2", "--set", "per_class=6", "--set", "image_size=32", "--set", "batch_size=4",
                  "--set", "variants=small_cnn", "--set", "cam_images=2", "--set", "explain_images=0")
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runs"]["small_cnn"]["epochs"] == 2 and "explanations" not in summary
    lines = (out / "metrics.csv").read_text().strip().splitlines()
    assert len(lines) == 1 + 2  # rank 0 alone writes the rows


@pytest.mark.slow
def test_real_photo_folder_with_corrupt_and_stray_files(tmp_path):
    root = photo_folder(tmp_path / "photos", per_class=10)
    (root / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "coffee" / "README.txt").write_text("a stray file")
    out = tmp_path / "run"
    res = run_cli("run", "folder-classifier", "--data", str(root), "--out", str(out), "--set", "epochs=6",
                  "--set", "image_size=64", "--set", "batch_size=8", "--set", "cam_images=3",
                  "--set", "explain_images=1", "--set", "explain_methods=gradcam,random")
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["skipped"][0][0] == "cat/broken.jpg"
    assert summary["data"]["ignored_non_images"] == 1
    assert "cat/broken.jpg" in (out / "report.md").read_text()
    assert summary["runs"]["pretrained"]["test"]["accuracy"]["mean"] >= 2 / 3


def test_gradcam_cli_from_checkpoint(tmp_path):
    out = tmp_path / "run"
    run_experiment(RunOptions(name="folder-classifier", out=str(out),
                              overrides={**TINY, "epochs": 1, "variants": ("small_cnn",), "explain_images": 0}))
    root = photo_folder(tmp_path / "photos", per_class=1)
    imgs = [str(p) for p in sorted(root.rglob("*.jpg"))]
    res = run_cli("gradcam", "--checkpoint", str(out / "checkpoints/small_cnn/best.ckpt"), *imgs,
                  "--out", str(tmp_path / "cams"))
    assert res.returncode == 0, res.stderr
    assert len(list((tmp_path / "cams").glob("*_gradcam.png"))) == 3
    assert (tmp_path / "cams" / "gradcam_grid.png").exists()
    assert "predicted" in res.stdout
    bad = run_cli("gradcam", "--checkpoint", str(tmp_path / "nope.ckpt"), imgs[0])
    assert bad.returncode == 2 and "does not exist" in bad.stderr
