"""Experiment ``vit``: tiny end-to-end runs on the generated shapes and on a miniature CIFAR-10 folder in
the real pickle format, the argument checks, patch shuffling, and (slow) the demo settings' accuracy."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from vislab.errors import UserError
from vislab.protocol.runner import RunOptions, run_experiment
from vislab.experiments.vit import VitConfig, VitExperiment, shuffle_patches

TINY = {"epochs": 1, "per_class": 12, "image_size": 32, "patch_size": 8, "num_layers": 1, "num_heads": 2,
        "hidden_dim": 16, "mlp_dim": 16, "batch_size": 16, "attention_images": 2, "cost_sizes": (7, 14),
        "cost_repeats": 1, "warmup_epochs": 0.5}


def _run(out: Path, overrides: dict, **opts) -> tuple[dict, VitExperiment]:
    """run_experiment through the real runner with this experiment (until the registry lists it)."""
    exp = VitExperiment()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("vislab.protocol.runner.get_experiment", lambda name: exp)
        summary = run_experiment(RunOptions(name="vit", out=str(out), overrides=overrides, **opts))
    return summary, exp


def _mini_cifar_writer():
    path = Path(__file__).resolve().parents[1] / "data" / "test_cifar.py"
    spec = importlib.util.spec_from_file_location("_vit_cifar_helpers", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.make_mini_cifar


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("vit") / "run"
    summary, exp = _run(out, TINY)
    return out, summary, exp


def test_shapes_run_folder_summary_and_report(shapes_run):
    out, summary, exp = shapes_run
    for name in ("config.yaml", "metrics.csv", "summary.json", "report.md", "report.html", "env.json",
                 "figures/curves.png", "figures/attention_vit.png", "figures/pos_similarity_vit.png",
                 "figures/attention_cost.png", "figures/shuffled_examples.png", "checkpoints/vit/best.ckpt",
                 "checkpoints/small_cnn/best.ckpt"):
        assert (out / name).exists(), name
    saved = json.loads((out / "summary.json").read_text())
    assert saved["experiment"] == "vit" and saved["data"]["name"] == "embedded-shapes"
    assert saved["data"]["classes"] == ["circle", "cross", "square", "star", "triangle"]
    assert (saved["data"]["train"], saved["data"]["val"], saved["data"]["test"]) == (50, 5, 5)
    assert 0 < saved["data"]["pointing_game_chance"] < 1
    assert list(saved["runs"]) == ["vit", "small_cnn"]
    md = (out / "report.md").read_text()
    assert "sharp augmentation (8 symmetries of the square" in md and "best val accuracy" in md
    for v, r in saved["runs"].items():
        assert set(r) >= {"params", "epochs", "train", "val", "test", "time"}, v
        assert set(r["time"]) >= {"fit_s", "epoch_s_mean", "step_ms_mean"}
        t = r["test"]
        assert {"accuracy", "loss", "shuffle_2x2_accuracy", "shuffle_4x4_accuracy"} <= set(t)
        assert all(0 <= t[k] <= 1 for k in ("accuracy", "shuffle_2x2_accuracy", "shuffle_4x4_accuracy"))
        assert r["params"] == sum(p.numel() for p in exp.models[v].parameters())
    vit, cnn = saved["runs"]["vit"]["test"], saved["runs"]["small_cnn"]["test"]
    # pointing games exist when some test image is classified correctly (one epoch may get none right)
    if "pointing_game_n" in vit:
        assert {"attention_pointing_game", "rollout_pointing_game"} <= set(vit)
        assert len(vit["attention_pointing_game_per_head"]) == 2
    if "pointing_game_n" in cnn:
        assert "gradcam_pointing_game" in cnn
    cost = saved["cost"]
    assert cost["measured_equals_formula"] is True and [r["tokens"] for r in cost["rows"]] == [49, 196]
    assert all(r["msa_ms"] > 0 and r["wmsa_ms"] > 0 for r in cost["rows"])
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 5
    assert "Ω(MSA) = 4hwC² + 2(hw)²C" in html and "patch shuffling" in html
    assert summary["runs"]["vit"]["test"] == saved["runs"]["vit"]["test"]


def test_shapes_run_models_and_metrics_rows(shapes_run):
    out, summary, exp = shapes_run
    from vislab.models.vit import VisionTransformer

    assert isinstance(exp.models["vit"], VisionTransformer) and exp.models["vit"].grid_size == (4, 4)
    from vislab.engine.run_dir import RunDir

    rows = RunDir(out).read_metrics()
    assert {(r["variant"], r["stage"]) for r in rows} == {("vit", "train"), ("small_cnn", "train")}
    assert all({"train_loss", "train_accuracy", "val_loss", "val_accuracy"} <= set(r) for r in rows)


def test_cifar10_miniature_all_ten_classes(tmp_path):
    root = tmp_path / "cifar"
    _mini_cifar_writer()(root, per_batch=20)
    out = tmp_path / "run"
    summary, _ = _run(out, {**TINY, "variants": ("vit",), "val_fraction": 0.2, "shuffle_grids": (2,)},
                      data="cifar10", root=str(root))
    d = summary["data"]
    assert d["name"] == "cifar10" and len(d["classes"]) == 10 and d["classes"][0] == "airplane"
    assert (d["train"], d["val"], d["test"]) == (80, 20, 20)
    assert d["boxes"] is False and d["pointing_game_chance"] is None
    t = summary["runs"]["vit"]["test"]
    assert "shuffle_2x2_accuracy" in t and "attention_pointing_game" not in t
    assert (out / "figures" / "attention_vit.png").exists()


@pytest.mark.parametrize("overrides, data, root, match", [
    ({"variants": ("vit", "resnet")}, None, None, r"unknown variant\(s\) \['resnet'\]"),
    ({"variants": ("vit", "vit")}, None, None, "variants lists a name twice"),
    ({"patch_size": 5}, None, None, r"image_size \(16\) must be divisible by patch_size \(5\)"),
    ({"hidden_dim": 30}, None, None, r"hidden_dim \(30\) must be divisible by num_heads \(4\)"),
    ({"variants": ("vit_pretrained",)}, None, None, "variant vit_pretrained needs --set vit_weights=PATH"),
    ({"variants": ("vit_pretrained",), "vit_weights": "/nonexistent/vit_b_16.pth"}, None, None,
     "vit_weights file /nonexistent/vit_b_16.pth not found"),
    ({"shuffle_grids": (3,)}, None, None, r"each grid must be >= 2 and divide image_size \(16\), got 3"),
    ({"rollout_fusion": "median"}, None, None, "rollout_fusion must be one of mean, max, min"),
    ({"cost_sizes": (7, 10)}, None, None, r"multiple of cost_window \(7\), got 10"),
    ({}, "cifar10", None, "--data cifar10 needs --root DIR"),
    ({}, "imagenet", None, "unknown --data 'imagenet' for vit"),
])
def test_validate_errors(overrides, data, root, match):
    from vislab.engine.config import apply_overrides

    cfg = apply_overrides(VitConfig(), overrides)
    with pytest.raises(UserError, match=match):
        VitExperiment().validate(cfg, data, root)


def test_run_rejects_bad_arguments_before_any_training(tmp_path):
    with pytest.raises(UserError, match="image_size"):
        _run(tmp_path / "bad", {**TINY, "patch_size": 7})
    assert not (tmp_path / "bad" / "metrics.csv").exists()
    with pytest.raises(UserError, match="CIFAR-10 train data not found"):
        _run(tmp_path / "nocifar", {**TINY, "variants": ("vit",)}, data="cifar10", root=str(tmp_path / "empty"))


def test_shuffle_patches_permutes_cells_and_never_keeps_the_identity():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    out, perm = shuffle_patches(x, 2, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and perm.shape == (2, 4)
    for b in range(2):
        assert sorted(perm[b].tolist()) == [0, 1, 2, 3] and perm[b].tolist() != [0, 1, 2, 3]
        for k in range(4):
            src = int(perm[b, k])
            r, c, sr, sc = k // 2, k % 2, src // 2, src % 2
            cell = out[b, :, 4 * r:4 * r + 4, 4 * c:4 * c + 4]
            assert torch.equal(cell, x[b, :, 4 * sr:4 * sr + 4, 4 * sc:4 * sc + 4])
    assert torch.equal(out.sum((2, 3)), x.sum((2, 3)))
    with pytest.raises(ValueError, match="grid 3 must divide the image size 8x8"):
        shuffle_patches(x, 3)


@pytest.mark.slow
def test_vit_pretrained_fine_tunes_from_a_vit_b_16_file(tmp_path):
    """The vit_pretrained path end to end on a torchvision vit_b_16 state dict file (random weights; slow:
    86M parameters and their optimiser state in the checkpoints)."""
    import torchvision

    with torch.device("meta"):
        tv = torchvision.models.vit_b_16()
    tv.to_empty(device="cpu")
    with torch.no_grad():
        for p in tv.parameters():
            p.normal_(std=0.02)
    path = tmp_path / "vit_b_16.pth"
    torch.save(tv.state_dict(), path)
    del tv
    summary, exp = _run(tmp_path / "run", {**TINY, "variants": ("vit_pretrained",), "vit_weights": str(path),
                                           "pretrained_image_size": 32, "pretrained_epochs": 1, "limit_train": 10})
    r = summary["runs"]["vit_pretrained"]
    assert r["model"]["name"] == "vit_b_16" and r["model"]["load"]["new_head"] is True
    assert r["model"]["load"]["interpolated_pos_embedding"] == [197, 5]
    assert r["params"] == 86_567_656 - (197 - 5) * 768 - (1000 - 5) * 769  # ViT-B/16 at 32 px, 5 classes
    assert {"accuracy", "shuffle_2x2_accuracy"} <= set(r["test"])
    assert (tmp_path / "run" / "figures" / "pos_similarity_vit_pretrained.png").exists()


@pytest.mark.slow
def test_demo_settings_reach_the_vit_target(tmp_path):
    exp = VitExperiment()
    summary, _ = _run(tmp_path / "demo", {**exp.demo_overrides(False), "cost_sizes": (7,)}, demo=False)
    assert summary["runs"]["vit"]["test"]["accuracy"] >= 0.6
