"""``vislab segment --checkpoint CKPT IMAGE [--point x,y[,1|0] ...] [--box x0,y0,x1,y1] [--multimask] [--out DIR]``:
the mask PNGs, overlays and predicted IoU from a sam-finetune checkpoint, prompts scaled exactly as the decoder
takes them; negative coordinates parse; bad prompts and missing files are one line and exit 2."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import run_cli
from vislab.commands.segment import parse_box, parse_point, segment_command, segment_image
from vislab.errors import UserError
from vislab.models.sam import load_finetuned, offline_box_sam


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A checkpoint in the format sam-finetune's Lightning module writes (decoder half as model.*, meta)."""
    torch.manual_seed(0)
    model = offline_box_sam(64, pretrained=True)
    path = tmp_path_factory.mktemp("segment") / "best.ckpt"
    meta = {"task": "sam-finetune", "kind": "offline", "model_type": None, "sam_checkpoint": None, "image_size": 64}
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.decoder.state_dict().items()}, "vislab": meta}, path)
    return path, model


@pytest.fixture()
def image(tmp_path):
    path = tmp_path / "scene.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)).save(path)
    return path


def test_writes_mask_and_overlay(checkpoint, image, tmp_path):
    ckpt, model = checkpoint
    out = tmp_path / "out"
    assert segment_command(SimpleNamespace(checkpoint=str(ckpt), image=str(image), box="10,5,50,40", out=str(out))) == 0
    mask = np.asarray(Image.open(out / "scene_mask.png"))
    assert mask.shape == (48, 80) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
    over = Image.open(out / "scene_overlay.png")
    assert over.size == (80, 48) and over.mode == "RGB"
    # the mask is the model's logits > 0, resized back to the image
    loaded = load_finetuned(ckpt)
    for a, b in zip(loaded.decoder.state_dict().values(), model.decoder.state_dict().values()):
        assert torch.equal(a, b)
    logits, iou_pred = segment_image(loaded, Image.open(image), (10.0, 5.0, 50.0, 40.0))
    assert logits.shape == (1, 48, 80) and iou_pred.shape == (1,)
    np.testing.assert_array_equal(mask > 0, logits[0] > 0)
    # = the experiment's model on the image resized to 64 x 64 (uint8) with the box scaled by (64/80, 64/48)
    x = _resized(image)
    with torch.no_grad():
        ref = model(x, torch.tensor([[10 * 0.8, 5 * 64 / 48, 50 * 0.8, 40 * 64 / 48]]))
        ref = torch.nn.functional.interpolate(ref, (48, 80), mode="bilinear", align_corners=False)[0, 0]
    sure = ref.abs() > 1e-3
    np.testing.assert_array_equal((mask > 0)[sure.numpy()], (ref > 0)[sure].numpy())
    facts = json.loads((out / "scene_masks.json").read_text())
    assert facts["box"] == [10, 5, 50, 40] and facts["points"] == [] and len(facts["masks"]) == 1
    assert facts["masks"][0]["predicted_iou"] == pytest.approx(float(iou_pred[0]), abs=1e-6)


def _resized(image_path):
    rgb = torch.from_numpy(np.array(Image.open(image_path).convert("RGB"))).permute(2, 0, 1)[None].float()
    x = torch.nn.functional.interpolate(rgb, (64, 64), mode="bilinear", align_corners=False, antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8)


def test_points_box_and_multimask(checkpoint, image, tmp_path, capsys):
    """Points are pixel column/row: pixel (x, y) is the decoder's continuous point ((x + 0.5) s_x, (y + 0.5) s_y);
    --multimask writes three masks and overlays with SAM's predicted IoU; the overlay shows green positive and
    red negative points."""
    ckpt, model = checkpoint
    out = tmp_path / "pts"
    args = SimpleNamespace(checkpoint=str(ckpt), image=str(image), box=None, point=["30,20", "60,10,0"],
                           multimask=False, out=str(out))
    assert segment_command(args) == 0
    mask = np.asarray(Image.open(out / "scene_mask.png")) > 0
    x = _resized(image)
    sx, sy = 64 / 80, 64 / 48
    pts = torch.tensor([[[30.5 * sx, 20.5 * sy], [60.5 * sx, 10.5 * sy]]])
    with torch.no_grad():
        ref = model.decoder(model.encoder(x), points=pts, point_labels=torch.tensor([[1, 0]]))
        ref = torch.nn.functional.interpolate(ref, (48, 80), mode="bilinear", align_corners=False)[0, 0]
    sure = (ref.abs() > 1e-3).numpy()
    np.testing.assert_array_equal(mask[sure], (ref > 0).numpy()[sure])
    over = np.asarray(Image.open(out / "scene_overlay.png"))
    assert tuple(over[20, 30]) == (40, 220, 40) and tuple(over[10, 60]) == (230, 30, 30)
    # box + points, three candidates
    multi = tmp_path / "multi"
    args = SimpleNamespace(checkpoint=str(ckpt), image=str(image), box="10,5,50,40", point=["30,20"],
                           multimask=True, out=str(multi))
    capsys.readouterr()
    assert segment_command(args) == 0
    printed = capsys.readouterr().out
    facts = json.loads((multi / "scene_masks.json").read_text())
    assert [m["mask"] for m in facts["masks"]] == ["scene_mask_0.png", "scene_mask_1.png", "scene_mask_2.png"]
    assert all((multi / m["overlay"]).exists() for m in facts["masks"])
    ious = [m["predicted_iou"] for m in facts["masks"]]
    assert facts["best"] == int(np.argmax(ious)) and printed.count("predicted IoU") == 3
    _, iou_pred = segment_image(load_finetuned(ckpt), Image.open(image), (10.0, 5.0, 50.0, 40.0), [(30.0, 20.0, 1)],
                                multimask=True)
    np.testing.assert_allclose(ious, iou_pred, atol=1e-6)


def test_negative_coordinates_parse(checkpoint, image, tmp_path):
    ckpt, _ = checkpoint
    ok = run_cli("segment", "--checkpoint", str(ckpt), str(image), "--box=-5,0,10,10", "--point=3,4",
                 "--out", str(tmp_path / "neg"))
    assert ok.returncode == 0, ok.stderr
    assert "box clipped to the 80×48 image: 0,0,10,10" in ok.stdout
    assert json.loads((tmp_path / "neg" / "scene_masks.json").read_text())["box"] == [0, 0, 10, 10]
    bad = run_cli("segment", "--checkpoint", str(ckpt), str(image), "--point=-3,4", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "--point -3,4 lies outside the 80×48 image" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    none = run_cli("segment", "--checkpoint", str(ckpt), str(image), "--out", str(tmp_path / "x"))
    assert none.returncode == 2 and "at least one prompt" in none.stderr and len(none.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_cli_end_to_end_and_errors(checkpoint, image, tmp_path):
    ckpt, _ = checkpoint
    ok = run_cli("segment", "--checkpoint", str(ckpt), str(image), "--box", "1,2,30,40", "--out", str(tmp_path / "o"))
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "o" / "scene_mask.png").exists() and (tmp_path / "o" / "scene_overlay.png").exists()
    r = run_cli("segment", "--checkpoint", str(ckpt), str(image), "--box", "10,2,5,40", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "x1 > x0" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("box, where, msg", [
    ("1,2,3", "ok", "four numbers"),
    ("10,2,5,40", "ok", "x1 > x0"),
    ("100,0,120,40", "ok", "lies outside the 80×48 image"),
    ("1,1,9,9", "no-checkpoint", "does not exist"),
    ("1,1,9,9", "no-image", "not found"),
])
def test_bad_input_is_a_user_error(checkpoint, image, tmp_path, box, where, msg):
    ckpt, _ = checkpoint
    args = SimpleNamespace(checkpoint=str(tmp_path / "none.ckpt") if where == "no-checkpoint" else str(ckpt),
                           image=str(tmp_path / "none.png") if where == "no-image" else str(image), box=box,
                           out=str(tmp_path / "x"))
    with pytest.raises(UserError, match=msg) as e:
        segment_command(args)
    assert "\n" not in str(e.value) and not (tmp_path / "x").exists()


def test_parse_point():
    assert parse_point("3,4") == (3.0, 4.0, 1) and parse_point(" 3.5, -4 ,0") == (3.5, -4.0, 0)
    assert parse_point("1,2,1") == (1.0, 2.0, 1)
    for bad, msg in [("1", "must be x,y"), ("a,b", "must be x,y"), ("1,2,3,4", "must be x,y"),
                     ("1,2,2", "label must be 1"), ("1,nan", "must be x,y")]:
        with pytest.raises(UserError, match=msg) as e:
            parse_point(bad)
        assert repr(bad) in str(e.value)


def test_parse_box_and_wrong_checkpoint(tmp_path):
    assert parse_box(" 1, 2.5,3,4 ") == (1.0, 2.5, 3.0, 4.0)
    assert parse_box("-5,0,10,10") == (-5.0, 0.0, 10.0, 10.0)
    with pytest.raises(UserError, match="four numbers"):
        parse_box("a,b,c,d")
    with pytest.raises(UserError, match="y1 > y0"):
        parse_box("0,5,10,5")
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}, "vislab": {"task": "detection"}}, other)
    with pytest.raises(UserError, match="not a checkpoint of the sam-finetune experiment"):
        load_finetuned(other)


def test_sam_checkpoint_flag_reaches_the_loader():
    """`--sam-checkpoint` (for checkpoints trained on SAM's own encoder) is parsed into args.sam_checkpoint."""
    from vislab.cli import build_parser

    args = build_parser().parse_args(["segment", "--checkpoint", "c.ckpt", "img.png", "--box", "1,2,3,4",
                                      "--sam-checkpoint", "sam_vit_b_01ec64.pth"])
    assert args.sam_checkpoint == "sam_vit_b_01ec64.pth"
    assert build_parser().parse_args(["segment", "--checkpoint", "c", "i", "--box", "1,2,3,4"]).sam_checkpoint is None
    args = build_parser().parse_args(["segment", "--checkpoint", "c", "i", "--point=-3,4", "--point", "5,6,0",
                                      "--box=-5,0,10,10", "--multimask"])
    assert args.point == ["-3,4", "5,6,0"] and args.box == "-5,0,10,10" and args.multimask


def test_untrained_outputs_are_named(checkpoint, image, tmp_path, capsys):
    """A checkpoint that never trained its IoU head (this fixture's metadata predates the key) or whose multimask
    outputs are untrained (a decoder built from scratch) says so in a note line and in the JSON; a checkpoint
    whose IoU head trained gets no IoU note."""
    ckpt, model = checkpoint
    args = SimpleNamespace(checkpoint=str(ckpt), image=str(image), box="10,5,50,40", point=None, multimask=True,
                           out=str(tmp_path / "a"))
    capsys.readouterr()
    assert segment_command(args) == 0
    notes = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("note: ")]
    assert len(notes) == 2 and "IoU head was never trained" in notes[0] and "multimask outputs were never" in notes[1]
    facts = json.loads((tmp_path / "a" / "scene_masks.json").read_text())
    assert facts["iou_head_trained"] is False and facts["multimask_outputs"] == "untrained"
    trained = tmp_path / "trained.ckpt"
    meta = {"task": "sam-finetune", "kind": "offline", "model_type": None, "sam_checkpoint": None, "image_size": 64,
            "iou_head_trained": True, "multimask_outputs": "untrained"}
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.decoder.state_dict().items()}, "vislab": meta},
               trained)
    args = SimpleNamespace(checkpoint=str(trained), image=str(image), box="10,5,50,40", point=None, multimask=False,
                           out=str(tmp_path / "b"))
    assert segment_command(args) == 0
    assert "note: " not in capsys.readouterr().out
    assert json.loads((tmp_path / "b" / "scene_masks.json").read_text())["iou_head_trained"] is True
