"""`vislab detect --checkpoint CKPT IMAGE...` on a checkpoint of a tiny detection run."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

from vislab.commands.detect import detect_command
from vislab.errors import UserError
from vislab.experiments.detection import Detection, load_detector_checkpoint
from vislab.experiments.runner import RunOptions, run_experiment

TINY = {"variants": ("vislab",), "image_size": 64, "epochs": 1, "batch_size": 4, "n_train": 8, "n_val": 4,
        "n_test": 4, "rpn_pre_nms_top_n_train": 200, "rpn_post_nms_top_n_train": 50, "rpn_pre_nms_top_n_test": 100,
        "rpn_post_nms_top_n_test": 30, "rpn_batch_size_per_image": 32, "box_batch_size_per_image": 16,
        "representation_size": 32, "show_images": 1, "box_score_thresh": 0.0}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("detect") / "run"
    exp = Detection()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("vislab.experiments.runner.get_experiment", lambda name: exp)
        run_experiment(RunOptions(name="detection", out=str(out), overrides=TINY))
    return out / "checkpoints" / "vislab" / "best.ckpt"


def _args(checkpoint, images, out, score=0.0):
    return argparse.Namespace(checkpoint=str(checkpoint), images=[str(p) for p in images], score=score, out=str(out))


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
    with pytest.raises(UserError, match="cannot read checkpoint"):
        detect_command(_args(junk, [img], tmp_path / "o"))
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}, "vislab": {"task": "classification"}}, other)
    with pytest.raises(UserError, match="not a checkpoint of the detection experiment"):
        detect_command(_args(other, [img], tmp_path / "o"))
    with pytest.raises(UserError, match="--score"):
        detect_command(_args(checkpoint, [img], tmp_path / "o", score=1.5))
    assert not (tmp_path / "o").exists()  # nothing is written when the input is bad
