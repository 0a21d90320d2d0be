"""`vislab detect --checkpoint CKPT IMAGE...` on a checkpoint of a tiny detection run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vislab.commands.detect import detect_command
from vislab.errors import UserError
from vislab.experiments.detection import DetectionConfig, build_detector, load_detector_checkpoint, model_kwargs

TINY = {"image_size": 64, "rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 30, "representation_size": 32,
        "box_score_thresh": 0.0, "pretrained": False}
SCENE_NAMES = ["circle", "square", "triangle", "star", "cross"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A detector of the detection experiment's format, untrained (random weights): what the command reads from
    a checkpoint is the same; box_score_thresh 0 keeps its (random) detections."""
    torch.manual_seed(0)
    cfg = DetectionConfig(**TINY)
    kw = model_kwargs(cfg)
    model, _ = build_detector("vislab", backbone=cfg.backbone, num_classes=len(SCENE_NAMES) + 1, model_kw=kw,
                              pretrained=False)
    meta = {"task": "detection", "variant": "vislab", "backbone": cfg.backbone, "num_classes": len(SCENE_NAMES) + 1,
            "model_kwargs": kw, "image_size": 64, "label_names": SCENE_NAMES, "category_ids": [1, 2, 3, 4, 5]}
    path = tmp_path_factory.mktemp("detect") / "best.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "vislab": meta}, path)
    return path


def _args(checkpoint, images, out, score=0.0, as_json=False):
    return argparse.Namespace(checkpoint=str(checkpoint), images=[str(p) for p in images], score=score, out=str(out),
                              json=as_json)


def test_detect_writes_drawn_images_and_coco_results(checkpoint, tmp_path, capsys):
    rng = np.random.default_rng(0)
    a = tmp_path / "000000000139.jpg"  # a COCO-style name: its number is the image id
    Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(a)
    b = tmp_path / "scene.png"
    from vislab.data.detection import load_detection_data

    data = load_detection_data(None, None, image_size=64, scenes={"n_train": 8, "n_val": 4, "n_test": 4})
    b.write_bytes(data.test.image_path(0).read_bytes())
    out = tmp_path / "out"
    assert detect_command(_args(checkpoint, [a, b], out)) == 0
    assert (out / "000000000139_det.png").exists() and (out / "scene_det.png").exists()
    assert Image.open(out / "000000000139_det.png").size == (120, 90)  # drawn on the original image
    results = json.loads((out / "detections.json").read_text())
    assert results, "with --score 0 the untrained model still returns detections"
    assert {r["image_id"] for r in results} <= {139, 2} and {r["file_name"] for r in results} <= {a.name, b.name}
    for r in results:
        assert set(r) == {"image_id", "file_name", "category_id", "category_name", "bbox", "score"}
        x, y, w, h = r["bbox"]
        assert w >= 0 and h >= 0 and x >= -1e-3 and y >= -1e-3
        assert r["category_name"] in ("circle", "square", "triangle", "star", "cross")
    # the written boxes are the model's detections of the resized image, scaled back to the original size
    model, meta = load_detector_checkpoint(checkpoint)
    img = Image.open(a).convert("RGB")
    x = torch.from_numpy(np.asarray(img.resize((64, 64), Image.Resampling.BILINEAR), np.float32) / 255).permute(2, 0, 1)
    with torch.no_grad():
        det = model([x.contiguous()])[0]
    mine = [r for r in results if r["image_id"] == 139]
    assert len(mine) == len(det["scores"])
    if mine:
        x0, y0, x1, y1 = (det["boxes"][0] * torch.tensor([120 / 64, 90 / 64, 120 / 64, 90 / 64])).tolist()
        assert mine[0]["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0], abs=0.01)
        assert mine[0]["score"] == pytest.approx(float(det["scores"][0]), abs=1e-4)
    assert "detections.json" in capsys.readouterr().out
    # a high threshold keeps fewer
    assert detect_command(_args(checkpoint, [a], tmp_path / "out2", score=1.0)) == 0
    assert json.loads((tmp_path / "out2" / "detections.json").read_text()) == []


def test_detect_errors(checkpoint, tmp_path):
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(img)
    with pytest.raises(UserError, match="checkpoint .* does not exist"):
        detect_command(_args(tmp_path / "none.ckpt", [img], tmp_path / "o"))
    with pytest.raises(UserError, match="image .*missing.png.* not found"):
        detect_command(_args(checkpoint, [img, tmp_path / "missing.png"], tmp_path / "o"))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match="cannot read image"):
        detect_command(_args(checkpoint, [bad], tmp_path / "o"))
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"garbage")
    with pytest.raises(UserError, match="junk.ckpt is not a valid vislab/PyTorch weights file"):
        detect_command(_args(junk, [img], tmp_path / "o"))
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}, "vislab": {"task": "classification"}}, other)
    with pytest.raises(UserError, match="not a checkpoint of the detection experiment"):
        detect_command(_args(other, [img], tmp_path / "o"))
    with pytest.raises(UserError, match="--score"):
        detect_command(_args(checkpoint, [img], tmp_path / "o", score=1.5))
    assert not (tmp_path / "o").exists()  # nothing is written when the input is bad


def test_folders_globs_same_names_and_unique_ids(checkpoint, tmp_path, capsys):
    """Two 1.png in different folders: two pictures (folders kept), distinct image ids; a folder, a glob;
    one JSON line per image with --json, each after its picture exists."""
    rng = np.random.default_rng(1)
    for sub in ("a", "b", "b/c"):
        (tmp_path / "in" / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "in" / sub / "1.png")
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "in" / "a" / "1.jpg")
    out = tmp_path / "out"
    assert detect_command(_args(checkpoint, [tmp_path / "in"], out, as_json=True)) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(d["image"]).relative_to(tmp_path / "in").as_posix() for d in lines] == [
        "a/1.jpg", "a/1.png", "b/1.png", "b/c/1.png"]
    assert [d["image_id"] for d in lines] == [1, 2, 3, 4]  # "1" four times: positions instead
    pictures = [Path(d["picture"]).relative_to(out).as_posix() for d in lines]
    assert pictures == ["a/1_det.png", "a/1_2_det.png", "b/1_det.png", "b/c/1_det.png"]
    assert all((out / p).is_file() for p in pictures)
    results = json.loads((out / "detections.json").read_text())
    assert {r["image_id"] for r in results} <= {1, 2, 3, 4}
    assert sum(len(d["detections"]) for d in lines) == len(results)
    assert detect_command(_args(checkpoint, [str(tmp_path / "in" / "**" / "*.png")], tmp_path / "g")) == 0
    assert len(list((tmp_path / "g").rglob("*_det.png"))) == 3
    with pytest.raises(UserError, match="matches no file"):
        detect_command(_args(checkpoint, [str(tmp_path / "in" / "*.gif")], tmp_path / "g2"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no image files"):
        detect_command(_args(checkpoint, [tmp_path / "empty"], tmp_path / "g2"))


def test_a_checkpoint_of_another_version_is_one_line(checkpoint, tmp_path):
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["vislab"]["num_classes"] = 9  # heads of another size than the saved weights
    torch.save(ckpt, tmp_path / "other.ckpt")
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(img)
    with pytest.raises(UserError, match=r"other.ckpt does not fit this vislab's detector \(RuntimeError"):
        detect_command(_args(tmp_path / "other.ckpt", [img], tmp_path / "o"))
