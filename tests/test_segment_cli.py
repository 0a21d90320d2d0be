"""``vislab segment --checkpoint CKPT IMAGE --box x0,y0,x1,y1 [--out DIR]``: the mask PNG and the overlay from a
sam-finetune checkpoint; bad boxes and missing files are one line and exit 2."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import run_cli
from vislab.commands.segment import parse_box, segment_command, segment_image
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
    logits = segment_image(loaded, Image.open(image), (10.0, 5.0, 50.0, 40.0))
    np.testing.assert_array_equal(mask > 0, logits > 0)


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
    ("0,0,81,40", "ok", "outside the 80×48 image"),
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


def test_parse_box_and_wrong_checkpoint(tmp_path):
    assert parse_box(" 1, 2.5,3,4 ") == (1.0, 2.5, 3.0, 4.0)
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
