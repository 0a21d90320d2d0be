"""Detection data: COCO-format folders, Pascal VOC 2007, embedded scenes, one code path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vislab.data.detection import (
    SCENE_CLASSES,
    VOC_CLASSES,
    CocoDetectionDataset,
    check_detection_source,
    collate_fn,
    load_detection_data,
    write_detection_scenes,
)
from vislab.errors import UserError

CATS = [{"id": 42, "name": "kite"}, {"id": 3, "name": "car"}, {"id": 17, "name": "cat"}]  # sparse, unsorted


def _image(path: Path, w: int, h: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def _coco_split(root: Path, split: str, first_id: int, *, year: str = "2017") -> dict:
    """Four images: normal boxes, a crowd box + a box crossing the border, a degenerate box, no boxes."""
    sizes = [(40, 30), (50, 60), (32, 32), (36, 28)]
    images, anns = [], []
    for k, (w, h) in enumerate(sizes):
        img_id = first_id + 10 * k  # sparse image ids
        name = f"{img_id:012d}.jpg" if k != 3 else f"{img_id:012d}.png"
        _image(root / f"{split}{year}" / name, w, h, img_id)
        images.append({"id": img_id, "file_name": name, "width": w, "height": h})
    a = [  # (image index, category id, bbox xywh, iscrowd)
        (0, 3, [2.0, 3.0, 10.0, 12.0], 0), (0, 42, [20.0, 5.0, 15.5, 20.0], 0),
        (1, 17, [5.0, 5.0, 30.0, 40.0], 1), (1, 3, [40.0, 50.0, 20.0, 20.0], 0),  # the second is clipped to 10×10
        (2, 42, [4.0, 4.0, 0.5, 10.0], 0), (2, 17, [10.0, 10.0, 8.0, 8.0], 0),  # the first is degenerate
        (2, 3, [31.5, 4.0, 5.0, 5.0], 0),  # degenerate after clipping (0.5 px wide inside the image)
    ]
    for n, (k, cid, box, crowd) in enumerate(a):
        anns.append({"id": first_id + n, "image_id": images[k]["id"], "category_id": cid, "bbox": box,
                     "area": box[2] * box[3], "iscrowd": crowd})
    d = {"images": images, "annotations": anns, "categories": CATS}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"instances_{split}{year}.json").write_text(json.dumps(d))
    return d


@pytest.fixture
def coco_root(tmp_path):
    root = tmp_path / "coco"
    _coco_split(root, "train", 1)
    _coco_split(root, "val", 1000)
    return root


def test_coco_items_sparse_ids_crowd_empty_and_degenerate(coco_root):
    ds = CocoDetectionDataset(coco_root / "annotations" / "instances_train2017.json", coco_root / "train2017")
    assert ds.category_ids == [3, 17, 42] and ds.label_names == ["car", "cat", "kite"] and ds.num_classes == 3
    assert ds.image_ids == [1, 11, 21, 31]
    assert ds.dropped_degenerate == 2 and ds.num_crowd == 1 and ds.num_empty == 1 and ds.num_boxes == 5
    x, t = ds[0]
    assert x.shape == (3, 30, 40) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert t["id"] == 1
    torch.testing.assert_close(t["boxes"], torch.tensor([[2.0, 3.0, 12.0, 15.0], [20.0, 5.0, 35.5, 25.0]]))
    assert t["labels"].tolist() == [1, 3] and t["labels"].dtype == torch.int64
    _, t = ds[1]
    assert t["iscrowd"].tolist() == [1, 0] and t["labels"].tolist() == [2, 1]
    torch.testing.assert_close(t["boxes"][1], torch.tensor([40.0, 50.0, 50.0, 60.0]))  # clipped to the image
    _, t = ds[2]
    assert t["labels"].tolist() == [2]  # only the valid box is left
    x, t = ds[3]  # an image without boxes is a negative, not dropped
    assert x.shape == (3, 28, 36) and t["boxes"].shape == (0, 4) and t["labels"].shape == (0,)


def test_coco_boxes_equal_torchvision_wrapper(coco_root):
    """Our xyxy boxes and labels equal torchvision's CocoDetection + v2 wrapper for the valid boxes."""
    from torchvision.datasets import CocoDetection, wrap_dataset_for_transforms_v2

    ann = coco_root / "annotations" / "instances_train2017.json"
    ours = CocoDetectionDataset(ann, coco_root / "train2017")
    ref = wrap_dataset_for_transforms_v2(CocoDetection(str(coco_root / "train2017"), str(ann)),
                                         target_keys=("boxes", "labels", "image_id"))
    for i in (0, 1):  # images without degenerate boxes (torchvision keeps those; it crashes on them later)
        _, t = ours[i]
        _, r = ref[i]
        assert r["image_id"] == t["id"]
        ref_boxes = torch.as_tensor(r["boxes"]).clamp(min=0)
        h, w = r["boxes"].canvas_size
        ref_boxes[:, 0::2] = ref_boxes[:, 0::2].clamp(max=w)
        ref_boxes[:, 1::2] = ref_boxes[:, 1::2].clamp(max=h)
        torch.testing.assert_close(t["boxes"], ref_boxes.float())
        assert [ours.category_ids[j - 1] for j in t["labels"].tolist()] == r["labels"].tolist()


def test_resize_rescales_boxes_with_the_image(coco_root):
    ds = CocoDetectionDataset(coco_root / "annotations" / "instances_train2017.json", coco_root / "train2017",
                              image_size=64)
    x, t = ds[1]  # 50 × 60 image
    assert x.shape == (3, 64, 64)
    torch.testing.assert_close(t["boxes"][0], torch.tensor([5 * 64 / 50, 5 * 64 / 60, 35 * 64 / 50, 45 * 64 / 60]))


def test_hflip_flips_image_and_boxes(coco_root):
    plain = CocoDetectionDataset(coco_root / "annotations" / "instances_train2017.json", coco_root / "train2017")
    flip = CocoDetectionDataset(coco_root / "annotations" / "instances_train2017.json", coco_root / "train2017",
                                hflip=True)
    torch.manual_seed(0)
    seen = set()
    for _ in range(12):
        x, t = flip[0]
        x0, t0 = plain[0]
        flipped = not torch.equal(x, x0)
        seen.add(flipped)
        if flipped:
            torch.testing.assert_close(x, x0.flip(-1))
            torch.testing.assert_close(t["boxes"], torch.stack([40 - t0["boxes"][:, 2], t0["boxes"][:, 1],
                                                                40 - t0["boxes"][:, 0], t0["boxes"][:, 3]], 1))
    assert seen == {True, False}


def test_split_rule_train_val_only(coco_root):
    data = load_detection_data("coco", str(coco_root), image_size=32, seed=3, val_fraction=0.25)
    assert data.test.image_ids == [1000, 1010, 1020, 1030]  # val2017 is the test split
    assert len(data.val) == 1 and len(data.train) == 3
    assert set(data.val.image_ids) | set(data.train.image_ids) == {1, 11, 21, 31}
    assert not set(data.val.image_ids) & set(data.train.image_ids)
    again = load_detection_data(str(coco_root), None, image_size=32, seed=3, val_fraction=0.25)
    assert again.val.image_ids == data.val.image_ids  # seeded; a folder path is the same source as --data coco
    assert "test split" in data.split_rule
    assert data.counts()["train"]["images"] == 3 and data.label_names == ["car", "cat", "kite"]
    assert not data.val.hflip and not data.test.hflip


def test_split_rule_with_a_test_file_and_without_year(tmp_path):
    root = tmp_path / "mine"
    for k, split in enumerate(("train", "val", "test")):
        _coco_split(root, split, 1 + 1000 * k, year="")
    data = load_detection_data(str(root), None, image_size=None, limits={"train": 2})
    assert data.val.image_ids == [1001, 1011, 1021, 1031] and data.test.image_ids == [2001, 2011, 2021, 2031]
    assert len(data.train) == 2 and set(data.train.image_ids) <= {1, 11, 21, 31}


def test_single_json_folder_split_80_10_10(tmp_path):
    root = tmp_path / "one"
    images = []
    for i in range(20):
        _image(root / "images" / f"{i}.png", 16, 16, i)
        images.append({"id": i, "file_name": f"{i}.png", "width": 16, "height": 16})
    (root / "labels.json").write_text(json.dumps({"images": images, "annotations": [], "categories": CATS}))
    data = load_detection_data(str(root), None, image_size=None, seed=1)
    assert (len(data.train), len(data.val), len(data.test)) == (16, 2, 2)
    ids = data.train.image_ids + data.val.image_ids + data.test.image_ids
    assert sorted(ids) == list(range(20))


def test_missing_and_malformed_annotation_files(tmp_path, coco_root):
    with pytest.raises(UserError, match="does not exist"):
        load_detection_data("coco", str(tmp_path / "nowhere"), image_size=32)
    with pytest.raises(UserError, match="needs --root"):
        check_detection_source("coco", None)
    with pytest.raises(UserError, match="no COCO annotation file"):
        check_detection_source("coco", str(tmp_path))
    with pytest.raises(UserError, match="unknown --data"):
        check_detection_source("imagenet", None)
    check_detection_source("coco", str(coco_root))  # fine
    ann = coco_root / "annotations" / "instances_train2017.json"
    ann.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON") as e:
        load_detection_data("coco", str(coco_root), image_size=32)
    assert "\n" not in str(e.value) and "instances_train2017.json" in str(e.value)
    ann.write_text(json.dumps({"images": [], "categories": CATS}))
    with pytest.raises(UserError, match="'annotations'"):
        load_detection_data("coco", str(coco_root), image_size=32)
    bad = {"images": [{"id": 1, "file_name": "a.jpg"}], "categories": CATS,
           "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 2, 3]}]}
    ann.write_text(json.dumps(bad))
    with pytest.raises(UserError, match=r"expected \[x, y, width, height\]"):
        load_detection_data("coco", str(coco_root), image_size=32)
    bad["annotations"][0].update(bbox=[1, 2, 3, 4], category_id=99)
    ann.write_text(json.dumps(bad))
    with pytest.raises(UserError, match="category_id 99"):
        load_detection_data("coco", str(coco_root), image_size=32)
    (coco_root / "annotations" / "instances_val2017.json").unlink()
    ann.unlink()
    with pytest.raises(UserError, match="no COCO annotation file"):
        check_detection_source("coco", str(coco_root))


def test_unreadable_image_is_a_user_error(coco_root):
    ds = CocoDetectionDataset(coco_root / "annotations" / "instances_train2017.json", coco_root / "train2017")
    ds.image_path(0).write_bytes(b"not an image")
    with pytest.raises(UserError, match="cannot read image .*000000000001.jpg: not an image format"):
        ds[0]
    ds.image_path(1).unlink()
    with pytest.raises(UserError, match="not found"):
        ds[1]


# -- Pascal VOC 2007 --------------------------------------------------------------------------------------


def _voc_xml(name: str, w: int, h: int, objects: list[tuple[str, tuple[int, int, int, int], int]]) -> str:
    objs = "".join(
        f"<object><name>{c}</name><pose>Left</pose><truncated>0</truncated><difficult>{d}</difficult>"
        f"<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for c, b, d in objects)
    return (f"<annotation><folder>VOC2007</folder><filename>{name}.jpg</filename><size><width>{w}</width>"
            f"<height>{h}</height><depth>3</depth></size><segmented>0</segmented>{objs}</annotation>")


@pytest.fixture
def voc_root(tmp_path):
    voc = tmp_path / "voc" / "VOCdevkit" / "VOC2007"
    (voc / "Annotations").mkdir(parents=True)
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    items = {"000005": [("chair", (10, 20, 30, 40), 0), ("person", (5, 5, 25, 35), 1)],
             "000007": [("car", (1, 1, 48, 30), 0)], "000009": [("dog", (3, 4, 20, 22), 0)],
             "000012": [("car", (2, 3, 44, 28), 0), ("car", (30, 10, 40, 20), 1)], "000016": []}
    for name, objs in items.items():
        (voc / "Annotations" / f"{name}.xml").write_text(_voc_xml(name, 50, 40, objs))
        _image(voc / "JPEGImages" / f"{name}.jpg", 50, 40, int(name))
    (voc / "ImageSets" / "Main" / "train.txt").write_text("000005\n000007\n000016\n")
    (voc / "ImageSets" / "Main" / "val.txt").write_text("000009\n")
    (voc / "ImageSets" / "Main" / "test.txt").write_text("000012\n")
    (voc / "ImageSets" / "Main" / "trainval.txt").write_text("000005\n000007\n000009\n000016\n")
    return tmp_path / "voc"


def test_voc_difficult_as_crowd_and_one_based_boxes(voc_root):
    check_detection_source("voc", str(voc_root))
    data = load_detection_data("voc", str(voc_root), image_size=None)
    assert data.label_names == list(VOC_CLASSES) and data.name == "voc2007"
    assert (len(data.train), len(data.val), len(data.test)) == (3, 1, 1)
    _, t = data.train[0]  # 000005
    assert t["labels"].tolist() == [VOC_CLASSES.index("chair") + 1, VOC_CLASSES.index("person") + 1]
    assert t["iscrowd"].tolist() == [0, 1]  # the difficult person
    torch.testing.assert_close(t["boxes"][0], torch.tensor([9.0, 19.0, 30.0, 40.0]))
    x, t = data.train[2]  # 000016: no objects, kept as a negative
    assert x.shape == (3, 40, 50) and t["boxes"].shape == (0, 4)
    _, t = data.test[0]
    assert t["iscrowd"].tolist() == [0, 1] and data.test.num_crowd == 1


def test_voc_without_test_list_and_errors(voc_root):
    main = voc_root / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main"
    (main / "test.txt").unlink()
    data = load_detection_data("voc", str(voc_root), image_size=32, seed=0, val_fraction=0.34)
    assert len(data.test) == 1 and len(data.val) == 1 and len(data.train) == 2  # val.txt is the test split
    assert "no test.txt" in data.split_rule
    ann = voc_root / "VOCdevkit" / "VOC2007" / "Annotations"
    (ann / "000007.xml").write_text("<annotation><size><width>5")
    with pytest.raises(UserError, match="000007.xml.*malformed"):
        load_detection_data("voc", str(voc_root), image_size=32)
    (ann / "000007.xml").write_text(_voc_xml("000007", 50, 40, [("unicorn", (1, 1, 5, 5), 0)]))
    with pytest.raises(UserError, match="unknown class 'unicorn'"):
        load_detection_data("voc", str(voc_root), image_size=32)
    (ann / "000007.xml").unlink()
    with pytest.raises(UserError, match="000007.xml.*not found"):
        load_detection_data("voc", str(voc_root), image_size=32)
    (main / "val.txt").unlink()
    with pytest.raises(UserError, match="val.txt"):
        check_detection_source("voc", str(voc_root))
    with pytest.raises(UserError, match="no Pascal VOC 2007 folder"):
        check_detection_source("voc", str(voc_root / "VOCdevkit" / "nothing"))


# -- embedded scenes -------------------------------------------------------------------------------------


def test_embedded_scenes_are_coco_folders_deterministic_and_varied(tmp_path):
    a = write_detection_scenes(tmp_path / "a", n_train=12, n_val=4, n_test=6, size=64, seed=5)
    b = write_detection_scenes(tmp_path / "b", n_train=12, n_val=4, n_test=6, size=64, seed=5)
    for split in ("train", "val", "test"):
        ja = json.loads((a / "annotations" / f"instances_{split}.json").read_text())
        jb = json.loads((b / "annotations" / f"instances_{split}.json").read_text())
        assert ja["annotations"] == jb["annotations"]
        assert np.array_equal(np.asarray(Image.open(a / split / "00000.png")), np.asarray(Image.open(b / split /
                                                                                                     "00000.png")))
    data = load_detection_data(str(a), None, image_size=64)
    assert data.label_names == list(SCENE_CLASSES)
    counts = [len(data.train.target(i)["labels"]) for i in range(len(data.train))]
    assert max(counts) <= 6 and len(set(counts)) > 2
    boxes = torch.cat([data.train.target(i)["boxes"] for i in range(len(data.train))])
    wh = boxes[:, 2:] - boxes[:, :2]
    assert (boxes >= 0).all() and (boxes <= 64).all() and (wh >= 1).all()
    assert (wh[:, 0] / wh[:, 1]).max() > 1.3 and (wh[:, 0] / wh[:, 1]).min() < 0.77  # varied aspect ratios
    assert wh.max() / wh.min() > 2.5  # varied scale
    c = write_detection_scenes(tmp_path / "c", n_train=12, n_val=4, n_test=6, size=64, seed=6)
    assert (json.loads((c / "annotations" / "instances_train.json").read_text())["annotations"]
            != json.loads((a / "annotations" / "instances_train.json").read_text())["annotations"])
    with pytest.raises(ValueError, match="max_objects"):
        write_detection_scenes(tmp_path / "d", max_objects=9)


def test_default_source_goes_to_the_cache_and_collates(monkeypatch, tmp_path):
    monkeypatch.setenv("VISLAB_CACHE", str(tmp_path / "cache"))
    data = load_detection_data(None, None, image_size=48, scenes={"n_train": 4, "n_val": 2, "n_test": 3}, hflip=True)
    assert (len(data.train), len(data.val), len(data.test)) == (4, 2, 3)
    assert any((tmp_path / "cache").iterdir()) and data.train.hflip and data.name == "embedded-scenes"
    images, targets = collate_fn([data.train[0], data.train[1]])
    assert isinstance(images, list) and len(images) == 2 and images[0].shape == (3, 48, 48)
    assert [t["id"] for t in targets] == data.train.image_ids[:2]


# -- content checks before the run ----------------------------------------------------------------------


def test_content_scan_finds_bad_annotations_before_the_run(coco_root):
    """check_detection_source parses every file and stats every image: each fault is one UserError line."""
    ann = coco_root / "annotations" / "instances_train2017.json"
    good = json.loads(ann.read_text())
    check_detection_source("coco", str(coco_root))

    def fault(edit, match):
        d = json.loads(json.dumps(good))
        edit(d)
        ann.write_text(json.dumps(d))  # NaN is written as the bare token NaN, which Python's json reads
        with pytest.raises(UserError, match=match) as err:
            check_detection_source("coco", str(coco_root))
        assert "\n" not in str(err.value) and "instances_train2017.json" in str(err.value)

    fault(lambda d: d["annotations"][0]["bbox"].__setitem__(2, float("nan")), r"annotation 1 \(image 1\) has a "
                                                                              r"non-finite bbox \[2.0, 3.0, nan")
    fault(lambda d: d["annotations"][1]["bbox"].__setitem__(0, float("inf")), "non-finite bbox")
    fault(lambda d: d["annotations"][0]["bbox"].__setitem__(3, -4.0), "negative width or height")
    fault(lambda d: d["annotations"][0].pop("bbox"), "lacks 'bbox'")
    fault(lambda d: d.__setitem__("categories", []), "'categories' is empty")
    fault(lambda d: d.pop("categories"), "missing the list 'categories'")
    fault(lambda d: d["images"][1].__setitem__("id", 1), "image id 1 appears twice")
    fault(lambda d: d["annotations"][0].__setitem__("image_id", 777), "refers to image_id 777")
    fault(lambda d: d["images"].append({"id": 5, "file_name": "gone.jpg"}), r"1 image file\(s\) not found .*'gone.jpg'")
    ann.write_text(json.dumps(good))
    d = json.loads(json.dumps(good))
    d["annotations"][0]["bbox"][2] = 0.0  # zero width: not an error, dropped as degenerate
    ann.write_text(json.dumps(d))
    check_detection_source("coco", str(coco_root))
    assert CocoDetectionDataset(ann, coco_root / "train2017").dropped_degenerate == 3


def test_voc_content_scan(voc_root):
    voc = voc_root / "VOCdevkit" / "VOC2007"
    (voc / "Annotations" / "000009.xml").write_text(_voc_xml("000009", 50, 40, [("dog", (30, 4, 20, 22), 0)]))
    with pytest.raises(UserError, match=r"000009.xml' has a dog box \[xmin 30.*xmax < xmin"):
        check_detection_source("voc", str(voc_root))
    (voc / "Annotations" / "000009.xml").write_text(_voc_xml("000009", 50, 40, [("dog", (3, 4, 20, 22), 0)]))
    (voc / "JPEGImages" / "000012.jpg").unlink()  # in test.txt
    with pytest.raises(UserError, match=r"1 image file\(s\) not found .*'000012.jpg'"):
        check_detection_source("voc", str(voc_root))
    (voc / "Annotations" / "000016.xml").write_text("<annotation><size>")
    with pytest.raises(UserError, match="000016.xml.*malformed"):
        check_detection_source("voc", str(voc_root))


def test_image_size_that_disagrees_with_the_annotation_is_refused(coco_root):
    ds = CocoDetectionDataset(coco_root / "annotations" / "instances_train2017.json", coco_root / "train2017")
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).transpose(Image.Transpose.ROTATE_90).save(ds.image_path(0))
    with pytest.raises(UserError, match=r"is 30×40 .* but its annotation says 40×30"):
        ds[0]
