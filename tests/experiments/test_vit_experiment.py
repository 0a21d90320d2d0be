"""Experiment ``vit``: tiny end-to-end runs through the protocol on the generated shapes (one seed and two) and
on a miniature CIFAR-10 folder in the real pickle format, the argument checks, patch shuffling, and (slow) the
demo settings' accuracy."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from vislab.errors import UserError
from vislab.experiments.vit import VitConfig, VitExperiment, shuffle_patches
from vislab.protocol.runner import RunOptions, run_experiment

N_FIGURES = 7  # curves, shuffled examples, attention, positional similarity, cost, methods of each model
TINY = {"epochs": 1, "per_class": 12, "image_size": 32, "patch_size": 8, "num_layers": 1, "num_heads": 2,
        "hidden_dim": 16, "mlp_dim": 16, "batch_size": 16, "attention_images": 2, "cost_sizes": (7, 14),
        "cost_repeats": 1, "warmup_epochs": 0.5, "explain_images": 2, "explain_steps": 4}


def _run(out: Path, overrides: dict, **opts):
    """The real runner on the registered experiment: the RunResult and the first seed's trained models."""
    result = run_experiment(RunOptions(name="vit", out=str(out), overrides=overrides, **opts))
    models = {v: r.state.get("model") for v, r in result.variants[result.seeds[0]].items()}
    return result, models


def _mean(entry):
    return entry["mean"]


def _mini_cifar_writer():
    path = Path(__file__).resolve().parents[1] / "data" / "test_cifar.py"
    spec = importlib.util.spec_from_file_location("_vit_cifar_helpers", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.make_mini_cifar


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("vit") / "run"
    summary, models = _run(out, TINY)
    return out, summary, models


def test_shapes_run_folder_summary_and_report(shapes_run):
    out, summary, models = shapes_run
    for name in ("config.yaml", "metrics.csv", "summary.json", "report.md", "report.html", "env.json",
                 "figures/curves.png", "figures/attention_vit.png", "figures/pos_similarity_vit.png",
                 "figures/attention_cost.png", "figures/shuffled_examples.png", "checkpoints/vit/best.ckpt",
                 "checkpoints/small_cnn/best.ckpt"):
        assert (out / name).exists(), name
    saved = json.loads((out / "summary.json").read_text())
    assert saved["schema"] == 2 and saved["experiment"] == "vit" and saved["data"]["name"] == "embedded-shapes"
    assert saved["data"]["classes"] == ["circle", "cross", "square", "star", "triangle"]
    assert (saved["data"]["train"], saved["data"]["val"], saved["data"]["test"]) == (50, 5, 5)
    assert 0 < saved["data"]["pointing_game_chance"] < 1
    assert list(saved["runs"]) == ["vit", "small_cnn"]
    md = (out / "report.md").read_text()
    assert "sharp augmentation (8 symmetries of the square" in md and "best val accuracy" in md
    for v, r in saved["runs"].items():
        assert set(r) >= {"params", "epochs", "train", "val", "test", "time", "model", "lr", "best_epoch"}, v
        assert set(r["time"]) >= {"fit_s", "epoch_s_mean", "step_ms_mean"}
        t = {k: _mean(m) for k, m in r["test"].items() if isinstance(m, dict)}
        assert {"accuracy", "loss", "shuffle_2x2_accuracy", "shuffle_4x4_accuracy", "shuffle_4x4_drop"} <= set(t)
        assert all(0 <= t[k] <= 1 for k in ("accuracy", "shuffle_2x2_accuracy", "shuffle_4x4_accuracy"))
        assert t["shuffle_4x4_drop"] == pytest.approx(t["accuracy"] - t["shuffle_4x4_accuracy"])
        assert r["test"]["accuracy"]["per_seed"] == [t["accuracy"]]
        assert r["params"] == sum(p.numel() for p in models[v].parameters())
        assert set(r["val"]) >= {"loss", "accuracy", "f1"} and "loss" in r["train"]
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
    claims = saved["claims"]
    assert [(c["a"], c["b"], c["metric"]) for c in claims] == [("vit", "small_cnn", "accuracy"),
                                                                ("vit", "small_cnn", "shuffle_4x4_drop")]
    assert claims[1]["higher_is_better"] is False and all(c["n_seeds"] == 1 for c in claims)
    assert all(c["verdict"] in ("holds", "not shown", "fails") and "bootstrap" in c["note"] for c in claims)
    assert "Claims checked" in md and "keeps more accuracy than small_cnn under 4×4 patch shuffling" in md
    expl = saved["explanations"]
    assert expl["n_images"] == 2 and len(expl["images"]) == 2 and expl["seconds"] > 0
    assert set(expl["rows"]) == {"vit", "small_cnn"} and expl["layers"]["small_cnn"] == "features.8"
    assert {"gradcam", "scorecam", "random", "rollout", "gradattention"} <= set(expl["rows"]["vit"])
    assert "rollout" not in expl["rows"]["small_cnn"] and "ablationcam" in expl["rows"]["small_cnn"]
    for rows in expl["rows"].values():
        for m in rows.values():
            assert {"pointing_game", "deletion_auc", "insertion_auc", "road", "sanity_correlation"} <= set(m)
            assert 0 <= m["deletion_auc"]["mean"] <= 1 and m["ms_per_image"] > 0
    assert "Explanations: localisation and faithfulness" in md and "| small_cnn | gradcam (features.8) |" in md
    assert (out / "figures" / "methods_vit.jpg").exists() and (out / "figures" / "methods_small_cnn.jpg").exists()
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") + html.count("data:image/jpeg;base64,") == N_FIGURES
    assert html.count("data:image/jpeg;base64,") == 2  # the every-method grids of photographs: JPEG
    assert "Ω(MSA) = 4hwC² + 2(hw)²C" in html and "patch shuffling" in html
    assert summary["runs"]["vit"]["test"] == saved["runs"]["vit"]["test"]


def test_two_seeds_give_per_seed_values_and_paired_claims(tmp_path):
    out = tmp_path / "run"
    result, _ = _run(out, {**TINY, "cost_sizes": (7,), "attention_images": 1, "explain_images": 0}, seeds=2)
    assert result.seeds == [0, 1]
    for v in ("vit", "small_cnn"):
        acc = result["runs"][v]["test"]["accuracy"]
        assert len(acc["per_seed"]) == 2 and len(result["runs"][v]["checkpoints"]) == 2
        assert acc["ci95"] is not None and acc["mean"] == pytest.approx(sum(acc["per_seed"]) / 2)
    assert [c["n_seeds"] for c in result.claims] == [2, 2]
    assert all("paired over 2 seeds" in c["note"] for c in result.claims)
    assert (out / "checkpoints" / "s1" / "vit" / "best.ckpt").exists()
    md = (out / "report.md").read_text()
    assert "Claims checked" in md and "2 seeds (0, 1)" in md
    assert "explanations" not in result.summary and "Explanations:" not in md  # explain_images=0: no table


def test_shapes_run_models_and_metrics_rows(shapes_run):
    out, summary, models = shapes_run
    from vislab.models.vit import VisionTransformer

    assert isinstance(models["vit"], VisionTransformer) and models["vit"].grid_size == (4, 4)
    loaded = summary.model("vit")  # rebuilt from its best checkpoint
    assert isinstance(loaded, VisionTransformer)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), models["vit"].state_dict().values()))
    assert type(summary.model("small_cnn")) is type(models["small_cnn"])
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
    assert summary.claims == []  # both claims compare vit with small_cnn, which this run did not train
    rollout = summary["explanations"]["rows"]["vit"]["rollout"]  # no boxes: no pointing game
    assert "pointing_game" not in rollout and "insertion_auc" in rollout
    assert len(rollout["insertion_auc"]["per_image"]) == summary["explanations"]["n_images"]  # for paired comparisons
    assert (out / "figures" / "attention_vit.png").exists()


@pytest.mark.parametrize("overrides, data, root, match", [
    ({"variants": ("vit", "resnet")}, None, None,
     r"invalid value for variants: 'resnet'.*expected one of vit, small_cnn"),
    ({"variants": ()}, None, None, "variants lists no variant"),
    ({"variants": ("vit", "vit")}, None, None, "variants lists a name twice"),
    ({"patch_size": 5}, None, None, r"image_size \(16\) must be divisible by patch_size \(5\)"),
    ({"hidden_dim": 30}, None, None, r"hidden_dim \(30\) must be divisible by num_heads \(4\)"),
    ({"variants": ("vit_pretrained",)}, None, None, "variant vit_pretrained needs --set vit_weights=PATH"),
    ({"variants": ("vit_pretrained",), "vit_weights": "/nonexistent/vit_b_16.pth"}, None, None,
     "vit_weights file /nonexistent/vit_b_16.pth not found"),
    ({"shuffle_grids": (3,)}, None, None, r"each grid must be >= 2 and divide image_size \(16\), got 3"),
    ({"rollout_fusion": "median"}, None, None, "invalid value for rollout_fusion: 'median'; expected one of mean, max"),
    ({"shuffle_grids": (1,)}, None, None, r"shuffle_grids must be >= 2, got 1"),
    ({"dropout": 1.0}, None, None, "dropout must be < 1, got 1.0"),
    ({"lr": float("nan")}, None, None, "lr must be a finite number"),
    ({"per_class": 5}, None, None, "per_class must be >= 10"),
    ({"cost_sizes": (7, 10)}, None, None, r"multiple of cost_window \(7\), got 10"),
    ({}, "cifar10", None, "--data cifar10 needs --root DIR"),
    ({}, "imagenet", None, "unknown --data 'imagenet' for vit"),
])
def test_validate_errors(overrides, data, root, match):
    """Single-field rules are the config's constraints (checked by the protocol), the rest ``validate``'s."""
    from vislab.engine.config import apply_overrides

    with pytest.raises(UserError, match=match):
        cfg = apply_overrides(VitConfig(), overrides)  # checks the constraints
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
    summary, _ = _run(tmp_path / "run", {**TINY, "variants": ("vit_pretrained",), "vit_weights": str(path),
                                           "pretrained_image_size": 32, "pretrained_epochs": 1, "limit_train": 10})
    r = summary["runs"]["vit_pretrained"]
    assert r["model"]["name"] == "vit_b_16" and r["model"]["load"]["new_head"] is True
    assert r["model"]["load"]["interpolated_pos_embedding"] == [197, 5]
    assert r["params"] == 86_567_656 - (197 - 5) * 768 - (1000 - 5) * 769  # ViT-B/16 at 32 px, 5 classes
    assert {"accuracy", "shuffle_2x2_accuracy"} <= set(r["test"])
    assert summary.model("vit_pretrained")(torch.zeros(1, 3, 32, 32)).shape == (1, 5)
    assert (tmp_path / "run" / "figures" / "pos_similarity_vit_pretrained.png").exists()


@pytest.mark.slow
def test_demo_settings_reach_the_vit_target(tmp_path):
    exp = VitExperiment()
    summary, _ = _run(tmp_path / "demo", {**exp.demo_overrides(False), "cost_sizes": (7,)}, demo=False)
    assert summary["runs"]["vit"]["test"]["accuracy"]["mean"] >= 0.6
