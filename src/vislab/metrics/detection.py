"""COCO detection metrics (mAP, AP50, AP75, AR@100, per-class AP50) computed with pycocotools.

Inputs follow torchmetrics' ``MeanAveragePrecision`` convention: two equally long lists with one
dict per image,

* ``preds[i]``: ``{"boxes": Tensor[D, 4] xyxy, "scores": Tensor[D], "labels": Tensor[D] int}``
* ``targets[i]``: ``{"boxes": Tensor[G, 4] xyxy, "labels": Tensor[G] int}``, optionally
  ``"iscrowd": Tensor[G]`` (0/1) and ``"area": Tensor[G]`` (default: the box area).

The lists become an in-memory COCO ground truth (image ``i`` has id ``i``, label ``c`` is category
``c``, boxes converted to xywh) and a result set (``COCO.loadRes``); ``COCOeval(iouType="bbox")``
does the matching, exactly as the official evaluation does:

* a crowd box (``iscrowd=1``) is never a miss; detections that overlap it (intersection over the
  *detection's* area >= the IoU threshold) are ignored instead of counted as false positives. VOC's
  ``difficult`` objects are passed as crowd boxes, which is how they are ignored.
* images without ground truth count: every detection on them is a false positive.
* images without detections count: every ground-truth box on them is a miss.
* at most 100 detections per image and class are kept, by score.

Boxes must be finite with ``x0 <= x1`` and ``y0 <= y1``, in predictions and targets alike: COCOeval would score a
reversed box as one with a negative width. A ``ValueError`` names the image index and the box.

``map`` averages AP over IoU 0.50:0.05:0.95 and over the classes that have ground truth;
``map50``/``map75`` at IoU 0.5 / 0.75; ``mar100`` the recall with 100 detections per image averaged
over the same thresholds and classes. pycocotools reports ``-1`` for a value without ground truth
(no box of that class, or no box at all); the same ``-1`` is returned here, as torchmetrics does.

COCOeval runs with its own float64 thresholds (IoU ``np.linspace(0.5, 0.95, 10)``, recall
``np.linspace(0, 1, 101)``). torchmetrics' defaults are the float32 ``torch.linspace`` of the same
values (``0.550000011920929``, ...); with those, a match that sits exactly on a recall threshold can
move and ``map_small`` etc. differ in the fourth decimal. Given the float64 thresholds, torchmetrics'
results equal these (tests).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

_STAT_NAMES = ("map", "map50", "map75", "map_small", "map_medium", "map_large", "mar1", "mar10", "mar100",
               "mar_small", "mar_medium", "mar_large")


def _as_array(x: Any, name: str, *, dtype: Any) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().to(torch.float64 if dtype is float else torch.int64).numpy()
    return np.asarray(x, dtype=np.float64 if dtype is float else np.int64)


def _check_item(item: Mapping[str, Any], i: int, *, kind: str) -> tuple[np.ndarray, ...]:
    if not isinstance(item, Mapping):
        raise TypeError(f"{kind}[{i}] must be a dict, got {type(item).__name__}")
    required = ("boxes", "labels", "scores") if kind == "preds" else ("boxes", "labels")
    for key in required:
        if key not in item:
            raise ValueError(f"{kind}[{i}] has no {key!r}; expected keys {required}")
    boxes = _as_array(item["boxes"], "boxes", dtype=float)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{kind}[{i}]['boxes'] must be Tensor[N, 4] (xyxy), got {tuple(boxes.shape)}")
    bad = ~np.isfinite(boxes).all(axis=1) | (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        what = "a non-finite value" if not np.isfinite(boxes[k]).all() else "x1 < x0 or y1 < y0"
        raise ValueError(f"{kind}[{i}]['boxes'][{k}] = [{', '.join(f'{v:g}' for v in boxes[k])}] has {what}; "
                         f"boxes are finite xyxy with x0 <= x1 and y0 <= y1 ({int(bad.sum())} such box(es) in "
                         f"image {i})")
    labels = _as_array(item["labels"], "labels", dtype=int).reshape(-1)
    if labels.shape[0] != boxes.shape[0]:
        raise ValueError(f"{kind}[{i}] has {boxes.shape[0]} boxes but {labels.shape[0]} labels")
    out = [boxes, labels]
    if kind == "preds":
        scores = _as_array(item["scores"], "scores", dtype=float).reshape(-1)
        if scores.shape[0] != boxes.shape[0]:
            raise ValueError(f"{kind}[{i}] has {boxes.shape[0]} boxes but {scores.shape[0]} scores")
        out.append(scores)
    else:
        crowd = item.get("iscrowd")
        crowd = np.zeros(len(labels), np.int64) if crowd is None else _as_array(crowd, "iscrowd", dtype=int).reshape(-1)
        area = item.get("area")
        area = np.zeros(len(labels)) if area is None else _as_array(area, "area", dtype=float).reshape(-1)
        if crowd.shape[0] != labels.shape[0] or area.shape[0] != labels.shape[0]:
            raise ValueError(f"targets[{i}]: iscrowd/area must have one entry per box ({labels.shape[0]})")
        out += [crowd, area]
    return tuple(out)


def _xywh(boxes: np.ndarray) -> list[list[float]]:
    b = boxes.copy()
    b[:, 2:] -= b[:, :2]  # (N, 4): x, y, w, h
    return b.tolist()


def coco_ground_truth(targets: Sequence[Mapping[str, Any]], category_ids: Sequence[int]) -> Any:
    """An in-memory ``pycocotools.coco.COCO`` for ``targets`` (image ``i`` has id ``i``)."""
    from pycocotools.coco import COCO

    images, anns = [], []
    for i, t in enumerate(targets):
        boxes, labels, crowd, area = _check_item(t, i, kind="targets")
        images.append({"id": i})
        for box, label, c, a in zip(_xywh(boxes), labels.tolist(), crowd.tolist(), area.tolist()):
            # ids start at 1: COCOeval treats a match with id 0 as "unmatched"
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(label), "bbox": box,
                         "area": a if a > 0 else box[2] * box[3], "iscrowd": int(c)})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns,
                  "categories": [{"id": int(c), "name": str(c)} for c in category_ids],
                  "info": {"description": "vislab.metrics.detection"}}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def coco_results(preds: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """COCO result records ``{"image_id", "category_id", "bbox" xywh, "score"}`` (image ``i`` has id ``i``)."""
    out = []
    for i, p in enumerate(preds):
        boxes, labels, scores = _check_item(p, i, kind="preds")
        for box, label, score in zip(_xywh(boxes), labels.tolist(), scores.tolist()):
            out.append({"image_id": i, "category_id": int(label), "bbox": box, "score": float(score)})
    return out


def coco_map(preds: Sequence[Mapping[str, Any]], targets: Sequence[Mapping[str, Any]], *,
             class_names: Sequence[str] | Mapping[int, str] | None = None) -> dict[str, Any]:
    """COCO box metrics of ``preds`` against ``targets`` (see the module docstring for the convention).

    Args:
        preds: one dict per image with ``boxes`` ``Tensor[D, 4]`` (xyxy), ``scores`` ``Tensor[D]``,
            ``labels`` ``Tensor[D]`` (int).
        targets: one dict per image with ``boxes`` ``Tensor[G, 4]`` (xyxy), ``labels`` ``Tensor[G]``,
            optionally ``iscrowd`` and ``area``.
        class_names: names of the labels: a sequence (``class_names[j]`` names label ``j + 1``,
            the detection convention where 0 is the background) or a mapping ``{label: name}``.
            Without it the per-class results are keyed by ``str(label)`` for the labels that occur.

    Returns:
        ``{"map", "map50", "map75", "map_small", "map_medium", "map_large", "mar1", "mar10",
        "mar100", "mar_small", "mar_medium", "mar_large"}`` as floats (COCOeval's ``stats``, in
        that order), plus ``"ap50_per_class"`` and ``"ap_per_class"`` (AP at IoU 0.5 and averaged
        over 0.5:0.95): ``{name: float}``. A value without ground truth is ``-1``.
    """
    from pycocotools.cocoeval import COCOeval

    if not isinstance(preds, Sequence) or not isinstance(targets, Sequence):
        raise TypeError(f"preds and targets must be lists of dicts, got {type(preds).__name__} and "
                        f"{type(targets).__name__}")
    if len(preds) != len(targets):
        raise ValueError(f"preds and targets must have one entry per image, got {len(preds)} and {len(targets)}")
    if class_names is None:
        names: dict[int, str] = {}
    elif isinstance(class_names, Mapping):
        names = {int(k): str(v) for k, v in class_names.items()}
    else:
        names = {j + 1: str(n) for j, n in enumerate(class_names)}

    results = coco_results(preds)
    gt_labels = {int(lab) for t in targets for lab in _as_array(t["labels"], "labels", dtype=int).reshape(-1)}
    labels = sorted(set(names) | gt_labels | {r["category_id"] for r in results})
    gt = coco_ground_truth(targets, labels)
    with contextlib.redirect_stdout(io.StringIO()):
        if results:
            dt = gt.loadRes(results)
        else:  # loadRes cannot take an empty list; an empty result set has the same images
            from pycocotools.coco import COCO

            dt = COCO()
            dt.dataset = {"images": list(gt.dataset["images"]), "annotations": [],
                          "categories": list(gt.dataset["categories"])}
            dt.createIndex()
    out: dict[str, Any] = dict.fromkeys(_STAT_NAMES, -1.0)
    per50 = {names.get(c, str(c)): -1.0 for c in labels if c in names or c in gt_labels}
    per = dict(per50)
    if len(targets) == 0 or not gt.dataset["annotations"]:
        out["ap50_per_class"], out["ap_per_class"] = per50, per
        return out
    ev = COCOeval(gt, dt, iouType="bbox")
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    out.update({k: float(v) for k, v in zip(_STAT_NAMES, ev.stats)})
    # precision: [T IoU thresholds, R recall thresholds, K classes, A area ranges, M max-dets]; -1 = no gt
    precision = ev.eval["precision"]
    t50 = int(np.argmin(np.abs(ev.params.iouThrs - 0.5)))
    for k, cat in enumerate(ev.params.catIds):
        key = names.get(cat, str(cat))
        if key not in per50:
            continue
        p50 = precision[t50, :, k, 0, -1]
        p_all = precision[:, :, k, 0, -1]
        per50[key] = float(p50[p50 > -1].mean()) if (p50 > -1).any() else -1.0
        per[key] = float(p_all[p_all > -1].mean()) if (p_all > -1).any() else -1.0
    out["ap50_per_class"], out["ap_per_class"] = per50, per
    return out
