"""``vislab change IMG1 IMG2`` (``vislab.commands.change``): JSON output on pairs of generated textures (another
kind of image than the training photos), every method, the network at its training size with estimates in the
input's pixels, the overlay, and one-line errors."""

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vislab.commands.change import change_command, load_change_net
from vislab.data.pairs import render_pair
from vislab.errors import UserError
from vislab.models.change import ChangeNet


def texture(seed: int, side: int = 400) -> np.ndarray:
    """A procedural texture: random oriented gratings, smoothed noise and a few discs, in [0.1, 0.9]."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float64)
    img = gaussian_filter(rng.normal(size=(side, side)), 2.5) * 4
    for _ in range(5):
        th, f, ph = rng.uniform(0, np.pi), rng.uniform(0.02, 0.12), rng.uniform(0, 2 * np.pi)
        img += 0.5 * np.sin(2 * np.pi * f * (xx * np.cos(th) + yy * np.sin(th)) + ph)
    for _ in range(12):
        cx, cy, r = rng.uniform(0, side), rng.uniform(0, side), rng.uniform(4, 20)
        img += 1.5 * ((xx - cx) ** 2 + (yy - cy) ** 2 < r * r)
    img = (img - img.min()) / (img.max() - img.min())
    return (0.1 + 0.8 * img).astype(np.float32)


def texture_pair(folder: Path, seed: int, dx: float, dy: float, s: float, *, size: int = 128,
                 shape: tuple[int, int] | None = None) -> tuple[Path, Path]:
    """Two PNG files: a crop of a texture and the same crop changed by (dx, dy, s) in the convention."""
    src = texture(seed)
    a, b = render_pair(src, (200.0, 200.0), dx=dx, dy=dy, scale=s, size=size)
    if shape is not None:  # a non-square pair: crop the rows (the centre moves by the same amount in both)
        h, w = shape
        a, b = a[(size - h) // 2:(size - h) // 2 + h, :w], b[(size - h) // 2:(size - h) // 2 + h, :w]
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / f"tex{seed}_a.png", folder / f"tex{seed}_b.png"
    for p, img in zip(paths, (a, b)):
        Image.fromarray(np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)).save(p)
    return paths


def _run(capsys, a, b, **kw) -> dict:
    args = argparse.Namespace(img1=str(a), img2=str(b), method=kw.get("method"), checkpoint=kw.get("checkpoint"),
                              json=kw.get("json", True), out=kw.get("out") or str(Path(a).parent / "change-out"))
    assert change_command(args) == 0
    out = capsys.readouterr().out
    return json.loads(out) if args.json else out


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A checkpoint written by a tiny real run of the experiment (64 px, one epoch)."""
    from vislab.experiments.change_detection import ChangeDetection
    from vislab.protocol.runner import RunOptions, run_experiment

    exp = ChangeDetection()
    out = tmp_path_factory.mktemp("cli") / "run"
    tiny = {"image_size": 64, "max_shift": 8.0, "min_shift": 2.0, "widths": (8, 8, 16, 16), "hidden": 32,
            "epochs": 1, "n_train": 32, "n_val": 8, "n_test": 8, "batch_size": 16, "examples": 1}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("vislab.protocol.runner.get_experiment", lambda name: exp)
        summary = run_experiment(RunOptions(name="change-detection", out=str(out), overrides=tiny))
    path = Path(summary["checkpoint"])
    return path if path.is_absolute() else out / path  # paths inside a run folder are relative to it


@pytest.fixture(scope="module")
def constant_checkpoint(tmp_path_factory):
    """A network whose answer is fixed (normalised dx 0.5, dy −0.25, log s 0.2·log 1.3, type both), saved in the
    experiment's checkpoint format: shows at which size the network runs and how estimates come back."""
    torch.manual_seed(0)
    net = ChangeNet(image_size=64, max_shift=8.0, max_scale=1.3, arch="stacked", widths=(8, 8, 8, 8), hidden=16)
    with torch.no_grad():
        for head, bias in ((net.reg, [0.5, -0.25, 0.2]), (net.cls, [0.0, 0.0, 0.0, 5.0])):
            head.weight.zero_()
            head.bias.copy_(torch.tensor(bias))
    meta = {"task": "change-detection", "model": net.config(), "image_size": 64, "shift_threshold": 1.0,
            "scale_threshold": math.log(1.08) / 2}
    path = tmp_path_factory.mktemp("const") / "const.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}, "vislab": meta}, path)
    return path


@pytest.mark.parametrize("dx, dy, s, kind", [(5.5, -3.25, 1.0, "shift"), (0.0, 0.0, 1.2, "scale"),
                                             (-4.0, 6.0, 0.85, "both"), (0.0, 0.0, 1.0, "none")])
def test_classical_methods_on_texture_pairs(tmp_path, capsys, dx, dy, s, kind):
    a, b = texture_pair(tmp_path, 1, dx, dy, s)
    fm = _run(capsys, a, b, method="fourier-mellin", out=tmp_path / "ov")
    assert set(fm) == {"dx", "dy", "scale", "change"}
    assert fm["scale"] == pytest.approx(s, rel=0.02) and fm["change"] == kind
    assert math.hypot(fm["dx"] - dx, fm["dy"] - dy) < 0.5
    pc = _run(capsys, a, b, method="phase")
    assert pc["scale"] == 1.0
    if s == 1.0:
        assert math.hypot(pc["dx"] - dx, pc["dy"] - dy) < 0.3 and pc["change"] == kind
    assert (tmp_path / "ov" / "tex1_a_tex1_b_change.png").exists()


def test_default_method_and_text_output(tmp_path, capsys, tiny_checkpoint):
    a, b = texture_pair(tmp_path, 2, 4.0, 2.0, 1.0)
    text = _run(capsys, a, b, json=False, out=tmp_path / "ov")
    assert "method fourier-mellin" in text and "change shift" in text and "dx +4." in text
    assert "rotation +0." in text or "rotation -0." in text  # reported, outside the convention
    same = _run(capsys, a, b, method="fourier_mellin")  # the experiment's spelling of the method
    assert same["change"] == "shift" and same["dx"] == pytest.approx(4.0, abs=0.5)
    text = _run(capsys, a, b, json=False, checkpoint=tiny_checkpoint, out=tmp_path / "ov")
    assert "method hybrid" in text


def test_net_and_hybrid_with_a_checkpoint_from_a_tiny_run(tmp_path, capsys, tiny_checkpoint):
    a, b = texture_pair(tmp_path, 3, -5.0, 3.5, 1.0, size=96)
    for method in ("net", "hybrid"):
        res = _run(capsys, a, b, method=method, checkpoint=tiny_checkpoint, out=tmp_path / "ov")
        assert set(res) == {"dx", "dy", "scale", "change"} and all(math.isfinite(res[k]) for k in ("dx", "dy", "scale"))
        assert res["change"] in ("none", "shift", "scale", "both")
    # the hybrid's shift comes from phase correlation at the input's size: right even with a barely trained net
    res = _run(capsys, a, b, method="hybrid", checkpoint=tiny_checkpoint)
    assert math.hypot(res["dx"] + 5.0, res["dy"] - 3.5) < 0.5, res


def test_network_runs_at_its_training_size_and_answers_in_input_pixels(tmp_path, capsys, constant_checkpoint):
    model, meta = load_change_net(constant_checkpoint)
    assert model.image_size == 64
    a, b = texture_pair(tmp_path, 4, 0.0, 0.0, 1.0, size=128, shape=(96, 128))  # 128 wide, 96 high
    res = _run(capsys, a, b, method="net", checkpoint=constant_checkpoint)
    # normalised 0.5 · max_shift 8 = 4 px at 64 px -> 8 px at 128 px wide; −0.25 · 8 = −2 px at 64 -> −3 px at 96
    assert res["dx"] == pytest.approx(8.0, abs=1e-4) and res["dy"] == pytest.approx(-3.0, abs=1e-4)
    assert res["scale"] == pytest.approx(math.exp(0.2 * math.log(1.3)), rel=1e-5) and res["change"] == "both"


def test_errors_are_one_line_user_errors(tmp_path, capsys, constant_checkpoint):
    a, b = texture_pair(tmp_path, 5, 2.0, 1.0, 1.0)
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((40, 128), np.uint8)).save(small)
    other = tmp_path / "other.png"
    Image.fromarray(np.zeros((128, 100), np.uint8)).save(other)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    not_ckpt = tmp_path / "x.ckpt"
    torch.save({"state_dict": {}}, not_ckpt)
    cases = [
        (dict(img2=other), "must have the same size"),
        (dict(img2=tmp_path / "missing.png"), "does not exist"),
        (dict(img2=broken), "cannot read image"),
        (dict(img1=small, img2=small), "at least 64×64"),
        (dict(method="net"), "needs --checkpoint"),
        (dict(method="hybrid"), "needs --checkpoint"),
        (dict(method="sift"), "--method must be one of"),
        (dict(checkpoint=tmp_path / "nope.ckpt"), "checkpoint .* does not exist"),
        (dict(checkpoint=not_ckpt), "not a checkpoint of the change-detection experiment"),
    ]
    for kw, match in cases:
        args = argparse.Namespace(img1=str(kw.get("img1", a)), img2=str(kw.get("img2", b)), method=kw.get("method"),
                                  checkpoint=str(kw["checkpoint"]) if "checkpoint" in kw else None, json=True,
                                  out=str(tmp_path / "ov"))
        with pytest.raises(UserError, match=match) as err:
            change_command(args)
        assert "\n" not in str(err.value)


# -- images as they are, textureless pairs, many pairs in one process ---------------------------------------------


def test_a_gray_image_and_its_16_bit_copy_are_the_same_picture(tmp_path, capsys):
    a, _ = texture_pair(tmp_path, 6, 0.0, 0.0, 1.0)
    g = np.asarray(Image.open(a))
    sixteen = tmp_path / "a16.png"
    Image.fromarray(g.astype(np.uint16) * 257).save(sixteen)  # mode I;16, which convert("L") clipped to white
    for method in ("phase", "fourier-mellin"):
        res = _run(capsys, a, sixteen, method=method)
        assert res["change"] == "none" and abs(res["dx"]) < 0.05 and abs(res["dy"]) < 0.05, (method, res)
        assert res["scale"] == pytest.approx(1.0, abs=1e-3)


def test_no_texture_to_register(tmp_path, capsys):
    flat = np.full((96, 96), 128, np.uint8)
    yy, xx = np.mgrid[0:96, 0:96]
    cases = {"flat": flat, "ramp": (40 + xx).astype(np.uint8), "edge": np.where(xx < 48, 60, 180).astype(np.uint8)}
    for name, img in cases.items():
        p = tmp_path / f"{name}.png"
        Image.fromarray(img).save(p)
        for method in ("phase", "fourier-mellin"):
            args = argparse.Namespace(img1=str(p), img2=str(p), method=method, checkpoint=None, json=True,
                                      out=str(tmp_path / "ov"))
            with pytest.raises(UserError, match="no texture to register in .*" + name) as err:
                change_command(args)
            assert ("it is flat" in str(err.value)) == (name == "flat") and "\n" not in str(err.value)
    # a faint texture above the rounding floor still registers: a quarter of a gray level of fixed noise, shifted
    rng = np.random.default_rng(3)
    big = np.round((0.5 + rng.normal(0, 0.25 / 255, (110, 110))) * 255).astype(np.uint8)
    Image.fromarray(big[5:101, 5:101]).save(tmp_path / "faint_a.png")
    Image.fromarray(big[3:99, 2:98]).save(tmp_path / "faint_b.png")
    res = _run(capsys, tmp_path / "faint_a.png", tmp_path / "faint_b.png", method="phase")
    assert (res["dx"], res["dy"], res["change"]) == (3.0, 2.0, "shift")


def test_many_pairs_in_one_process(tmp_path, capsys):
    """--pairs DIR: NAME_1/NAME_2 in subfolders with equal names get distinct overlays; one JSON line per pair,
    each overlay written before its line; a flat pair fails alone, the command exits 2 with one counting line."""
    src = tmp_path / "pairs"
    truth = {}
    for k, (sub, dx, dy) in enumerate((("day1", 3.0, -2.0), ("day2", -1.5, 4.0), ("day2/cam", 0.0, 0.0))):
        a, b = texture_pair(tmp_path / "tmp", 10 + k, dx, dy, 1.0)
        (src / sub).mkdir(parents=True, exist_ok=True)
        a.rename(src / sub / "scene_1.png")
        b.rename(src / sub / "scene_2.png")
        truth[str(src / sub / "scene_1.png")] = (dx, dy)
    out = tmp_path / "out"
    args = argparse.Namespace(img1=None, img2=None, pairs=str(src), method="phase", checkpoint=None, json=True,
                              out=str(out))
    assert change_command(args) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 3 and {d["img1"] for d in lines} == set(truth)
    for d in lines:
        dx, dy = truth[d["img1"]]
        assert math.hypot(d["dx"] - dx, d["dy"] - dy) < 0.3 and Path(d["overlay"]).is_file()
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.png")) == [
        "day1/scene_change.png", "day2/cam/scene_change.png", "day2/scene_change.png"]
    # a list file: relative paths, comments; the same file twice gets two overlays
    Image.fromarray(np.full((96, 96), 90, np.uint8)).save(tmp_path / "flat.png")
    listing = tmp_path / "pairs.txt"
    listing.write_text("# img1 img2\npairs/day1/scene_1.png pairs/day1/scene_2.png\n\n"
                       "pairs/day1/scene_1.png pairs/day1/scene_2.png  # again\nflat.png flat.png\n")
    args.pairs, args.out = str(listing), str(tmp_path / "out2")
    assert change_command(args) == 2
    out_text, err = capsys.readouterr()
    lines = [json.loads(line) for line in out_text.splitlines()]
    assert [("error" in d) for d in lines] == [False, False, True] and "no texture" in lines[2]["error"]
    assert lines[0]["overlay"] != lines[1]["overlay"] and all(Path(d["overlay"]).is_file() for d in lines[:2])
    assert err.strip().startswith("vislab: error: 1 of 3 pairs failed (first: ") and len(err.strip().splitlines()) == 1
    for bad, match in (("nope.png flat.png", "line 1: image .*nope.png does not exist"),
                       ("flat.png", r"line 1: expected 'IMG1 IMG2'")):
        listing.write_text(bad + "\n")
        with pytest.raises(UserError, match=match):
            change_command(args)
    (src / "day1" / "scene_2.png").unlink()
    args.pairs = str(src)
    with pytest.raises(UserError, match=r"scene_1.png has no partner scene_2\.\*"):
        change_command(args)
    args.img1, args.img2 = str(tmp_path / "flat.png"), str(tmp_path / "flat.png")
    with pytest.raises(UserError, match="either IMG1 IMG2 or --pairs"):
        change_command(args)


def test_a_checkpoint_that_does_not_fit_the_network_is_one_line(tmp_path, constant_checkpoint):
    ckpt = torch.load(constant_checkpoint, weights_only=True)
    ckpt["state_dict"] = {k: v for k, v in list(ckpt["state_dict"].items())[:-2]}  # weights of another version
    torch.save(ckpt, tmp_path / "old.ckpt")
    with pytest.raises(UserError, match=r"old.ckpt does not fit this vislab's change-detection network \(Runtime"):
        load_change_net(tmp_path / "old.ckpt")
    ckpt["vislab"]["model"] = {**ckpt["vislab"]["model"], "no_such_argument": 1}
    torch.save(ckpt, tmp_path / "odd.ckpt")
    with pytest.raises(UserError, match=r"odd.ckpt does not fit .*TypeError"):
        load_change_net(tmp_path / "odd.ckpt")
