"""`vislab gradcam --method NAME` on checkpoints in the formats the classification experiments write (the vit
experiment's ViT, CNN and ViT-B/16 specs have no "kind"), unique output names, files before output, closed pipes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import run_cli
from vislab.explain._names import ATTENTION_NAMES, CAM_NAMES, METHOD_NAMES, canonical_method
from vislab.explain.cli import load_classifier

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _save(path, model, spec, *, image_size=32, classes=("a", "b", "c")):
    meta = {"task": "classification", "model": spec, "class_names": list(classes), "image_size": image_size,
            "mean": MEAN, "std": STD, "variant": "x"}
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "vislab": meta}, path)
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    from vislab.models import create_model
    from vislab.models.vit import VisionTransformer

    root = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(0)
    kw = {"image_size": 32, "patch_size": 8, "num_layers": 2, "num_heads": 2, "hidden_dim": 16, "mlp_dim": 32,
          "num_classes": 3, "dropout": 0.0, "attention_dropout": 0.0}
    vit = VisionTransformer(**kw)
    torch.nn.init.normal_(vit.heads.head.weight)
    cnn = create_model("small_cnn", num_classes=3)
    out = {"vit": _save(root / "vit.ckpt", vit, {"name": "VisionTransformer", "kwargs": kw}),
           "vit_cnn": _save(root / "cnn.ckpt", cnn, {"name": "small_cnn", "kwargs": {"num_classes": 3}}),
           "registry": _save(root / "reg.ckpt", cnn, {"kind": "registry", "name": "small_cnn",
                                                       "kwargs": {"num_classes": 3}})}
    imgs = []
    rng = np.random.default_rng(0)
    for folder in ("first", "second"):  # the same file name in two folders
        (root / folder).mkdir()
        p = root / folder / "photo.png"
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(p)
        imgs.append(p)
    out["images"] = imgs
    return out


def _main(capsys, *args):
    """``vislab ARGS`` in this process (the run_cli tests cover the real process): ``(code, stdout, stderr)``."""
    from vislab.cli import main

    code = main(list(args))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _pngs_ok(paths):
    for p in paths:
        with Image.open(p) as im:
            im.load()  # a truncated PNG raises here


def test_vit_checkpoint_score_cam_unique_names(ckpts, tmp_path):
    out = tmp_path / "cams"
    res = run_cli("gradcam", "--checkpoint", str(ckpts["vit"]), *map(str, ckpts["images"]), "--method", "score-cam",
                  "--out", str(out), "--batch-size", "8")
    assert res.returncode == 0, res.stderr
    files = sorted(out.rglob("*_scorecam.png"))
    assert [f.relative_to(out).as_posix() for f in files] == ["first/photo_scorecam.png", "second/photo_scorecam.png"]
    assert (out / "scorecam_grid.png").exists()
    _pngs_ok([*files, out / "scorecam_grid.png"])
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 3 and "explained class" in lines[0]
    assert "method scorecam, layer encoder.layers.encoder_layer_1.ln_1" in lines[-1]


@pytest.mark.parametrize(("ckpt", "method"), [("vit", "gradattention"), ("vit", "rollout"),
                                              ("vit_cnn", "ablationcam"), ("registry", "Grad-CAM++")])
def test_methods_on_each_checkpoint_kind(ckpts, tmp_path, capsys, ckpt, method):
    code, _, err = _main(capsys, "gradcam", "--checkpoint", str(ckpts[ckpt]), str(ckpts["images"][0]), "--method",
                         method, "--out", str(tmp_path))
    assert code == 0, err
    slug = canonical_method(method).replace("+", "p")
    _pngs_ok([tmp_path / f"photo_{slug}.png"])  # unique stems: flat names


def test_errors_are_one_line(ckpts, tmp_path, capsys):
    img = str(ckpts["images"][0])
    cases = [(["--checkpoint", str(ckpts["vit_cnn"]), img, "--method", "rollout"], "explains a ViT's attention"),
             ([img], "--checkpoint CKPT is required"),
             (["--checkpoint", str(ckpts["vit"])], "no IMAGE given"),
             (["--checkpoint", str(ckpts["vit"]), img, "--method", "fullgrad"], "unknown explanation method"),
             (["--checkpoint", str(ckpts["vit_cnn"]), img, "--layer", "nope"], "has no layer named 'nope'"),
             (["--checkpoint", str(ckpts["vit"]), img, "--target", "7"], "--target must be a class index")]
    for args, msg in cases:
        code, _, err = _main(capsys, "gradcam", *args, "--out", str(tmp_path / "o"))
        assert code == 2, (args, err)
        assert msg in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_method_list_and_help(capsys):
    code, out, _ = _main(capsys, "gradcam", "--method", "list")
    assert code == 0
    for name in METHOD_NAMES:
        assert f"  {name} " in out
    with pytest.raises(SystemExit):
        _main(capsys, "gradcam", "-h")
    assert "ablationcam" in capsys.readouterr().out


def test_closed_pipe_exits_141_after_the_files(ckpts, tmp_path):
    out = tmp_path / "cams"
    cmd = [sys.executable, "-m", "vislab", "gradcam", "--checkpoint", str(ckpts["vit_cnn"]),
           *map(str, ckpts["images"]), "--out", str(out)]
    # the reader exits before vislab writes a byte: every print meets a closed pipe
    proc = subprocess.run(["bash", "-c", 'exec 3>&1; "$@" | true; echo "${PIPESTATUS[0]}"', "_", *cmd],
                          capture_output=True, text=True, env={**__import__("os").environ, "VISLAB_PROGRESS": "0"})
    assert proc.stdout.strip() == "141", proc.stderr
    assert "Traceback" not in proc.stderr
    _pngs_ok([out / "first/photo_gradcam.png", out / "second/photo_gradcam.png", out / "gradcam_grid.png"])


def test_names_registry_agrees_with_the_classes():
    from vislab.explain.cams import CAM_METHODS, get_method

    assert tuple(CAM_METHODS) == CAM_NAMES
    assert {get_method(n).__name__ for n in ATTENTION_NAMES} == {"AttentionRollout", "GradientAttention"}


def test_load_classifier_vit_b_16_spec(tmp_path, monkeypatch):
    """The vit experiment's pretrained variant: ViT-B/16 inside ResizedInput (a small stand-in for B/16's sizes)."""
    import vislab.models.vit as vit_mod
    from vislab.experiments.vit import ResizedInput

    monkeypatch.setattr(vit_mod, "VIT_B_16", {**vit_mod.VIT_B_16, "patch_size": 8, "num_layers": 1, "num_heads": 2,
                                              "hidden_dim": 16, "mlp_dim": 16})
    model = ResizedInput(vit_mod.vit_b_16(num_classes=3, image_size=48), 48)
    spec = {"name": "vit_b_16", "weights": "w.pth", "load": {}, "kwargs": {"num_classes": 3, "image_size": 48}}
    path = _save(tmp_path / "b16.ckpt", model, spec, image_size=32)
    loaded, meta = load_classifier(path)
    assert isinstance(loaded, ResizedInput) and meta["image_size"] == 32
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model.eval()(x))
    from vislab.explain.cli import build_explainer

    cams, _ = build_explainer(loaded, "layercam", None)(x)
    assert cams.shape == (1, 32, 32)
    bad = _save(tmp_path / "bad.ckpt", model, {"name": "VisionTransformer", "kwargs": {"image_size": 32}})
    with pytest.raises(Exception, match="cannot rebuild model 'VisionTransformer'"):
        load_classifier(bad)
