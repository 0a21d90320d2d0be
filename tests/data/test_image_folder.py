import json

import numpy as np
import pytest
from PIL import Image

from vislab.data.image_folder import scan_image_folder, stratified_split, write_manifest
from vislab.data.shapes import SHAPE_CLASSES, write_shapes_folder
from vislab.errors import UserError


def _folder(tmp_path, counts):
    rng = np.random.default_rng(0)
    for cls, n in counts.items():
        (tmp_path / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    return tmp_path


def test_scan_skips_corrupt_and_ignores_non_images(tmp_path):
    root = _folder(tmp_path, {"a": 3, "b": 4})
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (root / "b" / "notes.txt").write_text("hello")
    (root / "b" / "truncated.png").write_bytes((root / "b" / "0.png").read_bytes()[:40])
    scan = scan_image_folder(root)
    assert scan.classes == ["a", "b"]
    assert scan.counts() == {"a": 3, "b": 4}
    assert sorted(p for p, _ in scan.skipped) == ["a/broken.jpg", "b/truncated.png"]
    assert scan.ignored == 1


def test_scan_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        scan_image_folder(tmp_path / "nope")
    with pytest.raises(UserError, match="has no class subfolders"):
        scan_image_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="one class subfolder .'empty'.; a classifier needs at least two classes"):
        scan_image_folder(tmp_path)
    (tmp_path / "empty2").mkdir()
    with pytest.raises(UserError, match="holds no readable images"):
        scan_image_folder(tmp_path)
    (tmp_path / "empty2").rmdir()
    _folder(tmp_path, {"a": 3, "b": 2})
    with pytest.raises(UserError, match=r"at least 3 readable images.*'b' has 2, 'empty' has 0"):
        scan_image_folder(tmp_path)


def test_stratified_split_is_deterministic_and_stratified():
    labels = [0] * 50 + [1] * 30 + [2] * 3
    a = stratified_split(labels, seed=1)
    b = stratified_split(labels, seed=1)
    c = stratified_split(labels, seed=2)
    assert a == b and a != c
    all_idx = sorted(a["train"] + a["val"] + a["test"])
    assert all_idx == list(range(len(labels)))
    for split, expected in (("train", (40, 24, 1)), ("val", (5, 3, 1)), ("test", (5, 3, 1))):
        got = tuple(sum(1 for i in a[split] if labels[i] == k) for k in range(3))
        assert got == expected, (split, got)


def test_manifest_and_generated_shapes(tmp_path):
    root = write_shapes_folder(tmp_path / "shapes", per_class=4, size=64, seed=3, corrupt=1)
    scan = scan_image_folder(root)
    assert scan.classes == list(SHAPE_CLASSES)
    assert len(scan.skipped) == 1
    boxes = json.loads((root / "boxes.json").read_text())
    for rel, _ in scan.items:
        x0, y0, x1, y1 = boxes[rel]
        assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
    split = stratified_split([y for _, y in scan.items], seed=0)
    write_manifest(tmp_path / "split.json", scan, split, seed=0)
    doc = json.loads((tmp_path / "split.json").read_text())
    assert doc["classes"] == list(SHAPE_CLASSES)
    assert sum(len(v) for v in doc["splits"].values()) == len(scan.items)
    # generation is deterministic: same seed, same pixels
    again = write_shapes_folder(tmp_path / "again", per_class=4, size=64, seed=3, corrupt=1)
    assert (root / "star" / "0002.png").read_bytes() == (again / "star" / "0002.png").read_bytes()


def test_a_class_of_undecodable_files_is_named(tmp_path):
    root = _folder(tmp_path, {"cats": 3})
    (root / "dogs").mkdir()
    for i in range(4):
        (root / "dogs" / f"{i}.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(UserError, match=r"'dogs' has 0 \(4 file\(s\) that do not decode, e.g. dogs/0.jpg\)") as err:
        scan_image_folder(root)
    assert "\n" not in str(err.value)


def test_load_rgb_reads_images_as_they_are(tmp_path):
    """16-bit gray and EXIF-rotated files through the one reader: scaled, oriented."""
    from vislab.data.image_folder import load_rgb

    g = (np.arange(16 * 16).reshape(16, 16) % 256).astype(np.uint8)
    Image.fromarray(g.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    Image.fromarray(g).save(tmp_path / "g8.png")
    assert np.array_equal(load_rgb(tmp_path / "g16.png", 16).numpy(), load_rgb(tmp_path / "g8.png", 16).numpy())
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = 255  # left half white as stored; the tag rotates it by 90°: top half white as shown
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    x = load_rgb(tmp_path / "rot.jpg", 20).float().mean(0)  # (S, S)
    assert x[:8].mean() > 200 and x[-8:].mean() < 50
