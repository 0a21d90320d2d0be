"""Training SAM's decoder on the frozen encoder's embedding cache (the ``sam-finetune`` experiment).

* :class:`SamDecoderTask` — the Lightning task: DiceCE on the decoder's logits for box prompts (MedSAM), points
  or mixed prompts (SAM / SAM-Med2D: a box, points, or a few rounds of error clicks with the previous logits as
  mask prompt, :func:`vislab.models.sam_clicks.sample_prompts`); IoU and Dice per prompt; AdamW with a linear
  warm-up + cosine decay (:mod:`vislab.engine.schedules`) or the engine's plateau schedule.
* :func:`time_epochs` — one epoch with and one without the cache (re-augmenting and re-encoding every image),
  the measurement behind the cache.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from vislab.data.masks import JointAugment, MaskSample, jitter_boxes
from vislab.data.sam_prompts import FixedPrompts, PromptViews, TrainPrompts, augmented_views, deepest_point
from vislab.engine.module import TaskModule
from vislab.engine.schedules import lightning_warmup_cosine
from vislab.losses.dice_ce import DiceCELoss
from vislab.metrics.segmentation import dice, iou

PROMPT_TRAINING = ("box", "points", "mixed")
EVAL_PROMPTS = ("box", "point", "both")


def _scores(logits: Tensor, masks: Tensor) -> Tensor:
    pred, target = logits[:, 0] > 0, masks[:, 0] > 0.5
    return torch.stack([iou(pred, target), dice(pred, target)], dim=1).float()  # (B, 2)


class SamDecoderTask(TaskModule):
    """Trains a :class:`vislab.models.sam.SamDecoder` on cached features with DiceCE.

    ``batch = (features Tensor[B, C, h, w], boxes Tensor[B, 4], masks Tensor[B, 1, S, S], ids Tensor[B])``;
    per-prompt IoU and Dice of the thresholded logits (> 0) are the outputs; the epoch metrics are their
    means over all prompts (``iou`` = mIoU). Monitors ``val/iou`` (max).

    ``prompts``: what training prompts with — ``"box"`` (the batch's boxes), ``"points"`` or ``"mixed"``
    (:func:`~vislab.models.sam_clicks.sample_prompts` per batch, seeded by (``seed``, epoch, the batch's item
    ids), so a resumed run draws the same prompts). ``eval_prompt``: what validation and :func:`evaluate`
    prompt with — ``"box"``, ``"point"`` (each object's deepest pixel) or ``"both"`` (their mean); default:
    ``box`` for box training, ``point`` for points, ``both`` for mixed. ``epoch_s``: wall seconds of each
    training epoch of this process (its training and validation passes). ``click_rounds``: for mixed
    prompts, the (inclusive) range of error-click rounds after the first click (SAM: up to 8 points in all).
    ``iou_weight``: the weight of the IoU head's loss (SAM: 1); the head reads the IoU token detached, so the
    masks train exactly as with ``iou_weight=0`` and the head learns to score them (``segment`` prints it).
    ``neg_others``: for sampled point prompts, the probability that a negative point lands on another object of
    the scene near the prompted one (``train_set.others``; :func:`~vislab.models.sam_clicks.sample_prompts`).
    """

    def __init__(self, decoder: Any, *, loss: DiceCELoss | None = None, train_set: TrainPrompts | None = None,
                 schedule: str = "cosine", warmup: float = 0.03, prompts: str = "box", eval_prompt: str | None = None,
                 jitter: float = 0.0, seed: int = 0, click_rounds: tuple[int, int] = (1, 8), iou_weight: float = 1.0,
                 neg_others: float = 0.0, **kwargs: Any) -> None:
        kwargs.setdefault("monitor", "val/iou")
        kwargs.setdefault("monitor_mode", "max")
        super().__init__(decoder, **kwargs)
        if schedule not in ("cosine", "plateau"):
            raise ValueError(f"schedule must be 'cosine' or 'plateau', got {schedule!r}")
        if prompts not in PROMPT_TRAINING:
            raise ValueError(f"prompts must be one of {', '.join(PROMPT_TRAINING)}, got {prompts!r}")
        eval_prompt = eval_prompt or {"box": "box", "points": "point", "mixed": "both"}[prompts]
        if eval_prompt not in EVAL_PROMPTS:
            raise ValueError(f"eval_prompt must be one of {', '.join(EVAL_PROMPTS)}, got {eval_prompt!r}")
        self.loss_fn = loss if loss is not None else DiceCELoss()
        self.train_set = train_set
        self.schedule = schedule
        self.warmup = float(warmup)
        self.prompts = prompts
        self.eval_prompt = eval_prompt
        self.jitter = float(jitter)
        self.seed = int(seed)
        lo, hi = (int(v) for v in click_rounds)
        if not 0 <= lo <= hi:
            raise ValueError(f"click_rounds must be (lo, hi) with 0 <= lo <= hi, got {tuple(click_rounds)}")
        self.click_rounds = (lo, hi)
        if not iou_weight >= 0:
            raise ValueError(f"iou_weight must be >= 0, got {iou_weight}")
        self.iou_weight = float(iou_weight)
        if not 0.0 <= neg_others <= 1.0:
            raise ValueError(f"neg_others must be a probability in [0, 1], got {neg_others}")
        self.neg_others = float(neg_others)
        self.epoch_s: list[float] = []
        self._epoch_t0 = 0.0

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW; ``"plateau"``: the engine's ReduceLROnPlateau on val IoU; ``"cosine"``: a linear warm-up over
        the first ``warmup`` of the steps, then a cosine decay to 0 at the last planned step."""
        if self.schedule == "plateau":
            return super().configure_optimizers()
        opt = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=self.lr,
                                weight_decay=self.weight_decay)
        return lightning_warmup_cosine(opt, self.trainer, fraction=self.warmup)

    def on_train_epoch_start(self) -> None:
        self._epoch_t0 = time.perf_counter()
        if self.train_set is not None:
            self.train_set.set_epoch(self.current_epoch)

    def on_train_epoch_end(self) -> None:  # Lightning validates before this hook: the epoch's full wall time
        self.epoch_s.append(time.perf_counter() - self._epoch_t0)

    # -- prompts --------------------------------------------------------------------------------
    def _predict(self, feats: Tensor, boxes: Tensor | None = None, *, points: Tensor | None = None,
                 point_labels: Tensor | None = None, mask_input: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``(low-res logits, logits Tensor[B, 1, S, S], predicted IoU Tensor[B, 1])`` of the single-mask output;
        the IoU head reads the IoU token detached (``detach_iou``), so its loss leaves the masks as they were."""
        low, iou_pred = self.model.decode(feats, boxes, points=points, point_labels=point_labels,
                                          mask_input=mask_input, detach_iou=True)
        return low, self.model.upsample(low), iou_pred

    def point_predict(self, feats: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
        """``(logits, predicted IoU)`` for one positive point per prompt: each object's deepest pixel."""
        pts = torch.stack([deepest_point(m[0].cpu() > 0.5) for m in masks])[:, None].to(feats.device)  # (B, 1, 2)
        return self._predict(feats, points=pts, point_labels=torch.ones(pts.shape[:2], dtype=torch.long,
                                                                         device=feats.device))[1:]

    def point_logits(self, feats: Tensor, masks: Tensor) -> Tensor:
        """Logits for one positive point per prompt: each object's deepest pixel."""
        return self.point_predict(feats, masks)[0]

    def sampled_logits(self, feats: Tensor, boxes: Tensor, masks: Tensor, ids: Tensor) -> Tensor:
        """The last training logits of :meth:`supervised` (the prediction after every click round)."""
        return self.supervised(feats, boxes, masks, ids)[-1][0]

    def supervised_logits(self, feats: Tensor, boxes: Tensor, masks: Tensor, ids: Tensor) -> list[Tensor]:
        """The logits of :meth:`supervised`."""
        return [logits for logits, _ in self.supervised(feats, boxes, masks, ids)]

    def supervised(self, feats: Tensor, boxes: Tensor, masks: Tensor, ids: Tensor) -> list[tuple[Tensor, Tensor]]:
        """``(logits, predicted IoU)`` for training prompts drawn by
        :func:`~vislab.models.sam_clicks.sample_prompts`, each of which the loss sees. For click prompts (a box
        or one point first, then ``click_rounds`` rounds of error clicks, each passing the previous
        low-resolution logits, detached, as the mask prompt: SAM's iterative training) every round's
        prediction, as SAM puts the loss on every round. Half the click batches (drawn with the prompts) take
        each next click uniformly from the error region (SAM), the other half at the centre of the largest
        error region (RITM's training and the evaluation protocol, :func:`~vislab.models.sam_clicks.next_click`)."""
        from vislab.models.sam_clicks import add_error_clicks, sample_prompts

        if self.prompts == "box":
            return [self._predict(feats, boxes)[1:]]
        state = np.random.SeedSequence([self.seed, int(self.current_epoch), *ids.cpu().tolist()[:8]])
        gen = torch.Generator().manual_seed(int(state.generate_state(1)[0]))
        target = masks[:, 0].cpu() > 0.5  # (B, S, S)
        others = self.train_set.others(ids.cpu()) if self.neg_others > 0 and self.train_set is not None else None
        pb = sample_prompts(target, self.prompts, generator=gen, max_shift=self.jitter, click_rounds=self.click_rounds,
                            others=others, neg_others=self.neg_others)
        if pb.kind == "box":
            return [self._predict(feats, boxes)[1:]]
        dev = feats.device

        def prompt(pb: Any) -> dict[str, Any]:
            return {k: None if v is None else v.to(dev) for k, v in pb.decoder_kwargs().items()}

        mode = "center" if float(torch.rand(1, generator=gen)) < 0.5 else "random"
        out: list[tuple[Tensor, Tensor]] = []
        low = None
        for _ in range(pb.click_rounds):
            low, logits, iou_pred = self._predict(feats, **prompt(pb), mask_input=low)  # (B, 1, 4h, 4w), ...
            out.append((logits, iou_pred))
            low = low.detach()
            pb = add_error_clicks(pb, target, logits.detach()[:, 0].cpu() > 0, generator=gen, mode=mode)
        out.append(self._predict(feats, **prompt(pb), mask_input=low)[1:])
        return out

    def compute_loss(self, batch: Any) -> tuple[Tensor, Tensor, Tensor]:
        """Training: DiceCE on every supervised prediction, plus ``iou_weight`` × the mean squared error of the
        predicted IoU against the IoU the thresholded mask really has (SAM's IoU-head loss; the head alone
        learns from it). Evaluation outputs per prompt: ``(IoU, Dice, predicted IoU)``."""
        feats, boxes, masks, ids = batch
        if self.training:
            preds = self.supervised(feats, boxes, masks, ids)
            loss = torch.stack([self.loss_fn(p, masks) for p, _ in preds]).mean()
            if self.iou_weight:
                loss = loss + self.iou_weight * torch.stack(
                    [F.mse_loss(q[:, 0].float(), _scores(p.detach(), masks)[:, 0]) for p, q in preds]).mean()
            with torch.no_grad():
                return loss, _scores(preds[-1][0], masks), ids
        losses, outs = [], []
        if self.eval_prompt in ("box", "both"):
            _, logits, iou_pred = self._predict(feats, boxes)
            losses.append(self.loss_fn(logits, masks))
            outs.append(torch.cat([_scores(logits, masks), iou_pred.float()], dim=1))
        if self.eval_prompt in ("point", "both"):
            logits, iou_pred = self.point_predict(feats, masks)
            losses.append(self.loss_fn(logits, masks))
            outs.append(torch.cat([_scores(logits, masks), iou_pred.float()], dim=1))
        return torch.stack(losses).mean(), torch.stack(outs).mean(0), ids

    def metrics(self, outputs: Tensor, targets: Tensor) -> dict[str, float]:
        return {"iou": float(outputs[:, 0].mean()), "dice": float(outputs[:, 1].mean())}


# ---------------------------------------------------------------------------------------------
# timing an epoch without the cache
# ---------------------------------------------------------------------------------------------


def _train_step(decoder: Any, opt: torch.optim.Optimizer, loss_fn: DiceCELoss, feats: Tensor, boxes: Tensor,
                masks: Tensor) -> None:
    loss = loss_fn(decoder(feats, boxes), masks)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _by_image(objects: list[tuple[int, int]]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for j, (img, _) in enumerate(objects):
        out.setdefault(img, []).append(j)
    return out


def time_epochs(model: Any, train: TrainPrompts, samples: list[MaskSample], val: FixedPrompts, *,
                augment: JointAugment, batch_size: int, lr: float, weight_decay: float, seed: int, jitter: float,
                device: torch.device | str = "cpu", fraction: float = 1.0) -> dict[str, float]:
    """Seconds of one epoch (training pass + validation pass) with and without the embedding cache.

    Both run the same bare loop (AdamW steps on a copy of ``model.decoder``: the model is untouched), over the
    prompts of a seeded ``fraction`` of the training images and all of validation; the training part is
    scaled by ``1 / fraction`` to a full epoch. *Cached*: features come from the cache. *Uncached*: every
    training image is augmented and encoded again, then its prompts decoded (images grouped so that a step
    holds about ``batch_size`` prompts -- the cheapest way to re-encode), and validation images are encoded
    again too. Returns ``fraction``, ``cached_epoch_s``, ``uncached_epoch_s``, ``uncached_encode_s``.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    n = len(samples)
    n_sub = max(1, min(n, round(fraction * n)))
    scale = n / n_sub
    subset = sorted(np.random.default_rng([seed, 10_000]).permutation(n)[:n_sub].tolist())
    keep = set(subset)
    loss_fn = DiceCELoss()
    size = train.size
    out: dict[str, float] = {"fraction": n_sub / n}

    def fresh() -> tuple[Any, torch.optim.Optimizer]:
        dec = copy.deepcopy(model.decoder).to(device).train()
        return dec, torch.optim.AdamW([p for p in dec.parameters() if p.requires_grad], lr=lr,
                                      weight_decay=weight_decay)

    # -- cached ----------------------------------------------------------------------------------
    decoder, opt = fresh()
    prompts = [j for j, (img, _) in enumerate(train.pv.objects) if img in keep]
    loader = DataLoader(Subset(train, prompts), batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed + 10_000))
    t0 = time.perf_counter()
    for feats, boxes, masks, _ in loader:
        _train_step(decoder, opt, loss_fn, feats.to(device), boxes.to(device), masks.to(device))
    t1 = time.perf_counter()
    decoder.eval()
    with torch.no_grad():
        for feats, boxes, _, _ in DataLoader(val, batch_size=batch_size):
            decoder(feats.to(device), boxes.to(device))
    out["cached_epoch_s"] = (t1 - t0) * scale + (time.perf_counter() - t1)

    # -- uncached: augment + encode again ----------------------------------------------------------
    decoder, opt = fresh()
    encoder = model.encoder.to(device)
    mean_objects = max(1.0, sum(len(s.kinds) for s in samples) / max(1, n))
    per_step = max(1, min(round(batch_size / mean_objects), int(getattr(encoder, "batch", 16))))
    gen = torch.Generator().manual_seed(seed + 10_000)
    enc_train = 0.0
    t0 = time.perf_counter()
    for s0 in range(0, len(subset), per_step):
        imgs, masks_l, boxes_l = [], [], []
        for i in subset[s0:s0 + per_step]:
            s = samples[i]
            img, inst, bx = augmented_views(s, copies=2, augment=augment, seed=seed + 10_000, index=i)[1]
            imgs.append(img)
            masks_l += [inst == k + 1 for k in range(len(s.kinds))]
            boxes_l.append(bx)
        te = time.perf_counter()
        with torch.no_grad():
            feats = encoder(torch.stack(imgs).to(device))  # (b, C, h, w): each image once
        enc_train += time.perf_counter() - te
        reps = torch.tensor([b.shape[0] for b in boxes_l], device=device)
        feats = torch.repeat_interleave(feats, reps, dim=0)  # (prompts, C, h, w)
        bx = jitter_boxes(torch.cat(boxes_l), image_size=(size, size), max_shift=jitter, generator=gen).to(device)
        _train_step(decoder, opt, loss_fn, feats, bx, torch.stack(masks_l)[:, None].float().to(device))
    t1 = time.perf_counter()
    decoder.eval()
    by_image = _by_image(val.pv.objects)
    images = list(by_image)
    enc_val = 0.0
    with torch.no_grad():
        for i0 in range(0, len(images), per_step):
            chunk = images[i0:i0 + per_step]
            te = time.perf_counter()
            feats = encoder(torch.stack([val.pv.images[i] for i in chunk]).to(device))  # each image once
            enc_val += time.perf_counter() - te
            reps = torch.tensor([len(by_image[i]) for i in chunk], device=device)
            idx = [j for i in chunk for j in by_image[i]]
            decoder(torch.repeat_interleave(feats, reps, dim=0), val.boxes[idx].to(device))
    out["uncached_epoch_s"] = (t1 - t0) * scale + (time.perf_counter() - t1)
    out["uncached_encode_s"] = enc_train * scale + enc_val
    return out


def cache_summary(pv: dict[str, PromptViews], cache_s: float, *, views_per_image: int, epoch_s: list[float],
                  timing: dict[str, float] | None) -> dict[str, Any]:
    """The embedding cache's sizes and timings: ``pv`` the cache per split, built in ``cache_s`` seconds;
    ``epoch_s`` the training epochs' wall times (:attr:`SamDecoderTask.epoch_s`); ``timing`` from
    :func:`time_epochs` (or ``None``)."""
    epochs = list(epoch_s)
    later = epochs[1:] if len(epochs) > 1 else epochs
    c = {"views_per_train_image": views_per_image, "train_views": int(len(pv["train"].features)),
         "feature_shape": list(pv["train"].features.shape[1:]), "feature_dtype": "float16",
         "cache_build_s": round(cache_s, 3), "encode_s": round(sum(p.encode_s for p in pv.values()), 3),
         "lightning_epoch_s": round(float(np.mean(later)), 4) if later else None,
         "first_epoch_s": round(epochs[0] + cache_s, 4) if epochs else None}
    if timing is not None:
        c.update({"cached_epoch_s": round(timing["cached_epoch_s"], 4),
                  "uncached_epoch_s": round(timing["uncached_epoch_s"], 4),
                  "uncached_encode_s": round(timing["uncached_encode_s"], 4),
                  "uncached_decode_s": round(timing["uncached_epoch_s"] - timing["uncached_encode_s"], 4),
                  "timed_fraction": round(timing["fraction"], 4)})
        c["speedup"] = round(timing["uncached_epoch_s"] / max(timing["cached_epoch_s"], 1e-9), 2)
        c["target_10x_met"] = bool(c["speedup"] >= 10)
    return c


# ---------------------------------------------------------------------------------------------
# points, clicks and boundaries (issue 24): every row on the same test objects
# ---------------------------------------------------------------------------------------------

PROMPT_KINDS = ("box", "1 point", "3 points", "5 clicks")


def evaluate_prompts(predictors: dict[str, Any], images: list[Any], masks: list[Tensor], boxes: Tensor, *,
                     kinds: tuple[str, ...] = PROMPT_KINDS, n_clicks: int = 9,
                     keep_masks: tuple[str, ...] = (), clicks_only: tuple[str, ...] = ()) -> dict[str, Any]:
    """Each predictor (``SamPrompter``-like, continuous coordinates; see ``vislab.models.sam_clicks``) on the
    objects ``masks[i]`` (bool ``[S, S]``) of ``images[i]`` (consecutive objects of one image share the image
    object, so it is encoded once): :func:`~vislab.models.sam_clicks.prompt_table` over ``kinds`` with the
    test boxes ``boxes`` (``Tensor[N, 4]``), and the simulated-click protocol with ``n_clicks`` clicks alone
    and after the box (``box + clicks``), NoC@85/90.

    Returns ``{"summary": {row: {"table", "clicks", "box_clicks", "seconds"}}, "curves": {row: (clicks,
    box_clicks) ClickEvaluation}}``; rows in ``keep_masks`` keep each round's masks (for figures); rows in
    ``clicks_only`` skip box + clicks (``box_clicks`` ``None``).
    """
    from vislab.models.sam_clicks import evaluate_clicks, parse_prompt_kind, prompt_table

    if not masks or len(images) != len(masks) or len(boxes) != len(masks):
        raise ValueError(f"images, masks and boxes must pair up and be non-empty, got {len(images)}, {len(masks)}, "
                         f"{len(boxes)}")
    bx = boxes.double().numpy()
    summary: dict[str, Any] = {}
    curves: dict[str, Any] = {}
    for name, pred in predictors.items():
        t0 = time.perf_counter()
        alone = evaluate_clicks(pred, images, masks, n_clicks=n_clicks, keep_masks=True)
        # "N clicks" alone (N <= n_clicks) is the click run's mask after N clicks: not simulated twice
        from_runs = [k for k in kinds if parse_prompt_kind(k)[::2] == (False, "clicks")
                     and parse_prompt_kind(k)[1] <= n_clicks]
        rest = [k for k in kinds if k not in from_runs]
        table = prompt_table(pred, images, masks, prompt_kinds=tuple(rest), boxes=bx)["mean"] if rest else {}
        table.update({k: _mask_scores([r.masks[parse_prompt_kind(k)[1] - 1] for r in alone.runs], masks)
                      for k in from_runs})
        if name not in keep_masks:
            for r in alone.runs:
                r.masks = []
        boxed = None if name in clicks_only else evaluate_clicks(pred, images, masks, n_clicks=n_clicks, box=True,
                                                                 boxes=bx)
        summary[name] = {"table": {k: {m: round(v, 6) for m, v in table[k].items()} for k in kinds},
                         "clicks": alone.summary(), "box_clicks": None if boxed is None else boxed.summary(),
                         "seconds": round(time.perf_counter() - t0, 3)}
        curves[name] = (alone, boxed)
    return {"summary": summary, "curves": curves, "tau": 2.0, "dilation_ratio": 0.02}


def _mask_scores(preds: list[Any], masks: list[Tensor], tau: float = 2.0, dilation_ratio: float = 0.02
                 ) -> dict[str, float]:
    """Mean IoU, Dice, NSD (``tau`` px) and boundary IoU of bool masks ``preds[i]`` against ``masks[i]``, as
    :func:`~vislab.models.sam_clicks.prompt_table` computes them."""
    from vislab.metrics.boundary import boundary_iou, nsd

    p = torch.stack([torch.as_tensor(np.asarray(m, dtype=bool)) for m in preds])  # (N, S, S)
    g = torch.stack([m.bool() for m in masks])
    inter, union = (p & g).flatten(1).sum(1).double(), (p | g).flatten(1).sum(1).double()
    total = p.flatten(1).sum(1).double() + g.flatten(1).sum(1).double()
    iou_v = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    dice_v = torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))
    return {"iou": float(iou_v.mean()), "dice": float(dice_v.mean()), "nsd": float(nsd(p, g, tau=tau).mean()),
            "boundary_iou": float(boundary_iou(p, g, dilation_ratio=dilation_ratio).mean())}
