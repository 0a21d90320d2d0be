"""coco_map against torchmetrics' MeanAveragePrecision (pycocotools backend) on random and hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vislab.metrics.detection import coco_map

MeanAveragePrecision = pytest.importorskip("torchmetrics.detection").MeanAveragePrecision


def _reference(preds, targets, **kw):
    # torchmetrics builds its default thresholds with float32 torch.linspace (0.550000011920929, ...), which moves
    # matches that sit exactly on a recall threshold; pycocotools' own float64 defaults are passed explicitly so that
    # both run COCOeval with the official parameters.
    kw.setdefault("iou_thresholds", np.linspace(0.5, 0.95, 10).tolist())
    kw.setdefault("rec_thresholds", np.linspace(0.0, 1.0, 101).tolist())
    m = MeanAveragePrecision(backend="pycocotools", iou_type="bbox", **kw)
    m.warn_on_many_detections = False
    m.update(preds, targets)
    return m.compute()


def _assert_equal(ours, ref):
    for ours_key, ref_key in (("map", "map"), ("map50", "map_50"), ("map75", "map_75"), ("mar100", "mar_100"),
                              ("mar1", "mar_1"), ("mar10", "mar_10"), ("map_small", "map_small"),
                              ("map_medium", "map_medium"), ("map_large", "map_large")):
        assert ours[ours_key] == pytest.approx(float(ref[ref_key]), abs=1e-6), ours_key


def _random_boxes(g, n, size=100.0):
    xy = torch.rand(n, 2, generator=g) * size * 0.8
    wh = 2 + torch.rand(n, 2, generator=g) * size * 0.4
    return torch.cat([xy, xy + wh], 1)


def _random_case(seed, *, n_images=12, n_classes=4, crowd=True, empty_every=5):
    g = torch.Generator().manual_seed(seed)
    preds, targets = [], []
    for i in range(n_images):
        n_gt = 0 if i % empty_every == 0 else int(torch.randint(1, 7, (1,), generator=g))
        gt = _random_boxes(g, n_gt)
        labels = torch.randint(1, n_classes + 1, (n_gt,), generator=g)
        t = {"boxes": gt, "labels": labels}
        if crowd:
            t["iscrowd"] = (torch.rand(n_gt, generator=g) < 0.15).long()
        targets.append(t)
        # detections: jittered copies of some gt boxes (right or wrong class) plus random false positives
        keep = torch.rand(n_gt, generator=g) < 0.8
        jit = gt[keep] + torch.randn(int(keep.sum()), 4, generator=g) * 4
        jit = torch.cat([torch.minimum(jit[:, :2], jit[:, 2:]), torch.maximum(jit[:, :2], jit[:, 2:])], 1)  # xyxy
        lab = labels[keep].clone()
        flip = torch.rand(len(lab), generator=g) < 0.2
        lab[flip] = torch.randint(1, n_classes + 1, (int(flip.sum()),), generator=g)
        n_fp = 0 if i % 7 == 3 else int(torch.randint(0, 4, (1,), generator=g))
        boxes = torch.cat([jit, _random_boxes(g, n_fp)])
        lab = torch.cat([lab, torch.randint(1, n_classes + 1, (n_fp,), generator=g)])
        scores = torch.rand(len(lab), generator=g)
        preds.append({"boxes": boxes, "scores": scores, "labels": lab})
    return preds, targets


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_cases_equal_torchmetrics(seed):
    preds, targets = _random_case(seed, crowd=seed % 2 == 0)
    _assert_equal(coco_map(preds, targets), _reference(preds, targets))


def test_per_class_ap50_equals_torchmetrics_class_metrics():
    preds, targets = _random_case(11, n_images=15, n_classes=3)
    ours = coco_map(preds, targets, class_names=["a", "b", "c"])
    ref = _reference(preds, targets, iou_thresholds=[0.5], class_metrics=True)
    ref_per = dict(zip(ref["classes"].tolist(), ref["map_per_class"].tolist()))
    assert set(ours["ap50_per_class"]) == {"a", "b", "c"}
    for label, name in ((1, "a"), (2, "b"), (3, "c")):
        assert ours["ap50_per_class"][name] == pytest.approx(ref_per[label], abs=1e-6), name
    # the mean of the per-class AP50 is map50 (every class has ground truth here)
    assert ours["map50"] == pytest.approx(sum(ours["ap50_per_class"].values()) / 3, abs=1e-6)
    ref_all = _reference(preds, targets, class_metrics=True)
    for label, v in zip(ref_all["classes"].tolist(), ref_all["map_per_class"].tolist()):
        assert ours["ap_per_class"]["abc"[label - 1]] == pytest.approx(v, abs=1e-6)


def test_hand_made_perfect_miss_and_false_positive():
    box = torch.tensor([[10.0, 10.0, 50.0, 60.0]])
    one = torch.tensor([1])
    perfect = coco_map([{"boxes": box, "scores": torch.tensor([0.9]), "labels": one}], [{"boxes": box, "labels": one}])
    assert perfect["map"] == pytest.approx(1.0) and perfect["map50"] == pytest.approx(1.0)
    # an IoU of 0.6 (a box shifted by a quarter of its width) is a hit at 0.5, a miss at 0.75
    shifted = box + torch.tensor([[10.0, 0.0, 10.0, 0.0]])
    half = coco_map([{"boxes": shifted, "scores": torch.tensor([0.9]), "labels": one}], [{"boxes": box, "labels": one}])
    assert half["map50"] == pytest.approx(1.0) and half["map75"] == pytest.approx(0.0)
    # wrong class: a miss for class 1; class 2 has no ground truth, so it does not enter the mean
    wrong = coco_map([{"boxes": box, "scores": torch.tensor([0.9]), "labels": torch.tensor([2])}],
                     [{"boxes": box, "labels": one}], class_names=["cat", "dog"])
    assert wrong["map50"] == 0.0
    assert wrong["ap50_per_class"] == {"cat": 0.0, "dog": -1.0}


def test_images_without_ground_truth_or_predictions():
    box = torch.tensor([[10.0, 10.0, 50.0, 60.0]])
    one = torch.tensor([1])
    none_pred = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
    none_gt = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    # a confident false positive on an image without boxes ranks above the true positive: AP50 drops to 0.5
    preds = [{"boxes": box, "scores": torch.tensor([0.5]), "labels": one},
             {"boxes": box, "scores": torch.tensor([0.9]), "labels": one}, none_pred]
    targets = [{"boxes": box, "labels": one}, none_gt, none_gt]
    ours = coco_map(preds, targets)
    assert ours["map50"] == pytest.approx(0.5, abs=0.01)
    _assert_equal(ours, _reference(preds, targets))
    # no predictions at all: everything is a miss
    ours = coco_map([none_pred, none_pred], [{"boxes": box, "labels": one}, none_gt])
    _assert_equal(ours, _reference([none_pred, none_pred], [{"boxes": box, "labels": one}, none_gt]))
    assert ours["map50"] == 0.0 and ours["mar100"] == 0.0
    # no ground truth at all: undefined (-1), as pycocotools and torchmetrics say
    ours = coco_map([preds[1]], [none_gt])
    assert ours["map"] == -1.0 and ours["map50"] == -1.0
    _assert_equal(ours, _reference([preds[1]], [none_gt]))


def test_crowd_box_is_not_a_miss_and_absorbs_detections():
    gt = {"boxes": torch.tensor([[0.0, 0.0, 40.0, 40.0], [50.0, 50.0, 95.0, 95.0]]), "labels": torch.tensor([1, 1]),
          "iscrowd": torch.tensor([0, 1])}
    # the crowd region is missed and gets two detections inside it: neither a miss nor false positives
    pred = {"boxes": torch.tensor([[0.0, 0.0, 40.0, 40.0], [55.0, 55.0, 70.0, 70.0], [70.0, 70.0, 90.0, 90.0]]),
            "scores": torch.tensor([0.5, 0.9, 0.8]), "labels": torch.tensor([1, 1, 1])}
    ours = coco_map([pred], [gt])
    assert ours["map"] == pytest.approx(1.0) and ours["mar100"] == pytest.approx(1.0)
    _assert_equal(ours, _reference([pred], [gt]))
    # without the crowd flag the same region is a miss and the two detections rank first as false positives
    plain = coco_map([pred], [{"boxes": gt["boxes"], "labels": gt["labels"]}])
    assert plain["map50"] < 0.5


def test_many_detections_per_image_truncated_like_cocoeval():
    g = torch.Generator().manual_seed(5)
    gt = {"boxes": _random_boxes(g, 30), "labels": torch.ones(30, dtype=torch.long)}
    pred = {"boxes": torch.cat([gt["boxes"] + 1, _random_boxes(g, 150)]), "scores": torch.rand(180, generator=g),
            "labels": torch.ones(180, dtype=torch.long)}
    _assert_equal(coco_map([pred], [gt]), _reference([pred], [gt]))


def test_argument_errors():
    box = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match="one entry per image"):
        coco_map([], [{"boxes": box, "labels": torch.tensor([1])}])
    with pytest.raises(ValueError, match=r"Tensor\[N, 4\]"):
        coco_map([{"boxes": torch.zeros(1, 5), "scores": torch.ones(1), "labels": torch.ones(1)}],
                 [{"boxes": box, "labels": torch.tensor([1])}])
    with pytest.raises(ValueError, match="scores"):
        coco_map([{"boxes": box, "labels": torch.ones(1)}], [{"boxes": box, "labels": torch.tensor([1])}])
    with pytest.raises(ValueError, match="1 boxes but 2 labels"):
        coco_map([{"boxes": box, "scores": torch.ones(1), "labels": torch.ones(1)}],
                 [{"boxes": box, "labels": torch.tensor([1, 2])}])


def test_reversed_or_non_finite_boxes_are_refused():
    good = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    gt = [{"boxes": good, "labels": torch.tensor([1])}, {"boxes": good, "labels": torch.tensor([1])}]
    for bad, what in (([12.0, 0.0, 2.0, 10.0], "x1 < x0"), ([0.0, 9.0, 10.0, 1.0], "y1 < y0"),
                      ([0.0, float("nan"), 10.0, 10.0], "non-finite"), ([0.0, 0.0, float("inf"), 10.0], "non-finite")):
        boxes = torch.tensor([[1.0, 1.0, 9.0, 9.0], bad])
        preds = [{"boxes": good, "scores": torch.ones(1), "labels": torch.ones(1)},
                 {"boxes": boxes, "scores": torch.ones(2), "labels": torch.ones(2)}]
        with pytest.raises(ValueError, match=r"preds\[1\]\['boxes'\]\[1\] = \[.*\] has .*" + what.split()[0]):
            coco_map(preds, gt)
        with pytest.raises(ValueError, match=r"targets\[1\]\['boxes'\]\[1\]"):
            coco_map(preds[:1] * 2, [gt[0], {"boxes": boxes, "labels": torch.ones(2)}])
    zero = torch.tensor([[5.0, 5.0, 5.0, 9.0]])  # zero width is a (degenerate) box, not an error
    coco_map([{"boxes": zero, "scores": torch.ones(1), "labels": torch.ones(1)}], gt[:1])
