"""CocoMultiLabel on a miniature COCO folder written by the tests (same format as MS COCO)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from torch.utils.data import DataLoader

from vislab.data.coco_multilabel import (
    COCO_CATEGORIES,
    COCO_CATEGORY_IDS,
    COCO_LABEL_NAMES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    CocoMultiLabel,
    category_mapping,
    multilabel_targets,
    scan_coco_multilabel,
)

H, W = 16, 20
# image id -> annotations (category_id, iscrowd); image 3 has none
ANNOTATIONS = {
    1: [(1, 0), (3, 0)],
    2: [(90, 1)],  # only a crowd region
    3: [],
    4: [(3, 0), (3, 0), (1, 1)],  # two cars and a crowd of people
    5: [(90, 0)],
}


def _crowd_rle() -> dict:
    # uncompressed RLE (column-major run lengths: 40 off, 60 on, the rest off) as in COCO crowd boxes
    return {"counts": [40, 60, H * W - 100], "size": [H, W]}


def _write_coco(root, split: str, annotations: dict, categories: list[dict]) -> None:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / f"{split}2017").mkdir(exist_ok=True)
    rng = np.random.default_rng(len(split))
    images, anns = [], []
    for image_id, objs in annotations.items():
        name = f"{image_id:012d}.jpg"
        pixels = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"{split}2017" / name, quality=95)
        images.append({"id": image_id, "file_name": name, "height": H, "width": W})
        for cat, crowd in objs:
            ann = {"id": len(anns) + 1, "image_id": image_id, "category_id": cat, "iscrowd": crowd,
                   "bbox": [2.0, 3.0, 5.0, 4.0], "area": 20.0}
            ann["segmentation"] = _crowd_rle() if crowd else [[2.0, 3.0, 7.0, 3.0, 7.0, 7.0, 2.0, 7.0]]
            anns.append(ann)
    data = {"info": {"description": "vislab test"}, "licenses": [], "images": images, "annotations": anns,
            "categories": categories}
    (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(data))


SPARSE = [{"id": 90, "name": "toothbrush", "supercategory": "indoor"},
          {"id": 1, "name": "person", "supercategory": "person"},
          {"id": 3, "name": "car", "supercategory": "vehicle"}]  # deliberately not sorted


@pytest.fixture
def mini_coco(tmp_path):
    _write_coco(tmp_path, "train", ANNOTATIONS, SPARSE)
    _write_coco(tmp_path, "val", {7: [(1, 0)], 8: []}, SPARSE)
    return tmp_path


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools vs numpy 2 in annToMask
def test_fixture_is_valid_coco(mini_coco):
    coco = COCO(str(mini_coco / "annotations" / "instances_train2017.json"))
    crowd = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=[2]))][0]
    assert crowd["iscrowd"] == 1
    assert coco.annToMask(crowd).sum() == 60


def test_sparse_ids_mapping_and_labels(mini_coco):
    ds = CocoMultiLabel(mini_coco, "train", image_size=8)
    assert ds.category_ids == [1, 3, 90]
    assert ds.label_names == ["person", "car", "toothbrush"]
    assert ds.num_classes == 3
    np.testing.assert_array_equal(ds.image_ids, [1, 2, 3, 4, 5])
    expected = np.array([[1, 1, 0],   # person, car
                         [0, 0, 1],   # crowd toothbrush counts
                         [0, 0, 0],   # no annotation: kept, all negative
                         [1, 1, 0],   # cars + crowd person
                         [0, 0, 1]], np.float32)
    np.testing.assert_array_equal(ds.labels, expected)
    x, y = ds[0]
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, torch.tensor([1.0, 1.0, 0.0]))
    val = CocoMultiLabel(mini_coco, "val", image_size=8)
    np.testing.assert_array_equal(val.labels, [[1, 0, 0], [0, 0, 0]])


def test_crowd_and_empty_flags(mini_coco):
    no_crowd = CocoMultiLabel(mini_coco, "train", crowd_as_positive=False)
    np.testing.assert_array_equal(no_crowd.labels[[1, 3]], [[0, 0, 0], [0, 1, 0]])
    dropped = CocoMultiLabel(mini_coco, "train", keep_empty=False)
    np.testing.assert_array_equal(dropped.image_ids, [1, 2, 4, 5])
    # without crowds, image 2 has nothing left either
    both = CocoMultiLabel(mini_coco, "train", keep_empty=False, crowd_as_positive=False)
    np.testing.assert_array_equal(both.image_ids, [1, 4, 5])
    assert both.labels.any(axis=1).all()


def test_item_equals_manual_preprocessing(mini_coco):
    ds = CocoMultiLabel(mini_coco, "train", image_size=12)
    x, _ = ds[3]
    with Image.open(mini_coco / "train2017" / "000000000004.jpg") as img:
        ref = np.asarray(img.convert("RGB").resize((12, 12), Image.Resampling.BILINEAR), np.float64) / 255.0
    ref = (ref - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)  # (12, 12, 3)
    np.testing.assert_allclose(x.permute(1, 2, 0).numpy(), ref, rtol=1e-5, atol=1e-5)


def test_custom_transform_and_dataloader(mini_coco):
    ds = CocoMultiLabel(mini_coco, "train", transform=lambda img: torch.full((3, 4, 4), float(img.size[0])))
    x, _ = ds[0]
    torch.testing.assert_close(x, torch.full((3, 4, 4), float(W)))
    xb, yb = next(iter(DataLoader(CocoMultiLabel(mini_coco, "train", image_size=10), batch_size=5)))
    assert xb.shape == (5, 3, 10, 10) and yb.shape == (5, 3)


def test_limit_is_a_seeded_subset(mini_coco):
    a = CocoMultiLabel(mini_coco, "train", limit=3, seed=1)
    b = CocoMultiLabel(mini_coco, "train", limit=3, seed=1)
    np.testing.assert_array_equal(a.image_ids, b.image_ids)
    assert len(a) == 3 and set(a.image_ids) <= {1, 2, 3, 4, 5}
    assert list(a.image_ids) == sorted(a.image_ids)
    # labels follow their images
    full = CocoMultiLabel(mini_coco, "train")
    rows = [list(full.image_ids).index(i) for i in a.image_ids]
    np.testing.assert_array_equal(a.labels, full.labels[rows])
    subsets = {tuple(CocoMultiLabel(mini_coco, "train", limit=3, seed=s).image_ids) for s in range(8)}
    assert len(subsets) > 1
    assert len(CocoMultiLabel(mini_coco, "train", limit=100)) == 5


def test_official_80_categories(tmp_path):
    assert len(COCO_CATEGORIES) == 80 and len(set(COCO_LABEL_NAMES)) == 80
    assert list(COCO_CATEGORY_IDS) == sorted(COCO_CATEGORY_IDS)
    assert set(range(1, 91)) - set(COCO_CATEGORY_IDS) == {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
    cats = [{"id": i, "name": n, "supercategory": "x"} for i, n in reversed(COCO_CATEGORIES)]
    _write_coco(tmp_path, "val", {1: [(90, 0), (13, 0)], 2: [(1, 0)]}, cats)
    ds = CocoMultiLabel(tmp_path, "val")
    assert ds.category_ids == list(COCO_CATEGORY_IDS) and ds.label_names == list(COCO_LABEL_NAMES)
    assert ds.labels.shape == (2, 80)
    assert np.flatnonzero(ds.labels[0]).tolist() == [11, 79]  # stop sign (id 13), toothbrush (id 90)
    assert np.flatnonzero(ds.labels[1]).tolist() == [0]


def test_helpers():
    ids, names = category_mapping([{"id": 5, "name": "b"}, {"id": 2, "name": "a"}])
    assert (ids, names) == ([2, 5], ["a", "b"])
    t = multilabel_targets([{"image_id": 9, "category_id": 5, "iscrowd": 0},
                            {"image_id": 7, "category_id": 2}], [7, 9], [2, 5])
    np.testing.assert_array_equal(t, [[1, 0], [0, 1]])


def test_errors(mini_coco, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"COCO root .*nope.* is not a directory; expected ROOT/annotations"):
        CocoMultiLabel(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"instances_train2017\.json.* not found; expected"):
        CocoMultiLabel(empty)
    (mini_coco / "val2017" / "000000000008.jpg").unlink()
    val = CocoMultiLabel(mini_coco, "val")
    with pytest.raises(FileNotFoundError, match=r"000000000008\.jpg.*image id 8.* not found"):
        val[1]
    for p in (mini_coco / "val2017").iterdir():
        p.unlink()
    (mini_coco / "val2017").rmdir()
    with pytest.raises(FileNotFoundError, match=r"COCO image folder .*val2017.* not found; expected"):
        CocoMultiLabel(mini_coco, "val")
    with pytest.raises(ValueError, match=r"split must be one of \('train', 'val'\), got 'test'"):
        CocoMultiLabel(mini_coco, "test")
    with pytest.raises(ValueError, match="image_size must be a positive int, got 0"):
        CocoMultiLabel(mini_coco, image_size=0)
    with pytest.raises(ValueError, match="limit must be None or a positive int, got 0"):
        CocoMultiLabel(mini_coco, limit=0)
    with pytest.raises(ValueError, match=r"duplicates \[3\]"):
        category_mapping([{"id": 3, "name": "a"}, {"id": 3, "name": "b"}])
    with pytest.raises(ValueError, match="lists no categories"):
        category_mapping([])
    with pytest.raises(ValueError, match=r"category_id 4, which is not among the file's categories \[1, 3\]"):
        multilabel_targets([{"id": 1, "image_id": 1, "category_id": 4}], [1], [1, 3])


def test_scan_before_the_run(mini_coco, tmp_path):
    from vislab.errors import UserError

    scan_coco_multilabel(mini_coco)
    with pytest.raises(UserError, match=r"COCO root .*nope.* is not a directory"):
        scan_coco_multilabel(tmp_path / "nope")
    ann = mini_coco / "annotations" / "instances_val2017.json"
    good = ann.read_text()
    ann.write_text(good[:-20])
    with pytest.raises(UserError, match=r"instances_val2017.json' is not valid JSON"):
        scan_coco_multilabel(mini_coco)
    with pytest.raises(UserError, match="not valid JSON"):  # the dataset says the same, in one line
        CocoMultiLabel(mini_coco, "val")
    d = json.loads(good)
    d["annotations"][0]["bbox"][0] = float("nan")
    ann.write_text(json.dumps(d))
    with pytest.raises(UserError, match="non-finite bbox"):
        scan_coco_multilabel(mini_coco)
    ann.write_text(good)
    (mini_coco / "val2017" / "000000000008.jpg").unlink()
    with pytest.raises(UserError, match=r"1 image file\(s\) not found .*000000000008.jpg"):
        scan_coco_multilabel(mini_coco)
