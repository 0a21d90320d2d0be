"""vislab.data.masks: images/ + masks/ folders (pairing, skipping, mask formats, prompt modes), the generated
scenes (deterministic, non-box shapes), box jitter, the split, and joint v2 augmentation."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vislab.data.masks import (
    SCENE_SHAPES,
    JointAugment,
    instances_from_labels,
    jitter_boxes,
    jitter_for_size,
    load_mask_folder,
    mask_boxes,
    pair_mask_folder,
    read_mask,
    render_scene,
    split_samples,
    write_scene_folder,
)
from vislab.errors import UserError


def _rgb(seed: int, size=(40, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))


def _two_blobs(value: int, size=(40, 48)) -> np.ndarray:
    m = np.zeros(size, np.uint8)
    m[4:14, 5:15] = value
    m[25:35, 30:44] = value
    return m


@pytest.fixture()
def folder(tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    _rgb(0).save(root / "images" / "a.png")
    Image.fromarray(_two_blobs(255)).save(root / "masks" / "a.png")  # 0/255, two components
    _rgb(1).save(root / "images" / "b.jpg", quality=95)
    one = np.zeros((40, 48), np.uint8)
    one[10:30, 10:20] = 1
    Image.fromarray(one).save(root / "masks" / "b.bmp")  # 0/1 in another format
    _rgb(2).save(root / "images" / "c.png")  # no mask
    Image.fromarray(_two_blobs(255)).save(root / "masks" / "d.png")  # no image
    (root / "images" / "e.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")  # unreadable image
    Image.fromarray(_two_blobs(255)).save(root / "masks" / "e.png")
    _rgb(3).save(root / "images" / "f.png")
    (root / "masks" / "f.png").write_bytes(b"not an image at all")  # unreadable mask
    _rgb(4).save(root / "images" / "g.png")
    Image.fromarray(np.full((20, 20), 255, np.uint8)).save(root / "masks" / "g.png")  # wrong size
    _rgb(5).save(root / "images" / "h.png")
    Image.fromarray(np.zeros((40, 48), np.uint8)).save(root / "masks" / "h.png")  # no object
    (root / "masks" / "notes.txt").write_text("not an image; ignored")
    return root


def test_pairs_and_skips(folder):
    pairs, skipped = pair_mask_folder(folder)
    assert [p[0] for p in pairs] == ["a", "b", "e", "f", "g", "h"]
    reasons = dict(skipped)
    assert "no mask" in reasons["images/c.png"] and "no image" in reasons["masks/d.png"]
    data = load_mask_folder(folder, image_size=32, prompt="component")
    assert [s.stem for s in data.samples] == ["a", "b"]
    skipped = dict(data.skipped)
    assert set(skipped) == {"images/c.png", "masks/d.png", "images/e.png", "masks/f.png", "masks/g.png",
                            "masks/h.png"}
    assert "20×20" in skipped["masks/g.png"] and "no object" in skipped["masks/h.png"]
    a, b = data.samples
    assert a.image.shape == (3, 32, 32) and a.image.dtype == torch.uint8 and a.instances.shape == (32, 32)
    assert len(a.kinds) == 2 and len(b.kinds) == 1 and a.kinds == ["object", "object"] and not data.has_shapes


def test_component_vs_mask_prompts(folder):
    comp = load_mask_folder(folder, image_size=48, prompt="component").samples[0]
    whole = load_mask_folder(folder, image_size=48, prompt="mask").samples[0]
    assert int(comp.instances.max()) == 2 and int(whole.instances.max()) == 1
    assert torch.equal(comp.instances > 0, whole.instances > 0)
    with pytest.raises(UserError, match="prompt must be one of component, mask"):
        load_mask_folder(folder, image_size=48, prompt="pixel")


def test_no_usable_pair_is_one_line_user_error(tmp_path):
    root = tmp_path / "bad"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    _rgb(0).save(root / "images" / "x.png")
    Image.fromarray(_two_blobs(255)).save(root / "masks" / "y.png")
    (root / "images" / "z.png").write_bytes(b"junk")
    Image.fromarray(_two_blobs(255)).save(root / "masks" / "z.png")
    with pytest.raises(UserError, match="no usable image/mask pair") as e:
        load_mask_folder(root, image_size=32)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="does not exist"):
        load_mask_folder(tmp_path / "missing", image_size=32)
    (tmp_path / "only_images" / "images").mkdir(parents=True)
    with pytest.raises(UserError, match="no masks/ folder"):
        pair_mask_folder(tmp_path / "only_images")


def test_read_mask_formats(tmp_path):
    m = _two_blobs(255)
    Image.fromarray(m).save(tmp_path / "a.png")
    Image.fromarray(m // 255).save(tmp_path / "b.png")
    Image.fromarray(np.stack([m] * 3, -1)).save(tmp_path / "c.png")  # RGB 0/255
    Image.fromarray(m).save(tmp_path / "d.jpg", quality=70)  # lossy edges
    inst = _two_blobs(1)
    inst[25:35, 30:44] = 2
    Image.fromarray(inst).save(tmp_path / "e.png")
    for name in ("a.png", "b.png", "c.png"):
        np.testing.assert_array_equal(read_mask(tmp_path / name), (m > 0).astype(np.int64))
    jpg = read_mask(tmp_path / "d.jpg")
    assert set(np.unique(jpg)) <= {0, 1} and (jpg != (m > 0)).mean() < 0.02
    np.testing.assert_array_equal(read_mask(tmp_path / "e.png"), inst)


def test_instances_from_labels():
    lab = np.zeros((10, 10), int)
    lab[0:2, 0:2] = 1
    lab[5:9, 5:9] = 1
    lab[0, 9] = 1  # a 1-px speck
    lab[4, 0:3] = 3
    inst, src = instances_from_labels(lab, prompt="component", min_area=2)
    assert src == [1, 1, 3] and int(inst.max()) == 3 and inst[0, 9] == 0
    inst, src = instances_from_labels(lab, prompt="mask", min_area=2)
    assert src == [1, 3] and (inst == 1).sum() == 4 + 16 + 1
    diag = np.eye(4, dtype=int)  # 8-connected: one component
    assert instances_from_labels(diag, prompt="component")[1] == [1]
    with pytest.raises(ValueError, match="prompt must be one of"):
        instances_from_labels(lab, prompt="box")


def test_mask_boxes_continuous_convention():
    m = torch.zeros(2, 6, 8, dtype=torch.bool)
    m[0, 1:4, 2:7] = True
    assert mask_boxes(m).tolist() == [[2.0, 1.0, 7.0, 4.0], [0.0, 0.0, 0.0, 0.0]]
    with pytest.raises(ValueError, match=r"masks must be Tensor\[N, H, W\]"):
        mask_boxes(torch.zeros(6, 8))


def test_jitter_bounds_and_seed():
    assert jitter_for_size(1024) == 20.0 and jitter_for_size(256) == 5.0 and jitter_for_size((128, 64)) == 2.5
    boxes = torch.tensor([[10.0, 20.0, 30.0, 40.0], [0.0, 1.0, 64.0, 50.0]]).repeat(200, 1)
    out = jitter_boxes(boxes, image_size=(50, 64), max_shift=5.0, generator=torch.Generator().manual_seed(0))
    moved = (out - boxes) * torch.tensor([-1.0, -1.0, 1.0, 1.0])  # outward movement of each side
    assert (moved >= 0).all() and (moved <= 5.0 + 1e-6).all()
    assert (out[:, [0, 1]] >= 0).all() and (out[:, 2] <= 64).all() and (out[:, 3] <= 50).all()
    free = moved[0::2]  # the first box is far from the border: shifts use the whole range
    assert free.max() > 4.5 and free.min() < 0.5
    again = jitter_boxes(boxes, image_size=(50, 64), max_shift=5.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    assert torch.equal(jitter_boxes(boxes, image_size=(50, 64), max_shift=0.0), boxes)
    with pytest.raises(ValueError, match="max_shift must be >= 0"):
        jitter_boxes(boxes, image_size=(50, 64), max_shift=-1.0)
    with pytest.raises(ValueError, match=r"boxes must be Tensor\[N, 4\]"):
        jitter_boxes(torch.zeros(3, 5), image_size=(50, 64), max_shift=1.0)


def test_split_is_seeded_disjoint_and_90_10():
    s = split_samples(100, seed=3)
    assert len(s["test"]) == 10 and len(s["val"]) == 9 and len(s["train"]) == 81
    assert sorted(s["train"] + s["val"] + s["test"]) == list(range(100))
    assert s == split_samples(100, seed=3) and s != split_samples(100, seed=4)
    small = split_samples(3, seed=0)
    assert all(len(v) == 1 for v in small.values())
    with pytest.raises(ValueError, match="at least 3 images"):
        split_samples(2, seed=0)


def _flip_data():
    img = torch.randint(0, 256, (3, 32, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    inst = torch.zeros(32, 40, dtype=torch.int32)
    inst[2:10, 3:12] = 1
    inst[15:30, 20:38] = 2
    boxes = mask_boxes(torch.stack([inst == 1, inst == 2]))
    return img, inst, boxes


def test_v2_augmentation_moves_masks_and_boxes_with_the_image():
    img, inst, boxes = _flip_data()
    aug = JointAugment()
    kinds = set()
    for seed in range(24):
        a_img, a_inst, a_boxes = aug(img, inst, boxes, seed=seed)
        assert a_img.dtype == torch.uint8 and a_inst.shape == inst.shape
        assert torch.equal(mask_boxes(torch.stack([a_inst == 1, a_inst == 2])), a_boxes)
        assert sorted(torch.unique(a_inst).tolist()) == [0, 1, 2]
        kinds.add((torch.equal(a_inst, inst.flip(-1)), torch.equal(a_inst, inst.flip(-2)),
                   torch.equal(a_inst, inst)))
        again = aug(img, inst, boxes, seed=seed)
        assert all(torch.equal(x, y) for x, y in zip(again, (a_img, a_inst, a_boxes)))
    assert len(kinds) >= 3  # flips happen (and not always)
    hflip = JointAugment(hflip=1.0, vflip=0.0, brightness=0.0, contrast=0.0)
    h_img, h_inst, h_boxes = hflip(img, inst, boxes, seed=0)
    assert torch.equal(h_img, img.flip(-1)) and torch.equal(h_inst, inst.flip(-1))
    assert h_boxes.tolist() == [[40 - 12, 2, 40 - 3, 10], [40 - 38, 15, 40 - 20, 30]]
    color = JointAugment(hflip=0.0, vflip=0.0, brightness=0.5, contrast=0.5)
    c_img, c_inst, c_boxes = color(img, inst, boxes, seed=1)
    assert not torch.equal(c_img, img) and torch.equal(c_inst, inst) and torch.equal(c_boxes, boxes)


def test_generated_scenes_deterministic_and_not_boxes(tmp_path):
    from scipy import ndimage

    a = write_scene_folder(tmp_path / "a", num_images=4, size=64, seed=7)
    b = write_scene_folder(tmp_path / "b", num_images=4, size=64, seed=7)
    c = write_scene_folder(tmp_path / "c", num_images=4, size=64, seed=8)
    for sub in ("images/0000.png", "masks/0003.png", "shapes.json"):
        assert (a / sub).read_bytes() == (b / sub).read_bytes()
    assert (a / "images/0000.png").read_bytes() != (c / "images/0000.png").read_bytes()
    shapes = json.loads((a / "shapes.json").read_text())
    assert set(shapes) == {"0000", "0001", "0002", "0003"}
    data = load_mask_folder(a, image_size=64, prompt="component", min_area=1)
    assert data.has_shapes and not data.skipped
    for s in data.samples:  # every instance is exactly one connected component
        assert len(s.kinds) == len(shapes[s.stem]) and s.kinds == list(shapes[s.stem].values())
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(12):
        img, inst, kinds = render_scene(rng, 96, objects=(3, 4))
        assert img.shape == (96, 96, 3) and img.dtype == np.uint8 and 1 <= len(kinds) <= 4
        for k, kind in enumerate(kinds, start=1):
            m = inst == k
            ys, xs = np.nonzero(m)
            fill = m.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
            assert fill < 0.95, kind  # no object fills its box
            if kind == "ring":
                assert ndimage.binary_fill_holes(m).sum() > 1.15 * m.sum()  # it has a hole (inner radius >= 0.45)
            seen.add(kind)
    assert seen <= set(SCENE_SHAPES) and len(seen) >= 3
    # a reused folder is not rewritten
    stamp = (a / "images/0000.png").stat().st_mtime_ns
    write_scene_folder(a, num_images=4, size=64, seed=7)
    assert (a / "images/0000.png").stat().st_mtime_ns == stamp
