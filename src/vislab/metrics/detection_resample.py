"""AP50 recomputed on resampled test images, fast enough for a bootstrap (a thousand resamples in about a second).

pycocotools' AP is not a mean over images, so a bootstrap must recompute it on every resample; a full
``COCOeval`` per resample takes tens of milliseconds. The matching of detections to ground truth, however, is
done per (image, class) and does not depend on the other images; only the accumulation (ranking all detections
of a class by score, the precision/recall curve, its 101-point interpolation) does. :func:`ap50_resampler`
runs pycocotools' matching once (IoU 0.5, all areas, 100 detections per image) and returns ``fn(idx)``, which
repeats ``COCOeval.accumulate`` for that threshold on the images ``idx`` (with repeats: an image drawn twice
counts twice). On ``idx = arange(n)`` it equals :func:`vislab.metrics.detection.coco_map`'s ``map50``
(tested); classes without ground truth in the resample are left out of the mean, as COCOeval does.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from vislab.metrics.detection import _as_array, coco_ground_truth, coco_results

_REC_THRS = np.linspace(0.0, 1.0, 101)  # COCOeval's recall thresholds


def _matches(preds: Sequence[Mapping[str, Any]], targets: Sequence[Mapping[str, Any]]) -> tuple[list[Any], int]:
    """pycocotools' per-(class, image) matches at IoU 0.5, all areas, 100 detections: ``evalImgs`` (class-major)
    and the number of images."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    results = coco_results(preds)
    labels = sorted({int(lab) for t in targets for lab in _as_array(t["labels"], "labels", dtype=int).reshape(-1)}
                    | {r["category_id"] for r in results})
    gt = coco_ground_truth(targets, labels)
    with contextlib.redirect_stdout(io.StringIO()):
        if results:
            dt = gt.loadRes(results)
        else:
            dt = COCO()
            dt.dataset = {"images": list(gt.dataset["images"]), "annotations": [],
                          "categories": list(gt.dataset["categories"])}
            dt.createIndex()
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.params.iouThrs = np.array([0.5])
        ev.params.areaRng, ev.params.areaRngLbl, ev.params.maxDets = [[0, 1e10]], ["all"], [100]
        ev.evaluate()
    return ev.evalImgs, len(ev.params.imgIds)


def ap50_resampler(preds: Sequence[Mapping[str, Any]],
                   targets: Sequence[Mapping[str, Any]]) -> Callable[[np.ndarray], float]:
    """``fn(idx) -> AP50`` (COCO's, mean over classes with ground truth; -1 when none has) of ``preds`` against
    ``targets`` on the images ``idx`` (an int array; repeats count). Arguments as for
    :func:`~vislab.metrics.detection.coco_map`."""
    if len(preds) != len(targets):
        raise ValueError(f"preds and targets must have one entry per image, got {len(preds)} and {len(targets)}")
    if not any(len(_as_array(t["labels"], "labels", dtype=int).reshape(-1)) for t in targets):
        return lambda idx: -1.0
    evals, n = _matches(preds, targets)
    per_class = []
    for k in range(len(evals) // max(n, 1)):
        block = evals[k * n:(k + 1) * n]
        img, scores, tp, npig = [], [], [], np.zeros(n)
        for i, e in enumerate(block):
            if e is None:
                continue
            keep = ~e["dtIgnore"][0, :100].astype(bool)
            img.append(np.full(int(keep.sum()), i))
            scores.append(np.asarray(e["dtScores"][:100])[keep])
            tp.append(e["dtMatches"][0, :100][keep] > 0)
            npig[i] = np.count_nonzero(e["gtIgnore"] == 0)
        if not img:
            continue
        img_c, scores_c, tp_c = np.concatenate(img), np.concatenate(scores), np.concatenate(tp)
        order = np.argsort(-scores_c, kind="mergesort")  # pycocotools' ranking (ties in image order)
        per_class.append((img_c[order], tp_c[order].astype(float), npig))

    def ap50(idx: np.ndarray) -> float:
        w = np.bincount(np.asarray(idx, dtype=np.int64), minlength=n).astype(float)
        aps = [a for c in per_class if (a := _class_ap(*c, w)) is not None]
        return float(np.mean(aps)) if aps else -1.0

    return ap50


def _class_ap(img: np.ndarray, tp: np.ndarray, npig: np.ndarray, w: np.ndarray) -> float | None:
    """One class's AP on image weights ``w`` (COCOeval.accumulate for one IoU threshold); None without ground
    truth. A detection of an image drawn ``m`` times counts ``m`` times; copies rank next to each other, and
    since they share their TP flag the interpolated precision is that of the last copy."""
    total = float(w @ npig)
    if total == 0:
        return None
    dw = w[img]
    keep = dw > 0
    if not keep.any():
        return 0.0
    dw, tpk = dw[keep], tp[keep]
    tps, fps = np.cumsum(tpk * dw), np.cumsum((1 - tpk) * dw)
    rc = tps / total
    pr = tps / (tps + fps + np.spacing(1))
    pr = np.maximum.accumulate(pr[::-1])[::-1]  # the precision envelope
    inds = np.searchsorted(rc, _REC_THRS, side="left")
    q = np.where(inds < len(pr), pr[np.minimum(inds, len(pr) - 1)], 0.0)
    return float(q.mean())


__all__ = ["ap50_resampler"]
