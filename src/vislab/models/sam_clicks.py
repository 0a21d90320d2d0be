"""Interactive evaluation of prompted segmentation: simulated clicks, NoC, a prompt table, and prompt sampling
for training with mixed prompts.

**The simulated-click protocol** (Xu et al. 2016; the version of RITM, Sofiiuk et al. 2022, ``isegm/inference/
clicker.py``, which SAM's interactive evaluation follows, Kirillov et al. 2023, appendix D):

* click 1 is the object pixel farthest from its boundary: the maximum of the Euclidean distance transform of
  the ground-truth mask, the image border counted as boundary (the mask is zero-padded by one pixel);
* click ``k + 1`` goes to the centre of the largest error of prediction ``k``: the distance transforms of the
  false-negative and false-positive masks (zero-padded likewise) are compared, the larger maximum wins; the
  click lies at that maximum, **positive** in a false negative, **negative** in a false positive. "Largest"
  is RITM's: the error region whose deepest pixel lies farthest from its edge (``criterion="area"``: the
  connected error region with most pixels, clicked at its own deepest pixel). A pixel is never clicked twice
  (RITM's ``not_clicked_map``); ties go to the first pixel in raster order;
* every round passes all clicks so far and the previous round's low-resolution logits as the mask prompt;
* once the prediction equals the ground truth no click is added and the scores carry over.

With ``box``, round 0 is the box alone and every click adds to it ("box + clicks").

**NoC@τ** (number of clicks): the first ``k`` with IoU ≥ τ; an object never reaching τ within the ``N`` clicks
counts ``N``, as RITM and f-BRS count it (they cap at N = 20); the number of such objects is reported next
to it (NoF, "number of failures"), so the cap is never hidden. With a box, a box alone reaching τ counts 0.

**Coordinates.** Clicks are pixels ``(row, col)``; they are given to the predictor as vislab's continuous
``(x, y) = (col + 0.5, row + 0.5)``, boxes as the mask's tight box (``vislab.data.masks.mask_boxes``), i.e.
:class:`vislab.models.sam.SamPrompter` with ``coords="pixel"``, the convention the decoder trains with. Any
object with ``set_image(image)`` and ``predict(point_coords, point_labels, box, mask_input,
multimask_output) -> (masks, iou_predictions, low_res_logits)`` in that convention can be evaluated (the
click-seeded classical baseline, :class:`vislab.models.seg_baselines.ClickSeededSegmenter`, is one).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["ClickRun", "ClickEvaluation", "PromptBatch", "add_error_clicks", "as_predictor", "evaluate_clicks",
           "first_click", "next_click", "noc", "parse_prompt_kind", "plot_click_sequences", "plot_iou_vs_clicks",
           "prompt_points", "prompt_table", "sample_prompts", "simulate_clicks"]

PROMPT_SAMPLING = ("box", "points", "mixed")


# ---------------------------------------------------------------------------------------------
# where the clicks go
# ---------------------------------------------------------------------------------------------


def _as_bool_mask(mask: Any, name: str = "mask") -> np.ndarray:
    m = mask.detach().cpu().numpy() if isinstance(mask, Tensor) else np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [H, W] mask, got shape {m.shape}")
    if m.dtype != bool:
        if m.size and not np.isin(m, (0, 1)).all():
            raise ValueError(f"{name} must be binary (bool or 0/1); threshold it first")
        m = m.astype(bool)
    return m


def _padded_dt(mask: np.ndarray) -> np.ndarray:
    """The Euclidean distance transform of ``mask`` with the image border as background (RITM pads by 1)."""
    from scipy.ndimage import distance_transform_edt

    return distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]


def first_click(gt: Any) -> tuple[int, int]:
    """``(row, col)`` of the object pixel farthest from its boundary (the first in raster order on ties)."""
    g = _as_bool_mask(gt, "gt")
    if not g.any():
        raise ValueError("gt is empty: there is no object to click on")
    dt = _padded_dt(g)
    r, c = np.unravel_index(int(np.argmax(dt)), dt.shape)
    return int(r), int(c)


def _largest_component(err: np.ndarray) -> np.ndarray:
    from scipy.ndimage import label

    lab, n = label(err)
    if n <= 1:
        return err
    sizes = np.bincount(lab.ravel())[1:]
    return lab == (int(np.argmax(sizes)) + 1)


def next_click(gt: Any, pred: Any, clicked: np.ndarray | None = None, *,
               criterion: str = "depth") -> tuple[int, int, bool] | None:
    """``(row, col, positive)``: the next simulated click for prediction ``pred`` of ``gt``; ``None`` when
    ``pred`` equals ``gt`` (or every error pixel has been clicked already).

    ``clicked``: a bool ``[H, W]`` map of pixels clicked before (never clicked again). ``criterion``:
    ``"depth"`` (RITM: the error region with the deepest interior) or ``"area"`` (the largest connected
    error region by pixel count, clicked at its deepest pixel).
    """
    if criterion not in ("depth", "area"):
        raise ValueError(f"criterion must be 'depth' or 'area', got {criterion!r}")
    g, p = _as_bool_mask(gt, "gt"), _as_bool_mask(pred, "pred")
    if g.shape != p.shape:
        raise ValueError(f"gt {g.shape} and pred {p.shape} must have the same shape")
    allowed = np.ones_like(g) if clicked is None else ~np.asarray(clicked, dtype=bool)
    fn, fp = g & ~p & allowed, ~g & p & allowed
    if not fn.any() and not fp.any():
        return None
    if criterion == "area":
        n_fn = _largest_component(fn).sum() if fn.any() else 0
        n_fp = _largest_component(fp).sum() if fp.any() else 0
        positive = n_fn > n_fp
        region = _largest_component(fn if positive else fp)
        dt = _padded_dt(region) * allowed
    else:
        dt_fn, dt_fp = _padded_dt(fn) * allowed, _padded_dt(fp) * allowed
        positive = dt_fn.max() > dt_fp.max()
        dt = dt_fn if positive else dt_fp
    r, c = np.unravel_index(int(np.argmax(dt)), dt.shape)
    return int(r), int(c), bool(positive)


def noc(ious: Any, threshold: float, *, start: int = 1) -> tuple[int, bool]:
    """``(NoC, reached)``: the first click count whose IoU reaches ``threshold``; ``ious[i]`` is the IoU after
    ``start + i`` clicks. Never reached: the largest click count (RITM's cap), ``reached = False``."""
    v = np.asarray(ious, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"ious must be a non-empty 1-D sequence, got shape {v.shape}")
    hit = np.nonzero(v >= threshold)[0]
    if hit.size:
        return int(hit[0]) + start, True
    return v.size - 1 + start, False


# ---------------------------------------------------------------------------------------------
# running the protocol on a predictor
# ---------------------------------------------------------------------------------------------


def as_predictor(model: Any) -> Any:
    """A predictor in vislab's continuous (``"pixel"``) coordinates: a :class:`BoxPromptSam` or ``Sam`` is
    wrapped in ``SamPrompter(model, coords="pixel")``; a ``SamPrompter`` in SAM's coordinates is refused; any
    other object with ``set_image`` and ``predict`` is taken as it is."""
    from vislab.models.sam import BoxPromptSam, SamPrompter

    if isinstance(model, SamPrompter):
        if model.coords != "pixel":
            raise ValueError("the click protocol gives continuous pixel coordinates: use SamPrompter(model, "
                             "coords='pixel')")
        return model
    if isinstance(model, BoxPromptSam):
        return SamPrompter(model, coords="pixel")
    try:
        from segment_anything.modeling import Sam

        if isinstance(model, Sam):
            return SamPrompter(model, coords="pixel")
    except ImportError:  # pragma: no cover - segment_anything is a dependency
        pass
    if not (hasattr(model, "set_image") and hasattr(model, "predict")):
        raise TypeError(f"expected a predictor with set_image() and predict(), got {type(model).__name__}")
    return model


def _tight_box(g: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(g.any(1))[0], np.nonzero(g.any(0))[0]
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float64)


def _scores(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    inter = float((pred & gt).sum())
    union = float((pred | gt).sum())
    total = float(pred.sum() + gt.sum())
    return (inter / union if union else 1.0), (2 * inter / total if total else 1.0)


@dataclass
class ClickRun:
    """One object's simulated-click session.

    ``ious[k]``/``dices[k]``: after ``k + start`` clicks (``start`` 1 for clicks alone, 0 with a box: the box
    alone first). ``clicks``: ``(x, y, label)`` in continuous pixel coordinates, in order (fewer than
    requested when the prediction became exact). ``masks``: the prediction of every round when kept.
    """

    ious: np.ndarray
    dices: np.ndarray
    clicks: list[tuple[float, float, int]]
    box: np.ndarray | None = None
    start: int = 1
    masks: list[np.ndarray] = field(default_factory=list)


def simulate_clicks(predictor: Any, gt: Any, *, n_clicks: int = 9, box: Any = None, multimask_first: bool = False,
                    criterion: str = "depth", keep_masks: bool = False) -> ClickRun:
    """Run the protocol for one object on the image already set on ``predictor`` (continuous coordinates).

    Args:
        predictor: see :func:`as_predictor`; ``set_image`` must have been called.
        gt: the object's mask, bool ``[H, W]`` of the set image's size.
        n_clicks: ``N``, the number of clicks.
        box: ``XYXY`` (continuous), or ``True`` for ``gt``'s tight box, or ``None``: no box.
        multimask_first: the first prediction (the box alone, or the first click) asks for SAM's three masks
            and keeps the one with the highest predicted IoU (SAM's advice for an ambiguous single click);
            every later round is single-mask.
        criterion: see :func:`next_click`.
        keep_masks: keep each round's mask (for figures).
    """
    if n_clicks < 1:
        raise ValueError(f"n_clicks must be >= 1, got {n_clicks}")
    g = _as_bool_mask(gt, "gt")
    if not g.any():
        raise ValueError("gt is empty: there is no object to click on")
    bx = None
    if box is True:
        bx = _tight_box(g)
    elif box is not None and box is not False:
        bx = np.asarray(box, dtype=np.float64).reshape(4)
    pts: list[tuple[float, float]] = []
    labels: list[int] = []
    clicked = np.zeros_like(g)
    ious: list[float] = []
    dices: list[float] = []
    masks: list[np.ndarray] = []
    low = None
    pred = None

    def step(first: bool) -> np.ndarray:
        nonlocal low
        multi = bool(multimask_first and first)
        m, q, lo = predictor.predict(point_coords=np.array(pts) if pts else None,
                                     point_labels=np.array(labels) if pts else None, box=bx,
                                     mask_input=None if low is None else low[None],
                                     multimask_output=multi)
        best = int(np.argmax(q)) if multi else 0
        low = None if lo is None else np.asarray(lo)[best]
        out = np.asarray(m[best], dtype=bool)
        if out.shape != g.shape:
            raise ValueError(f"the predictor returned a {out.shape} mask for a {g.shape} object")
        return out

    def record(p: np.ndarray) -> None:
        i, d = _scores(p, g)
        ious.append(i)
        dices.append(d)
        if keep_masks:
            masks.append(p)

    if bx is not None:
        pred = step(first=True)
        record(pred)
    for k in range(n_clicks):
        if pred is None:
            r, c = first_click(g)
            positive = True
        else:
            nxt = next_click(g, pred, clicked, criterion=criterion)
            if nxt is None:  # exact (or nothing left to click): the scores carry over
                record(pred)
                continue
            r, c, positive = nxt
        clicked[r, c] = True
        pts.append((c + 0.5, r + 0.5))
        labels.append(1 if positive else 0)
        pred = step(first=(k == 0 and bx is None))
        record(pred)
    return ClickRun(ious=np.array(ious), dices=np.array(dices),
                    clicks=[(x, y, lab) for (x, y), lab in zip(pts, labels)], box=bx,
                    start=0 if bx is not None else 1, masks=masks)


def _image_key(image: Any) -> int:
    return id(image)


def _iter_objects(predictor: Any, images: Any, masks: Any):
    """Yield ``(i, image, gt)``, calling ``set_image`` only when the image object changes."""
    if len(images) != len(masks):
        raise ValueError(f"images and masks must pair up, got {len(images)} images and {len(masks)} masks")
    last = None
    for i, (image, gt) in enumerate(zip(images, masks)):
        if last is None or _image_key(image) != last:
            predictor.set_image(image)
            last = _image_key(image)
        yield i, image, gt


@dataclass
class ClickEvaluation:
    """Simulated clicks over a set of objects: ``iou``/``dice`` ``[n_objects, rounds]`` (round ``j`` = ``start
    + j`` clicks), ``noc``/``nof`` per threshold (mean NoC; count of objects never reaching it), ``runs``."""

    iou: np.ndarray
    dice: np.ndarray
    noc: dict[float, float]
    nof: dict[float, int]
    start: int
    n_clicks: int
    runs: list[ClickRun]

    def mean_curve(self, metric: str = "iou") -> np.ndarray:
        return getattr(self, metric).mean(axis=0)

    def summary(self) -> dict[str, Any]:
        """JSON-ready: mean IoU and Dice per click count, NoC and NoF per threshold."""
        ks = list(range(self.start, self.start + self.iou.shape[1]))
        return {"clicks": ks, "miou": [round(float(v), 6) for v in self.mean_curve("iou")],
                "mdice": [round(float(v), 6) for v in self.mean_curve("dice")],
                **{f"noc@{round(t * 100)}": round(v, 4) for t, v in self.noc.items()},
                **{f"nof@{round(t * 100)}": v for t, v in self.nof.items()},
                "objects": int(self.iou.shape[0]), "max_clicks": self.n_clicks}


def evaluate_clicks(predictor: Any, images: Any, masks: Any, *, n_clicks: int = 9, box: bool = False,
                    boxes: Any = None, thresholds: tuple[float, ...] = (0.85, 0.90), multimask_first: bool = False,
                    criterion: str = "depth", keep_masks: bool = False) -> ClickEvaluation:
    """:func:`simulate_clicks` for every object: ``images[i]`` (``uint8 Tensor[3, H, W]`` or ``ndarray[H, W,
    3]``; consecutive entries that are the same object are encoded once) with ``masks[i]`` (bool ``[H, W]``).
    ``box=True``: box + clicks, with ``boxes[i]`` (continuous XYXY) or each mask's tight box."""
    pred = as_predictor(predictor)
    if boxes is not None and len(boxes) != len(masks):
        raise ValueError(f"boxes must have one row per mask, got {len(boxes)} for {len(masks)}")
    runs = []
    for i, _, gt in _iter_objects(pred, images, masks):
        b = (boxes[i] if boxes is not None else True) if box else None
        runs.append(simulate_clicks(pred, gt, n_clicks=n_clicks, box=b, multimask_first=multimask_first,
                                    criterion=criterion, keep_masks=keep_masks))
    if not runs:
        raise ValueError("no objects to evaluate")
    iou_arr = np.stack([r.ious for r in runs])
    start = runs[0].start
    nocs: dict[float, float] = {}
    nofs: dict[float, int] = {}
    for t in thresholds:
        res = [noc(r.ious, t, start=start) for r in runs]
        nocs[t] = float(np.mean([n for n, _ in res]))
        nofs[t] = int(sum(not ok for _, ok in res))
    return ClickEvaluation(iou=iou_arr, dice=np.stack([r.dices for r in runs]), noc=nocs, nof=nofs, start=start,
                           n_clicks=n_clicks, runs=runs)


# ---------------------------------------------------------------------------------------------
# the prompt table
# ---------------------------------------------------------------------------------------------

_KIND = re.compile(r"^\s*(box)?\s*\+?\s*(?:(\d+)\s+(points?|clicks?))?\s*$")


def parse_prompt_kind(kind: str) -> tuple[bool, int, str]:
    """``"box"`` → ``(True, 0, "")``, ``"3 points"`` → ``(False, 3, "points")``, ``"5 clicks"``, ``"box + 2
    clicks"`` → ``(True, 2, "clicks")``, ``"box + 1 point"`` → ``(True, 1, "points")``."""
    m = _KIND.match(kind or "")
    if not m or not (m.group(1) or m.group(2)):
        raise ValueError(f"prompt kind must be 'box', 'N points', 'N clicks' or 'box + N clicks', got {kind!r}")
    with_box, n = bool(m.group(1)), int(m.group(2) or 0)
    what = "" if not m.group(3) else ("points" if m.group(3).startswith("point") else "clicks")
    if m.group(2) and n < 1:
        raise ValueError(f"prompt kind needs at least one point or click, got {kind!r}")
    return with_box, n, what


def prompt_points(gt: Any, n: int) -> list[tuple[int, int]]:
    """``n`` positive points ``(row, col)`` placed at once, without seeing a prediction: the first is the first
    click (the deepest pixel); each next one is the object's pixel farthest from the points so far among its
    inner pixels (depth at least half the deepest): farthest-point sampling of the object's core, so a band or
    a ring gets points along its length. Deterministic (ties: raster order)."""
    from scipy.ndimage import distance_transform_edt

    g = _as_bool_mask(gt, "gt")
    if not g.any():
        raise ValueError("gt is empty: there is no object to place points on")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    depth = _padded_dt(g)
    core = depth >= max(1.0, depth.max() / 2)
    out = [first_click(g)]
    for _ in range(n - 1):
        seeds = np.ones_like(g)
        for r, c in out:
            seeds[r, c] = False
        score = distance_transform_edt(seeds) * core
        if score.max() <= 0:
            break
        r, c = np.unravel_index(int(np.argmax(score)), score.shape)
        out.append((int(r), int(c)))
    return out


def prompt_table(predictor: Any, images: Any, masks: Any, *,
                 prompt_kinds: tuple[str, ...] = ("box", "1 point", "3 points", "5 clicks"), boxes: Any = None,
                 tau: float = 2.0, dilation_ratio: float = 0.02, multimask_first: bool = False) -> dict[str, Any]:
    """IoU, Dice, NSD (``tau`` px) and boundary IoU (``dilation_ratio``) per object and prompt kind.

    Prompt kinds (:func:`parse_prompt_kind`): ``"box"`` (``boxes[i]``, continuous XYXY, or the tight box),
    ``"N points"`` (:func:`prompt_points`, all positive, given at once: one prediction), ``"N clicks"`` (the
    simulated-click protocol, the prediction after click N), ``"box + N points"``, ``"box + N clicks"``.
    Single-mask predictions, except that ``multimask_first`` picks the best of three (by predicted IoU) for a
    lone box or point.

    Returns ``{"rows": [{"object", "kind", "iou", "dice", "nsd", "boundary_iou"}, ...], "mean": {kind:
    {metric: mean}}, "tau": tau, "dilation_ratio": dilation_ratio}``.
    """
    from vislab.metrics.boundary import boundary_iou, nsd

    parsed = [(k, parse_prompt_kind(k)) for k in prompt_kinds]
    pred = as_predictor(predictor)
    if boxes is not None and len(boxes) != len(masks):
        raise ValueError(f"boxes must have one row per mask, got {len(boxes)} for {len(masks)}")
    rows: list[dict[str, Any]] = []
    for i, _, gt in _iter_objects(pred, images, masks):
        g = _as_bool_mask(gt, "gt")
        box = np.asarray(boxes[i], dtype=np.float64) if boxes is not None else _tight_box(g)
        for name, (with_box, n, what) in parsed:
            if what == "clicks":
                run = simulate_clicks(pred, g, n_clicks=n, box=box if with_box else None,
                                      multimask_first=multimask_first, keep_masks=True)
                out = run.masks[-1]
            else:
                pts = [(c + 0.5, r + 0.5) for r, c in prompt_points(g, n)] if what == "points" else []
                multi = bool(multimask_first and (len(pts) + with_box) == 1)
                m, q, _ = pred.predict(point_coords=np.array(pts) if pts else None,
                                       point_labels=np.ones(len(pts), dtype=np.int64) if pts else None,
                                       box=box if with_box else None, mask_input=None, multimask_output=multi)
                out = np.asarray(m[int(np.argmax(q)) if multi else 0], dtype=bool)
            iou_v, dice_v = _scores(out, g)
            pt, gt_t = torch.from_numpy(out)[None], torch.from_numpy(g)[None]
            rows.append({"object": i, "kind": name, "iou": iou_v, "dice": dice_v,
                         "nsd": float(nsd(pt, gt_t, tau=tau)[0]),
                         "boundary_iou": float(boundary_iou(pt, gt_t, dilation_ratio=dilation_ratio)[0])})
    mean = {name: {k: float(np.mean([r[k] for r in rows if r["kind"] == name]))
                   for k in ("iou", "dice", "nsd", "boundary_iou")} for name, _ in parsed}
    return {"rows": rows, "mean": mean, "tau": tau, "dilation_ratio": dilation_ratio}


# ---------------------------------------------------------------------------------------------
# prompts for training (SAM / SAM-Med2D recipe)
# ---------------------------------------------------------------------------------------------


@dataclass
class PromptBatch:
    """Prompts for :meth:`vislab.models.sam.SamDecoder.decode` (continuous coordinates of the ``S × S`` image).

    ``kind``: ``"box"``, ``"points"`` or ``"clicks"``; ``boxes`` ``Tensor[B, 4]`` or ``None``; ``points``
    ``Tensor[B, N, 2]`` and ``point_labels`` ``Tensor[B, N]`` (1 / 0 / -1 padding) or ``None``;
    ``click_rounds``: for ``"clicks"``, how many error-click rounds the training loop runs after the first
    prediction (:func:`add_error_clicks`, each with the previous low-res logits as mask prompt).
    """

    kind: str
    boxes: Tensor | None = None
    points: Tensor | None = None
    point_labels: Tensor | None = None
    click_rounds: int = 0

    def decoder_kwargs(self) -> dict[str, Any]:
        return {"boxes": self.boxes, "points": self.points, "point_labels": self.point_labels}


def _randint(lo: int, hi: int, generator: torch.Generator | None) -> int:
    return int(torch.randint(lo, hi + 1, (1,), generator=generator))


def _sample_pixels(where: Tensor, k: int, generator: torch.Generator | None) -> Tensor:
    """``k`` pixel centres ``Tensor[k, 2]`` XY drawn uniformly (with replacement) from the True pixels of
    ``where`` ``[H, W]``."""
    idx = where.nonzero()  # (P, 2) row, col
    pick = idx[torch.randint(0, idx.shape[0], (k,), generator=generator)]
    return torch.stack([pick[:, 1], pick[:, 0]], dim=1).float() + 0.5  # (k, 2) XY


def sample_prompts(masks: Tensor, kind: str = "mixed", *, generator: torch.Generator | None = None,
                   max_shift: float = 0.0, max_pos: int = 3, max_neg: int = 2, neg_margin: float = 0.1,
                   click_rounds: tuple[int, int] = (1, 8), p_kinds: tuple[float, float, float] = (0.4, 0.3, 0.3),
                   box_first: float = 0.5, others: Tensor | None = None, neg_others: float = 0.0,
                   others_margin: float = 0.5) -> PromptBatch:
    """Prompts for a batch of ground-truth masks ``Tensor[B, H, W]``, one kind for the whole batch (SAM's prompt
    tokens must line up across a batch: a batch holds boxes, or points, not both).

    * ``"box"``: each mask's tight box (``mask_boxes``), sides moved outward by uniform 0..``max_shift`` px
      (MedSAM's jitter, ``jitter_boxes``; SAM: up to 20 px at 1024).
    * ``"points"``: per mask, 1..``max_pos`` positive points uniform on the mask and 0..``max_neg`` negative
      points uniform on the background inside the tight box grown by ``neg_margin`` of its size each side
      (anywhere in the background when that ring is empty), padded with label -1 to the batch's longest
      (SAM-Med2D's positive/negative point sampling; SAM's first click is one uniform positive point).
      With ``others`` (``Tensor[B, H, W]`` bool: the scene's other objects), each negative point lands, with
      probability ``neg_others``, on another object inside the tight box grown by ``others_margin`` of its size
      each side (a neighbour the mask could leak into), where there is one.
    * ``"mixed"``: draws ``"box"``, ``"points"`` or ``"clicks"`` with probabilities ``p_kinds``; ``"clicks"``
      starts from the jittered box (probability ``box_first``) or one uniform positive point -- SAM's first
      prompt, "a foreground point or bounding box with equal probability" -- and asks the training loop for
      ``click_rounds`` (uniform in the inclusive range) error-click rounds (SAM's iterative training: a click
      from the error region, the previous logits as mask prompt; see :func:`add_error_clicks`).

    Masks must be non-empty. The same generator state gives the same prompts.
    """
    from vislab.data.masks import jitter_boxes, mask_boxes

    if kind not in PROMPT_SAMPLING:
        raise ValueError(f"kind must be one of {', '.join(PROMPT_SAMPLING)}, got {kind!r}")
    if masks.ndim != 3:
        raise ValueError(f"masks must be Tensor[B, H, W], got {tuple(masks.shape)}")
    m = masks.bool()
    if m.shape[0] == 0 or not bool(m.flatten(1).any(1).all()):
        raise ValueError("every mask must be non-empty")
    if max_pos < 1 or max_neg < 0:
        raise ValueError(f"max_pos must be >= 1 and max_neg >= 0, got {max_pos}, {max_neg}")
    b, h, w = m.shape
    if not 0.0 <= neg_others <= 1.0:
        raise ValueError(f"neg_others must be a probability in [0, 1], got {neg_others}")
    if others is not None and tuple(others.shape) != (b, h, w):
        raise ValueError(f"others must be Tensor[{b}, {h}, {w}] like masks, got {tuple(others.shape)}")
    if kind == "mixed":
        p = torch.tensor(p_kinds, dtype=torch.float64)
        if p.shape != (3,) or (p < 0).any() or p.sum() <= 0:
            raise ValueError(f"p_kinds must be three non-negative weights (box, points, clicks), got {p_kinds}")
        kind = ("box", "points", "clicks")[int(torch.multinomial(p / p.sum(), 1, generator=generator))]
    tight = mask_boxes(m)  # (B, 4)
    if kind == "box":
        return PromptBatch("box", boxes=jitter_boxes(tight, image_size=(h, w), max_shift=max_shift,
                                                      generator=generator))
    if kind == "clicks":
        lo, hi = click_rounds
        if not 0 <= lo <= hi:
            raise ValueError(f"click_rounds must be (lo, hi) with 0 <= lo <= hi, got {click_rounds}")
        if not 0.0 <= box_first <= 1.0:
            raise ValueError(f"box_first must be a probability in [0, 1], got {box_first}")
        rounds = _randint(lo, hi, generator)
        if float(torch.rand(1, generator=generator)) < box_first:
            return PromptBatch("clicks", boxes=jitter_boxes(tight, image_size=(h, w), max_shift=max_shift,
                                                            generator=generator), click_rounds=rounds)
        pts = torch.stack([_sample_pixels(m[i], 1, generator) for i in range(b)])  # (B, 1, 2)
        return PromptBatch("clicks", points=pts, point_labels=torch.ones(b, 1, dtype=torch.long),
                           click_rounds=rounds)
    def grown(box: list[float], margin: float) -> Tensor:
        x0, y0, x1, y1 = box
        mx, my = margin * (x1 - x0), margin * (y1 - y0)
        out = torch.zeros(h, w, dtype=torch.bool)
        out[max(0, math.floor(y0 - my)):min(h, math.ceil(y1 + my)), max(0, math.floor(x0 - mx)):min(w, math.ceil(
            x1 + mx))] = True
        return out

    per: list[tuple[Tensor, Tensor]] = []
    for i in range(b):
        n_pos, n_neg = _randint(1, max_pos, generator), _randint(0, max_neg, generator)
        ring = grown(tight[i].tolist(), neg_margin) & ~m[i]
        if not ring.any():
            ring = ~m[i]
        if not ring.any():
            n_neg = 0
        pos = _sample_pixels(m[i], n_pos, generator)
        neg = _sample_pixels(ring, n_neg, generator) if n_neg else torch.zeros(0, 2)
        if n_neg and others is not None and neg_others > 0:
            near = others[i].bool() & ~m[i] & grown(tight[i].tolist(), others_margin)
            on_other = torch.rand(n_neg, generator=generator) < neg_others
            if near.any() and on_other.any():
                neg[on_other] = _sample_pixels(near, int(on_other.sum()), generator)
        per.append((torch.cat([pos, neg]), torch.cat([torch.ones(n_pos), torch.zeros(n_neg)]).long()))
    n = max(p.shape[0] for p, _ in per)
    points = torch.zeros(b, n, 2)
    labels = torch.full((b, n), -1, dtype=torch.long)
    for i, (p, lab) in enumerate(per):
        points[i, :p.shape[0]] = p
        labels[i, :p.shape[0]] = lab
    return PromptBatch("points", points=points, point_labels=labels)


def add_error_clicks(prompts: PromptBatch, masks: Tensor, pred: Tensor, *, generator: torch.Generator | None = None,
                     mode: str = "random") -> PromptBatch:
    """One more click per prompt from the error of ``pred`` (bool ``Tensor[B, H, W]``) against ``masks``: a
    positive click in a false-negative pixel or a negative one in a false-positive pixel, the error type
    chosen in proportion to its size (``mode="random"``, SAM's training: uniform over the error region) or
    RITM's centre of the largest error (``mode="center"``). A prompt whose prediction is exact gets a
    padding point (label -1). Returns a new :class:`PromptBatch` of kind ``"clicks"`` (boxes kept)."""
    if mode not in ("random", "center"):
        raise ValueError(f"mode must be 'random' or 'center', got {mode!r}")
    if masks.shape != pred.shape or masks.ndim != 3:
        raise ValueError(f"masks and pred must both be Tensor[B, H, W], got {tuple(masks.shape)} and "
                         f"{tuple(pred.shape)}")
    g, p = masks.bool(), pred.bool()
    b = g.shape[0]
    new_pts = torch.zeros(b, 1, 2)
    new_lab = torch.full((b, 1), -1, dtype=torch.long)
    for i in range(b):
        fn, fp = g[i] & ~p[i], ~g[i] & p[i]
        n_fn, n_fp = int(fn.sum()), int(fp.sum())
        if n_fn + n_fp == 0:
            continue
        if mode == "center":
            nxt = next_click(g[i].numpy(), p[i].numpy())
            assert nxt is not None
            r, c, positive = nxt
            new_pts[i, 0] = torch.tensor([c + 0.5, r + 0.5])
        else:
            positive = bool(torch.rand(1, generator=generator).item() * (n_fn + n_fp) < n_fn)
            new_pts[i, 0] = _sample_pixels(fn if positive else fp, 1, generator)[0]
        new_lab[i, 0] = 1 if positive else 0
    if prompts.points is None:
        points, labels = new_pts, new_lab
    else:
        points = torch.cat([prompts.points, new_pts], dim=1)
        labels = torch.cat([prompts.point_labels, new_lab], dim=1)  # type: ignore[list-item]
    return PromptBatch("clicks", boxes=prompts.boxes, points=points, point_labels=labels,
                       click_rounds=max(0, prompts.click_rounds - 1))


# ---------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------


def plot_iou_vs_clicks(curves: dict[str, ClickEvaluation], path: Any, *, thresholds: tuple[float, ...] = (0.85, 0.9),
                       title: str | None = None) -> Any:
    """Mean IoU against the number of clicks, one line per row (``{"fine-tuned": evaluation, ...}``), NoC@τ in
    the legend; dotted lines at the thresholds. Saves ``path`` (PNG) and returns it."""
    from vislab.report.figures import plt, save_figure

    if not curves:
        raise ValueError("curves is empty")
    fig, ax = plt.subplots(figsize=(7.6, 3.6))
    for name, ev in curves.items():
        ks = np.arange(ev.start, ev.start + ev.iou.shape[1])
        noc_txt = ", ".join(f"NoC@{round(t * 100)} {ev.noc[t]:.2f}" for t in thresholds if t in ev.noc)
        boxed = ev.start == 0  # box + clicks: dashed, the same colour family as its clicks-only row
        ax.plot(ks, ev.mean_curve("iou"), marker="s" if boxed else "o", ms=3, ls="--" if boxed else "-",
                label=f"{name} ({noc_txt})" if noc_txt else name)
    for t in thresholds:
        ax.axhline(t, color="0.6", lw=0.8, ls=":")
    ax.set_xlabel("clicks")
    ax.set_ylabel("mean IoU")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)  # beside, not over
    if title:
        ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def plot_click_sequences(images: list[Any], runs: list[ClickRun], masks: list[Any], path: Any, *,
                         titles: list[str] | None = None) -> Any:
    """Each object with its ground-truth outline, its click sequence (green positive, red negative, numbered),
    the box when there was one (yellow) and the final prediction tinted, its IoU in the title; one panel per
    object. ``runs`` from :func:`simulate_clicks` with ``keep_masks=True``. Saves ``path`` and returns it."""
    from vislab.report.figures import plt, save_figure

    if not (len(images) == len(runs) == len(masks)) or not runs:
        raise ValueError(f"images, runs and masks must pair up and be non-empty, got {len(images)}, {len(runs)}, "
                         f"{len(masks)}")
    n = len(runs)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.5 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for j, (image, run, gt) in enumerate(zip(images, runs, masks)):
        ax = axes.ravel()[j]
        img = image.permute(1, 2, 0).numpy() if isinstance(image, Tensor) else np.asarray(image)
        ax.imshow(img)
        if run.masks:
            tint = np.zeros(img.shape[:2] + (4,))
            tint[run.masks[-1]] = (0.1, 0.5, 1.0, 0.45)
            ax.imshow(tint)
        ax.contour(_as_bool_mask(gt, "gt").astype(float), levels=[0.5], colors="white", linewidths=0.8)
        if run.box is not None:
            x0, y0, x1, y1 = run.box
            ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="yellow", lw=1))
        for k, (x, y, lab) in enumerate(run.clicks, start=1):
            col = "#22cc22" if lab == 1 else "#ee2222"
            ax.plot(x - 0.5, y - 0.5, "o", ms=5, mfc=col, mec="white", mew=0.6)
            ax.annotate(str(k), (x - 0.5, y - 0.5), xytext=(3, 3), textcoords="offset points", color="white",
                        fontsize=6)
        head = titles[j] if titles else f"object {j}"
        ax.set_title(f"{head}\n{len(run.clicks)} clicks, IoU {run.ious[-1]:.2f}", fontsize=7)
    return save_figure(fig, path)
