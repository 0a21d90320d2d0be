"""Experiment ``transfer`` (SPEC §5): tiny end-to-end runs of every regime, what each regime may train,
the CIFAR-10 path on a miniature folder in the real format, clear errors; PCA helper vs scikit-learn."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import run_cli
from vislab.engine.run_dir import RunDir
from vislab.errors import UserError
from vislab.experiments.transfer import VARIANTS
from vislab.protocol.runner import RunOptions, run_experiment
from vislab.report.embedding_plot import EmbeddingPanel, pca_2d, plot_embeddings

TINY = {"epochs": 1, "head_epochs": 2, "image_size": 32, "batch_size": 8, "limit_train": 20, "limit_val": 10,
        "limit_test": 10, "embed_points": 8}


def _load_cifar_test_module():
    """tests/data/test_cifar.py's writer of miniature CIFAR-10 batches (Python-2 pickles, the real format)."""
    path = Path(__file__).resolve().parents[1] / "data" / "test_cifar.py"
    spec = importlib.util.spec_from_file_location("_transfer_cifar_helpers", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class _State:
    """The first seed's trained models and initial weights of a run, by variant (``VariantResult.state``)."""

    def __init__(self, result):
        first = result.variants[result.seeds[0]]
        self.models = {v: r.state["model"] for v, r in first.items()}
        self.initial_state = {v: r.state["initial"] for v, r in first.items()}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("transfer") / "run"
    result = run_experiment(RunOptions(name="transfer", out=str(out), overrides=TINY))
    return out, result, _State(result)


# -- the run folder and summary --------------------------------------------------------------------


def test_run_folder_and_summary_schema(tiny_run):
    out, summary, _ = tiny_run
    for name in ("config.yaml", "metrics.csv", "summary.json", "report.md", "report.html", "env.json",
                 "figures/curves_ce.png", "figures/curves_triplet.png", "figures/curves_joint_parts.png",
                 "figures/embeddings_pca.png", "figures/test_accuracy.png",
                 "checkpoints/ce_fc/best.ckpt", "checkpoints/triplet_then_ce-triplet/best.ckpt",
                 "checkpoints/triplet_then_ce-ce/last.ckpt", "checkpoints/joint/best.ckpt",
                 "checkpoints/random_init/best.ckpt"):
        assert (out / name).exists(), name
    saved = json.loads((out / "summary.json").read_text())
    assert saved["experiment"] == "transfer"
    assert saved["data"]["name"] == "embedded-lfw-faces" and saved["data"]["classes"] == ["non-face", "face"]
    assert all(saved["data"][k] > 0 for k in ("train", "val", "test"))
    assert list(saved["runs"]) == list(VARIANTS)
    for variant, r in saved["runs"].items():
        assert set(r) >= {"params", "epochs", "train", "val", "test", "time", "stages"}, variant
        assert set(r["time"]) >= {"fit_s", "epoch_s_mean", "step_ms_mean"}
        assert r["time"]["fit_s"] > 0
        assert set(r["test"]) >= {"loss", "accuracy", "precision", "recall", "f1", "triplet_active_fraction"}
        assert 0.0 <= r["test"]["accuracy"]["mean"] <= 1.0 and r["test"]["loss"]["mean"] > 0
        assert r["test"]["accuracy"]["per_seed"] == [r["test"]["accuracy"]["mean"]]
        assert r["params"] == saved["runs"]["ce_fc"]["params"] > 3_000_000  # EfficientNet-Lite0 + a 2-class FC
    runs = saved["runs"]
    assert list(runs["triplet_then_ce"]["stages"]) == ["triplet", "ce"]
    assert runs["triplet_then_ce"]["epochs"] == 1 + runs["triplet_then_ce"]["stages"]["ce"]["epochs"]
    assert runs["ce_fc"]["stages"]["train"]["trainable_params"] == 1280 * 2 + 2
    assert runs["random_init"]["pretrained"] is False and runs["random_init"]["schedule"] == "joint"
    assert runs["joint"]["pretrained"] is True and "ImageNet" in runs["joint"]["weights"]
    ctrl = saved["control"]
    assert ctrl["schedule"] == "joint" and set(ctrl["pretrained"]) == {"ce_fc", "triplet_then_ce", "joint"}
    for v, verdict in ctrl["pretrained"].items():
        assert verdict["beats_control"] == (runs[v]["test"]["accuracy"]["mean"]
                                            > runs["random_init"]["test"]["accuracy"]["mean"])
    assert summary["runs"]["joint"]["test"] == runs["joint"]["test"]
    # one claim per pretrained regime against the control, and joint against ce_fc, each with a bootstrap interval
    claims = [(c["a"], c["b"], c["metric"]) for c in saved["claims"]]
    assert claims == [("ce_fc", "random_init", "accuracy"), ("triplet_then_ce", "random_init", "accuracy"),
                      ("joint", "random_init", "accuracy"), ("joint", "ce_fc", "accuracy")]
    for c in saved["claims"]:
        assert c["verdict"] in ("holds", "not shown", "fails") and c["n_seeds"] == 1 and "bootstrap" in c["note"]
        assert c["diff"]["mean"] == pytest.approx(runs[c["a"]]["test"]["accuracy"]["mean"]
                                                  - runs[c["b"]]["test"]["accuracy"]["mean"])
    assert {v: p["verdict"] for v, p in ctrl["pretrained"].items()} == {c["a"]: c["verdict"]
                                                                       for c in saved["claims"][:3]}
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 5
    assert "Claims checked" in html and "joint beats random_init on accuracy" in html
    assert "margin 0.2" in html and "Euclidean distance between L2-normalised embeddings" in html


def test_metrics_rows_per_stage(tiny_run):
    out, _, _ = tiny_run
    rows = RunDir(out).read_metrics()
    keys = [(r["variant"], r["stage"]) for r in rows]
    assert keys[0] == ("ce_fc", "train") and ("triplet_then_ce", "triplet") in keys
    assert ("triplet_then_ce", "ce") in keys and ("joint", "train") in keys and ("random_init", "train") in keys
    by = {(r["variant"], r["stage"]): r for r in rows}
    tri = by[("triplet_then_ce", "triplet")]
    assert {"train_loss", "train_active_fraction", "val_loss", "val_triplet_loss"} <= set(tri)
    assert "train_accuracy" not in tri  # no classifier in the triplet stage
    assert tri["train_loss"] == pytest.approx(tri["train_triplet_loss"], abs=1e-5)
    assert 0.0 <= tri["train_active_fraction"] <= 1.0
    joint = by[("joint", "train")]
    assert {"train_loss", "train_ce_loss", "train_triplet_loss", "train_accuracy", "val_accuracy"} <= set(joint)
    # the logged total is CE + 1.0 * triplet (both epoch means weighted by batch size)
    assert joint["train_loss"] == pytest.approx(joint["train_ce_loss"] + joint["train_triplet_loss"], abs=1e-4)
    for key in (("ce_fc", "train"), ("triplet_then_ce", "ce")):
        assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy"} <= set(by[key])


# -- what each regime trains -----------------------------------------------------------------------


def _part(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_pretrained_regimes_start_from_the_packaged_weights_and_one_fc(tiny_run):
    from vislab.models.backbones import create_classifier

    _, _, exp = tiny_run
    ref = create_classifier("efficientnet_lite0", num_classes=2).features.state_dict()
    for v in ("ce_fc", "triplet_then_ce", "joint"):
        assert _same(_part(exp.initial_state[v], "features."), ref), v
        assert _same(_part(exp.initial_state[v], "fc."), _part(exp.initial_state["ce_fc"], "fc."))
    assert not _same(_part(exp.initial_state["random_init"], "features."), ref)


def test_ce_fc_trains_only_the_fc(tiny_run):
    _, _, exp = tiny_run
    final = exp.models["ce_fc"].state_dict()
    assert _same(_part(final, "features."), _part(exp.initial_state["ce_fc"], "features."))  # BN stats too
    assert not torch.equal(final["fc.weight"], exp.initial_state["ce_fc"]["fc.weight"])


def test_triplet_stage_trains_features_but_not_the_fc(tiny_run):
    out, _, exp = tiny_run
    init = exp.initial_state["triplet_then_ce"]
    ck = torch.load(out / "checkpoints/triplet_then_ce-triplet/best.ckpt", map_location="cpu", weights_only=True)
    stage1 = _part(ck["state_dict"], "model.")
    # the stage-1 module holds the feature extractor only: the FC cannot change in it
    assert stage1.keys() == _part(init, "features.").keys()
    assert ck["vislab"]["stage"] == "triplet"
    params = dict(exp.models["triplet_then_ce"].features.named_parameters()).keys()
    moved = [k for k in params if not torch.equal(stage1[k], init[f"features.{k}"])]
    assert len(moved) > 0.9 * len(params)  # the triplet loss moved the feature weights
    # freeze_bn (default): BatchNorm running statistics stay ImageNet's while the features train
    stats = [k for k in stage1 if k.endswith(("running_mean", "running_var"))]
    assert len(stats) > 40 and all(torch.equal(stage1[k], init[f"features.{k}"]) for k in stats)
    final = exp.models["triplet_then_ce"].state_dict()
    # stage 2 (CE on the FC) left the stage-1 features as they were, and trained the FC
    assert _same(_part(final, "features."), stage1)
    assert not torch.equal(final["fc.weight"], init["fc.weight"])


def test_joint_and_control_train_everything(tiny_run):
    out, summary, exp = tiny_run
    bn = "features.bn1.running_mean"
    for v in ("joint", "random_init"):
        init, final = exp.initial_state[v], exp.models[v].state_dict()
        assert not torch.equal(final["fc.weight"], init["fc.weight"]), v
        assert not torch.equal(final["features.conv_stem.weight"], init["features.conv_stem.weight"]), v
    # pretrained: BatchNorm statistics kept (freeze_bn); the random-init control learns its own
    assert torch.equal(exp.models["joint"].state_dict()[bn], exp.initial_state["joint"][bn])
    assert not torch.equal(exp.models["random_init"].state_dict()[bn], exp.initial_state["random_init"][bn])
    assert summary["runs"]["joint"]["batchnorm_while_features_train"] == "eval"
    assert summary["runs"]["random_init"]["batchnorm_while_features_train"] == "train"
    assert summary["runs"]["ce_fc"]["batchnorm_while_features_train"] is None


def test_models_load_back_from_their_checkpoints(tiny_run):
    """RunResult.model rebuilds each regime's classifier from its final stage's checkpoint: the head stages
    put their FC on the packaged features (ce_fc) or on the sibling triplet stage's features."""
    _, result, exp = tiny_run
    x = torch.randn(3, 3, 32, 32)
    for v in VARIANTS:
        loaded = result.model(v)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), exp.models[v].eval()(x), msg=v)


def test_two_seeds_give_per_seed_values_and_paired_claims(tmp_path):
    out = tmp_path / "run"
    result = run_experiment(RunOptions(name="transfer", out=str(out), seeds=2,
                                       overrides={**TINY, "head_epochs": 1, "variants": ("ce_fc", "random_init")}))
    assert result.seeds == [0, 1]
    acc = result["runs"]["ce_fc"]["test"]["accuracy"]
    assert len(acc["per_seed"]) == 2 and len(acc["ci95"]) == 2
    assert all(c["n_seeds"] == 2 for c in result.claims)
    shown = [c for c in result.claims if c["a"] == "ce_fc" and c["b"] == "random_init"][0]
    assert "paired over 2 seeds" in shown["note"] and shown["verdict"] in ("holds", "not shown", "fails")
    missing = [c for c in result.claims if c["a"] == "joint"]
    assert all(c["verdict"] == "not shown" and "no test accuracy" in c["note"] for c in missing)
    assert (out / "checkpoints" / "s1" / "random_init" / "best.ckpt").exists()
    report = (out / "report.md").read_text()
    assert "Claims checked" in report and "2 seeds (0, 1)" in report


# -- CIFAR-10 path ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mini_cifar(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    _load_cifar_test_module().make_mini_cifar(root, per_batch=40)  # 4 images of each class per batch
    return root


def test_cifar_path_on_a_miniature_folder(mini_cifar, tmp_path):
    out = tmp_path / "run"
    summary = run_experiment(RunOptions(
        name="transfer", data="cifar10-binary", root=str(mini_cifar), out=str(out),
        overrides={**TINY, "limit_train": None, "limit_val": None, "limit_test": None,
                   "variants": ("triplet_then_ce",), "classes": ("automobile", "airplane")}))
    d = summary["data"]
    assert "description" not in d and d["image_size"] == 32
    assert d["name"] == "cifar10-binary" and d["classes"] == ["automobile", "airplane"]
    # 5 batches x 4 images per class = 20 per class; val_fraction 0.1 -> 2 per class; test batch: 4 per class
    assert (d["train"], d["val"], d["test"]) == (36, 4, 8)
    assert d["root"] == str(mini_cifar)
    assert set(summary["runs"]) == {"triplet_then_ce"}
    assert (out / "report.html").exists()
    assert "CIFAR-10 classes automobile (label 0) and airplane (label 1)" in (out / "report.md").read_text()


def test_root_alone_selects_cifar(mini_cifar, tmp_path):
    summary = run_experiment(RunOptions(name="transfer", root=str(mini_cifar), out=str(tmp_path / "run"),
                                        overrides={**TINY, "variants": ("ce_fc",), "head_epochs": 1}))
    assert summary["data"]["name"] == "cifar10-binary" and summary["data"]["classes"] == ["airplane", "automobile"]


def test_bad_class_name_is_one_clear_line(mini_cifar, tmp_path):
    res = run_cli("run", "transfer", "--data", "cifar10-binary", "--root", str(mini_cifar), "--out",
                  str(tmp_path / "run"), "--set", "classes=airplane,automobil")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith("vislab: error: classes: unknown CIFAR-10 class name(s) ['automobil']"), res.stderr
    assert "valid names: airplane, automobile, bird" in lines[-1]
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("opts, overrides, match", [
    ({"data": "cifar10-binary"}, {}, "needs --root DIR"),
    ({"data": "imagenet"}, {}, "unknown --data 'imagenet'"),
    ({"download": True}, {}, "--download applies to --data cifar10-binary"),
    ({}, {"variants": ("ce_fc", "bogus")}, r"invalid value for variants: 'bogus'.*expected one of ce_fc, "),
    ({}, {"variants": ("ce_fc", "ce_fc")}, "variants lists a name twice"),
    ({}, {"mining": "hardest"}, "invalid value for mining: 'hardest'"),
    ({}, {"val_fraction": 1.0}, "val_fraction must be < 1"),
    ({"data": "cifar10-binary", "root": "."}, {"classes": ("cat", "cat")}, "two different CIFAR-10 classes"),
    ({}, {"batch_size": 2}, "batch_size must be >= 4"),
    ({}, {"split": (0.5, 0.5)}, "split must be three fractions"),
    ({}, {"margin": -0.1}, "margin must be >= 0"),
])
def test_bad_input_errors(tmp_path, opts, overrides, match):
    with pytest.raises(UserError, match=match):
        run_experiment(RunOptions(name="transfer", out=str(tmp_path / "run"), overrides=overrides, **opts))


def test_ddp_runs_every_regime(tmp_path):
    """--devices 2 (gloo): the P x K batch sampler shards itself over the ranks, so the triplet regimes run too."""
    out = tmp_path / "run"
    sets = [f"{k}={v}" for k, v in {**TINY, "limit_train": 24, "batch_size": 4}.items()]
    res = run_cli("run", "transfer", "--out", str(out), "--devices", "2", "--accelerator", "cpu",
                  *[a for kv in sets for a in ("--set", kv)])
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["runs"]) == set(VARIANTS)
    stages = {(r["variant"], r["stage"]) for r in RunDir(out).read_metrics()}
    assert ("triplet_then_ce", "triplet") in stages and ("joint", "train") in stages


def test_missing_cifar_files_say_how_to_get_them(tmp_path):
    with pytest.raises(UserError, match="Pass --download"):
        run_experiment(RunOptions(name="transfer", data="cifar10-binary", root=str(tmp_path / "nothing"),
                                  out=str(tmp_path / "run"), overrides={**TINY, "variants": ("ce_fc",)}))


def test_triplet_batches_need_enough_images_per_class(tmp_path):
    with pytest.raises(UserError, match=r"batch_size/2 = 16 training images per class"):
        run_experiment(RunOptions(name="transfer", out=str(tmp_path / "run"),
                                  overrides={**TINY, "batch_size": 32, "variants": ("joint",)}))


@pytest.mark.slow
def test_resume_inside_the_triplet_stage(tmp_path):
    """Killed at the end of epoch 2 of regime (b)'s triplet stage (last checkpoint: epoch 1), --resume finishes
    both stages without duplicate rows and with the numbers of an uninterrupted run."""
    args = ["--set", "image_size=32", "--set", "batch_size=8", "--set", "limit_train=20", "--set", "limit_val=10",
            "--set", "limit_test=10", "--set", "epochs=3", "--set", "head_epochs=2", "--set", "patience=5",
            "--set", "variants=triplet_then_ce"]
    out = tmp_path / "run"
    killed = run_cli("run", "transfer", "--out", str(out), *args, env={"VISLAB_KILL_AFTER_EPOCHS": "2"})
    assert killed.returncode == 75, killed.stderr[-2000:]
    assert (out / "checkpoints/triplet_then_ce-triplet/last.ckpt").exists() and not (out / "summary.json").exists()
    resumed = run_cli("run", "transfer", "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    keys = [(r["variant"], r["stage"], r["epoch"]) for r in RunDir(out).read_metrics()]
    assert keys == [("triplet_then_ce", "triplet", e) for e in (1, 2, 3)] + [("triplet_then_ce", "ce", 1),
                                                                            ("triplet_then_ce", "ce", 2)]
    full = run_cli("run", "transfer", "--out", str(tmp_path / "full"), *args)
    assert full.returncode == 0, full.stderr[-2000:]
    a = json.loads((out / "summary.json").read_text())["runs"]["triplet_then_ce"]
    b = json.loads((tmp_path / "full" / "summary.json").read_text())["runs"]["triplet_then_ce"]
    assert a["test"] == b["test"] and a["stages"]["triplet"]["train"] == b["stages"]["triplet"]["train"]


# -- PCA helper ------------------------------------------------------------------------------------


def test_pca_2d_matches_sklearn():
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 7)) @ rng.normal(size=(7, 7)) + 3.0
    coords, explained = pca_2d(torch.from_numpy(x).float())
    ref = PCA(n_components=2).fit(x)
    ref_coords = ref.transform(x)
    for j in range(2):  # equal up to the sign of each axis
        sign = np.sign(coords[:, j] @ ref_coords[:, j])
        np.testing.assert_allclose(coords[:, j], sign * ref_coords[:, j], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(explained, ref.explained_variance_ratio_, rtol=1e-5)
    # the sign convention: the largest loading of each axis is positive, so a flipped input flips nothing
    again, _ = pca_2d(x[::-1].copy())
    np.testing.assert_allclose(again[::-1], coords, atol=1e-4)


def test_pca_2d_edge_cases():
    coords, explained = pca_2d(np.array([[1.0], [2.0], [4.0]]))  # one feature: second axis is zero
    np.testing.assert_allclose(coords[:, 1], 0.0)
    np.testing.assert_allclose(np.abs(coords[:, 0]), np.abs([-4 / 3, -1 / 3, 5 / 3]))
    assert explained.tolist() == [1.0, 0.0]
    same, explained = pca_2d(np.ones((4, 3)))
    assert np.all(same == 0) and explained.tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match=r"shape \[N, D\] with N >= 2"):
        pca_2d(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="NaN or inf"):
        pca_2d(np.array([[0.0, np.nan], [1.0, 2.0]]))


def test_plot_embeddings_writes_a_png(tmp_path):
    coords, explained = pca_2d(np.random.default_rng(1).normal(size=(20, 5)))
    labels = np.arange(20) % 2
    panels = [EmbeddingPanel(f"model {i}", coords, labels, explained) for i in range(3)]
    path = plot_embeddings(panels, ["a", "b"], tmp_path / "emb.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match=r"labels must have shape \[N\] = \[20\]"):
        EmbeddingPanel("bad", coords, labels[:5])
    with pytest.raises(ValueError, match="at least one panel"):
        plot_embeddings([], ["a"], tmp_path / "none.png")


# -- the acceptance check (slow): every pretrained regime beats the random-init control --------------


@pytest.mark.slow
def test_pretrained_regimes_beat_random_init_on_embedded_data(tmp_path):
    summary = run_experiment(RunOptions(name="transfer", out=str(tmp_path / "run"), demo=True))
    ctrl = summary["control"]
    assert ctrl["all_beat_control"], json.dumps(ctrl, indent=1)
    assert all(summary["runs"][v]["test"]["accuracy"]["mean"] >= 0.85 for v in ("ce_fc", "triplet_then_ce", "joint"))
