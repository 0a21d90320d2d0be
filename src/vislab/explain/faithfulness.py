"""Is a heat map what the model used? Deletion/insertion curves, ROAD and the model-randomisation check.

* :func:`deletion_curve` / :func:`insertion_curve` (Petsiuk et al. 2018, RISE, https://arxiv.org/abs/1806.07421):
  pixels are removed from the image (replaced by a blurred or mean-valued copy), or inserted into that copy,
  ``step`` pixels at a time in the order of the map (highest first); the target's probability after each
  step gives a curve over the fraction of pixels changed. A faithful map makes deletion fall fast (low area
  under the curve, AUC ↓) and insertion rise fast (AUC ↑). All perturbed images of a batch are run
  ``batch_size`` at a time.
* :func:`road` (Rong et al. 2022, "A Consistent and Efficient Evaluation Strategy for Attribution Methods",
  https://arxiv.org/abs/2202.00449): the pixels above (MoRF) or below (LeRF) a percentile of the map are
  imputed from their neighbours by noisy linear imputation (each imputed pixel the weighted mean of its 8
  neighbours, 1/6 for the 4 direct ones and 1/12 for the diagonals, solved as one sparse linear system,
  plus Gaussian noise) and the change of the target's logit is averaged over the percentiles; "combined"
  is ``(LeRF - MoRF) / 2`` (higher is better). The conventions are pytorch-grad-cam's
  ``ROADMostRelevantFirst``/``ROADLeastRelevantFirst``/``ROADCombined`` (``pytorch_grad_cam.metrics.road``),
  which the tests compare against, down to the order in which the noise is drawn from torch's generator.
* :func:`model_randomisation` (Adebayo et al. 2018, "Sanity Checks for Saliency Maps",
  https://arxiv.org/abs/1810.03292): the model's layers are re-initialised cumulatively from the top
  (the output) down, and the Spearman rank correlation between each randomised model's map and the trained
  model's map is measured. A map that does not change when the weights it should explain are destroyed
  (correlation near 1) fails the check.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PERTURBATIONS", "PerturbationCurve", "RandomisationResult", "auc", "cascade_stages", "deletion_curve",
           "insertion_curve", "model_randomisation", "noisy_linear_impute", "road", "spearman"]

PERTURBATIONS = ("blur", "mean")
ROAD_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)


# --- shared checks ---------------------------------------------------------------------------------

def _check_inputs(images: Tensor, saliency: Tensor | np.ndarray) -> Tensor:
    if not isinstance(images, Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be Tensor[B, C, H, W], got {shape}")
    s = torch.as_tensor(saliency)
    if s.ndim != 3 or s.shape[0] != images.shape[0] or s.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"saliency must be Tensor[B, H, W] = [{images.shape[0]}, {images.shape[2]}, "
                         f"{images.shape[3]}] (one map per image at the image size), got {tuple(s.shape)}")
    if not torch.isfinite(s).all():
        raise ValueError("saliency holds non-finite values")
    return s.to(images.device)


@torch.no_grad()
def _logits(model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    was_training = model.training
    model.eval()
    try:
        out = [model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    logits = torch.cat(out)
    if logits.ndim != 2:
        raise ValueError(f"model must return logits Tensor[B, classes], got {tuple(logits.shape)}")
    return logits


def _check_targets(targets: Tensor | Sequence[int] | None, logits: Tensor) -> Tensor:
    if targets is None:
        return logits.argmax(1)
    t = torch.as_tensor(targets, device=logits.device).long().view(-1)
    if t.numel() != logits.shape[0]:
        raise ValueError(f"targets must have one class per image ({logits.shape[0]}), got {t.numel()}")
    if int(t.min()) < 0 or int(t.max()) >= logits.shape[1]:
        raise ValueError(f"targets must be class indices in [0, {logits.shape[1]}), got {t.tolist()}")
    return t


def _positive_int(name: str, v: object) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return v


# --- deletion and insertion --------------------------------------------------------------------------

class PerturbationCurve(NamedTuple):
    """A deletion or insertion curve: ``fractions Tensor[S+1]`` of pixels changed (0 to 1), ``scores
    Tensor[B, S+1]`` the target's score after each step, ``auc Tensor[B]`` the trapezoidal area."""

    fractions: Tensor
    scores: Tensor
    auc: Tensor


def gaussian_blur(images: Tensor, kernel_size: int = 11, sigma: float = 5.0) -> Tensor:
    """Depthwise Gaussian blur with reflected borders (RISE's insertion substrate: 11 px, σ = 5)."""
    if kernel_size % 2 == 0 or kernel_size < 1:
        raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size}")
    C = images.shape[1]
    r = kernel_size // 2
    xs = torch.arange(kernel_size, dtype=images.dtype, device=images.device) - r
    k1 = torch.exp(-xs ** 2 / (2 * sigma ** 2))
    k1 = k1 / k1.sum()  # (k,)
    pad_mode = "reflect" if min(images.shape[-2:]) > r else "replicate"
    x = F.pad(images, (r, r, r, r), mode=pad_mode)  # (B, C, H + 2r, W + 2r)
    x = F.conv2d(x, k1.view(1, 1, 1, -1).expand(C, 1, 1, kernel_size).contiguous(), groups=C)  # rows
    return F.conv2d(x, k1.view(1, 1, -1, 1).expand(C, 1, kernel_size, 1).contiguous(), groups=C)  # columns


def _substrate(images: Tensor, perturbation: str, blur_kernel: int, blur_sigma: float) -> Tensor:
    if perturbation == "blur":
        return gaussian_blur(images, blur_kernel, blur_sigma)
    if perturbation == "mean":
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images)  # each image's channel means
    raise ValueError(f"perturbation must be one of {', '.join(PERTURBATIONS)}, got {perturbation!r}")


def auc(fractions: Tensor, scores: Tensor) -> Tensor:
    """Trapezoidal area under ``scores Tensor[B, S+1]`` over ``fractions Tensor[S+1]``: ``Tensor[B]``."""
    dx = fractions[1:] - fractions[:-1]  # (S,)
    return ((scores[:, 1:] + scores[:, :-1]) / 2 * dx).sum(1)


def _perturbation_curve(model: nn.Module, images: Tensor, saliency: Tensor | np.ndarray,
                        targets: Tensor | Sequence[int] | None, *, insertion: bool, perturbation: str,
                        step: int | None, score: str, batch_size: int, blur_kernel: int,
                        blur_sigma: float) -> PerturbationCurve:
    s = _check_inputs(images, saliency)
    _positive_int("batch_size", batch_size)
    if score not in ("prob", "logit"):
        raise ValueError(f"score must be 'prob' or 'logit', got {score!r}")
    B, C, H, W = images.shape
    n = H * W
    step = max(1, math.ceil(n / 50)) if step is None else _positive_int("step", step)
    images = images.detach()
    base = _substrate(images, perturbation, blur_kernel, blur_sigma)  # (B, C, H, W)
    t = _check_targets(targets, _logits(model, images, batch_size))
    order = s.flatten(1).argsort(dim=1, descending=True, stable=True)  # (B, n): most salient first
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(n, device=order.device).expand(B, n).contiguous())  # (B, n)
    counts = torch.arange(0, n + step, step, device=images.device).clamp(max=n)  # (S+1,) pixels changed
    counts = torch.unique_consecutive(counts)
    S1 = len(counts)
    scores = torch.empty(B * S1, device=images.device)
    pairs = torch.arange(B * S1, device=images.device)
    for start in range(0, B * S1, batch_size):
        idx = pairs[start:start + batch_size]
        b, k = idx // S1, idx % S1
        changed = (rank[b] < counts[k][:, None]).view(-1, 1, H, W).to(images.dtype)  # (n, 1, H, W)
        if insertion:
            x = base[b] * (1 - changed) + images[b] * changed
        else:
            x = images[b] * (1 - changed) + base[b] * changed  # (n, C, H, W)
        logits = _logits(model, x, batch_size)
        values = logits.softmax(1) if score == "prob" else logits
        scores[idx] = values.gather(1, t[b][:, None])[:, 0].float()
    scores = scores.view(B, S1)
    fractions = counts.float() / n
    return PerturbationCurve(fractions=fractions, scores=scores, auc=auc(fractions, scores))


def deletion_curve(model: nn.Module, images: Tensor, saliency: Tensor | np.ndarray,
                   targets: Tensor | Sequence[int] | None = None, *, perturbation: str = "blur",
                   step: int | None = None, score: str = "prob", batch_size: int = 64, blur_kernel: int = 11,
                   blur_sigma: float = 5.0) -> PerturbationCurve:
    """Deletion (RISE): remove pixels, most salient first; a faithful map has a low AUC.

    Args:
        model: classifier ``Tensor[B, C, H, W] → Tensor[B, classes]`` (run in eval mode, no gradients).
        images: ``Tensor[B, C, H, W]`` as the model takes them (normalised).
        saliency: ``Tensor[B, H, W]`` (or an array), one map per image at the image size; ties keep
            row-major order.
        targets: class per image; default the model's prediction on the unperturbed image.
        perturbation: what a removed pixel becomes: ``"blur"`` (the pixel of a Gaussian-blurred copy,
            ``blur_kernel`` px, ``blur_sigma``) or ``"mean"`` (the image's channel means).
        step: pixels changed per step (default ``⌈H·W / 50⌉``, 50 steps); the last step may be partial.
        score: ``"prob"`` (softmax probability of the target, RISE's) or ``"logit"``.
        batch_size: perturbed images per forward pass (pairs of image and step are batched together).

    Returns:
        :class:`PerturbationCurve`: ``fractions Tensor[S+1]`` from 0 to 1, ``scores Tensor[B, S+1]``,
        ``auc Tensor[B]`` (trapezoids over the fractions).
    """
    return _perturbation_curve(model, images, saliency, targets, insertion=False, perturbation=perturbation,
                               step=step, score=score, batch_size=batch_size, blur_kernel=blur_kernel,
                               blur_sigma=blur_sigma)


def insertion_curve(model: nn.Module, images: Tensor, saliency: Tensor | np.ndarray,
                    targets: Tensor | Sequence[int] | None = None, *, perturbation: str = "blur",
                    step: int | None = None, score: str = "prob", batch_size: int = 64, blur_kernel: int = 11,
                    blur_sigma: float = 5.0) -> PerturbationCurve:
    """Insertion (RISE): start from the perturbed image (blurred or mean) and put the original pixels back,
    most salient first; a faithful map has a high AUC. Arguments as :func:`deletion_curve`."""
    return _perturbation_curve(model, images, saliency, targets, insertion=True, perturbation=perturbation,
                               step=step, score=score, batch_size=batch_size, blur_kernel=blur_kernel,
                               blur_sigma=blur_sigma)


# --- ROAD -------------------------------------------------------------------------------------------

# (row offset, column offset, weight) of the 8 neighbours in ROAD's noisy linear imputation
_NEIGHBOURS = ((1, 1, 1 / 12), (0, 1, 1 / 6), (-1, 1, 1 / 12), (1, -1, 1 / 12), (0, -1, 1 / 6), (-1, -1, 1 / 12),
               (1, 0, 1 / 6), (-1, 0, 1 / 6))


def noisy_linear_impute(image: Tensor, keep: Tensor, *, noise: float = 0.01,
                        generator: torch.Generator | None = None) -> Tensor:
    """ROAD's noisy linear imputation of one image.

    Args:
        image: ``Tensor[C, H, W]``.
        keep: ``Tensor[H, W]``, true (or 1) for the pixels kept; the others are imputed.
        noise: standard deviation of the Gaussian noise added to every imputed value.
        generator: torch generator of the noise (default torch's global one, as pytorch-grad-cam).

    Every imputed pixel ``i`` satisfies ``sum_j w_ij (u_j - u_i) = 0`` over its neighbours ``j`` inside
    the image (``w = 1/6`` direct, ``1/12`` diagonal), with the kept pixels fixed: a sparse system in the
    imputed pixels, solved for all channels at once (SciPy's ``spsolve``), then the noise is added.
    Returns ``Tensor[C, H, W]`` (float32).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    C, H, W = image.shape
    img = image.detach().cpu().float().reshape(C, H * W).numpy()  # (C, HW)
    known = np.asarray(keep.detach().cpu().reshape(-1)).astype(bool)  # (HW,)
    unknown = np.flatnonzero(~known)  # (n,)
    n = len(unknown)
    out = torch.from_numpy(img.copy())
    if n == 0:
        return out.view(C, H, W)
    var = np.full(H * W, -1)
    var[unknown] = np.arange(n)
    r0, c0 = unknown // W, unknown % W
    rows, cols, vals = [], [], []
    b = np.zeros((n, C))
    diag = np.ones(n)
    for dr, dc, w in _NEIGHBOURS:
        r, c = r0 + dr, c0 + dc
        inside = (r >= 0) & (c >= 0) & (r < H) & (c < W)
        diag[~inside] -= w  # a neighbour outside the image carries no weight
        eq = np.flatnonzero(inside)  # equations (imputed pixels) with this neighbour inside
        nb = r[eq] * W + c[eq]  # (m,) flat index of the neighbour
        fixed = known[nb]
        b[eq[fixed]] -= w * img[:, nb[fixed]].T  # known neighbours go to the right-hand side
        rows.append(eq[~fixed])
        cols.append(var[nb[~fixed]])
        vals.append(np.full(int((~fixed).sum()), w))
    rows.append(np.arange(n))
    cols.append(np.arange(n))
    vals.append(-diag)
    a = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)).tocsc()
    x = spsolve(a, b)  # (n, C) (or (n,) for one channel)
    x = torch.as_tensor(np.asarray(x).reshape(n, C), dtype=torch.float32)
    eps = torch.randn(C, n, generator=generator)  # (C, n): drawn channel by channel, as pytorch-grad-cam
    out[:, torch.from_numpy(unknown)] = x.t() + noise * eps
    return out.view(C, H, W)


def _road_scores(model: nn.Module, images: Tensor, maps: np.ndarray, t: Tensor, base: Tensor, *,
                 most_relevant_first: bool, percentiles: Sequence[float], noise: float,
                 generator: torch.Generator | None, batch_size: int) -> Tensor:
    """Mean over the percentiles of ``logit_target(imputed) - logit_target(image)``: ``Tensor[B]``.

    The imputations run percentile by percentile, image by image (the order in which pytorch-grad-cam draws the
    noise); the imputed images go through the model ``batch_size`` at a time, across percentiles."""
    B = images.shape[0]
    after = torch.empty(len(percentiles) * B, device=images.device)
    pending: list[Tensor] = []
    done = 0

    def flush() -> None:
        nonlocal done
        x = torch.stack(pending).to(images.device, images.dtype)  # (n, C, H, W)
        rows = torch.arange(done, done + len(pending), device=images.device)
        after[rows] = _logits(model, x, batch_size).gather(1, t[rows % B][:, None])[:, 0].float()
        done += len(pending)
        pending.clear()

    for p in percentiles:
        for i in range(B):
            m = torch.from_numpy(maps[i] if most_relevant_first else 1 - maps[i])
            keep = m < np.percentile(m.numpy(), p)  # MoRF: removes the map's top; LeRF: its bottom
            pending.append(noisy_linear_impute(images[i].cpu(), keep, noise=noise, generator=generator))
            if len(pending) == batch_size:
                flush()
    if pending:
        flush()
    return (after.view(len(percentiles), B) - base).mean(0)


def road(model: nn.Module, images: Tensor, saliency: Tensor | np.ndarray, targets: Tensor | Sequence[int] | None = None,
         *, order: str = "combined", percentiles: Sequence[float] = ROAD_PERCENTILES, noise: float = 0.01,
         generator: torch.Generator | None = None, batch_size: int = 64) -> Tensor:
    """ROAD (remove and debias) of each image's map: ``Tensor[B]``.

    Args:
        model, images, targets: as :func:`deletion_curve` (targets default to the prediction).
        saliency: ``Tensor[B, H, W]`` maps in [0, 1] at the image size (the CAM methods' output).
        order: ``"morf"`` (most relevant first: the pixels at or above the ``p``-th percentile of the map are
            imputed; a faithful map makes the logit drop, more negative is better), ``"lerf"`` (least
            relevant first: those at or above the ``p``-th percentile of ``1 - map``; a small change is
            better) or ``"combined"`` ``(LeRF - MoRF) / 2`` (higher is better).
        percentiles: the thresholds, averaged over (pytorch-grad-cam's default 10, 20, …, 90).
        noise: standard deviation of the imputation noise; generator: its torch generator (default the
            global one; LeRF's draws come before MoRF's, percentile by percentile, image by image).
        batch_size: imputed images per forward pass.

    Returns:
        The mean change of the target's logit over the percentiles (``"combined"``: the half difference).
    """
    s = _check_inputs(images, saliency)
    _positive_int("batch_size", batch_size)
    if order not in ("morf", "lerf", "combined"):
        raise ValueError(f"order must be 'morf', 'lerf' or 'combined', got {order!r}")
    if not percentiles or any(not 0 < float(p) < 100 for p in percentiles):
        raise ValueError(f"percentiles must lie in (0, 100), got {list(percentiles)}")
    images = images.detach()
    logits = _logits(model, images, batch_size)
    t = _check_targets(targets, logits)
    base = logits.gather(1, t[:, None])[:, 0].float()  # (B,)
    maps = s.detach().cpu().float().numpy()
    kw = {"percentiles": percentiles, "noise": noise, "generator": generator, "batch_size": batch_size}
    if order == "morf":
        return _road_scores(model, images, maps, t, base, most_relevant_first=True, **kw)
    lerf = _road_scores(model, images, maps, t, base, most_relevant_first=False, **kw)
    if order == "lerf":
        return lerf
    morf = _road_scores(model, images, maps, t, base, most_relevant_first=True, **kw)
    return (lerf - morf) / 2


# --- the model-randomisation sanity check ----------------------------------------------------------------

def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation of each pair of maps ``Tensor[B, ...]``: ``Tensor[B]``.

    Ties get their average rank (as ``scipy.stats.spearmanr``). Where a map is constant its ranks carry no
    order: two constant maps give 1 (nothing changed), one constant map and one that is not give 0.
    """
    if a.shape != b.shape:
        raise ValueError(f"maps must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    out = []
    for x, y in zip(a.detach().flatten(1).double().cpu(), b.detach().flatten(1).double().cpu()):
        rx, ry = _average_ranks(x), _average_ranks(y)
        sx, sy = rx - rx.mean(), ry - ry.mean()
        nx, ny = sx.norm(), sy.norm()
        if nx == 0 or ny == 0:
            out.append(1.0 if nx == 0 and ny == 0 else 0.0)
        else:
            out.append(float((sx @ sy) / (nx * ny)))
    return torch.tensor(out)


def _average_ranks(x: Tensor) -> Tensor:
    values, inverse, counts = torch.unique(x, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()  # 1-based rank of each distinct value's last copy
    return (ends - (counts.double() - 1) / 2)[inverse]


def _parametrised(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]


def cascade_stages(model: nn.Module, down_to: str | None = None, *, groups: int | None = None) -> list[list[str]]:
    """The modules to re-initialise, from the top: ``[[names of stage 1], [names of stage 2], …]``.

    Every module with parameters of its own, in reverse registration order (the head first), down to and
    including the modules inside ``down_to`` (a module name; default down to the input). ``groups`` merges
    consecutive modules into at most that many stages of near-equal size.
    """
    names = _parametrised(model)[::-1]
    if down_to is not None:
        modules = dict(model.named_modules())
        if down_to not in modules:
            raise ValueError(f"model has no module named {down_to!r}")
        inside = [i for i, n in enumerate(names) if n == down_to or n.startswith(down_to + ".")]
        if inside:
            names = names[:max(inside) + 1]
    if not names:
        raise ValueError(f"{type(model).__name__} has no parameters to re-initialise")
    if groups is None:
        return [[n] for n in names]
    _positive_int("groups", groups)
    bounds = np.linspace(0, len(names), min(groups, len(names)) + 1).round().astype(int)
    return [names[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _reinitialise(module: nn.Module) -> None:
    reset = getattr(module, "reset_parameters", None)
    own = list(module.parameters(recurse=False))
    if callable(reset):
        reset()
        return
    with torch.no_grad():  # parameters without an initialiser (class tokens, positional embeddings)
        for p in own:
            p.normal_(std=0.02)


class RandomisationResult(NamedTuple):
    """``stages``: the module names re-initialised at each stage (cumulative); ``correlation
    Tensor[S, B]``: Spearman correlation of each stage's maps with the trained model's; ``passed
    Tensor[B]`` bool: the last stage's correlation is below the threshold (the map changed)."""

    stages: list[list[str]]
    correlation: Tensor
    passed: Tensor


def model_randomisation(explain: Callable[[nn.Module], Callable[..., tuple[Tensor, Tensor]]], model: nn.Module,
                        images: Tensor, targets: Tensor | Sequence[int] | None = None, *,
                        stages: Sequence[Sequence[str]] | None = None, threshold: float = 0.5,
                        seed: int = 0) -> RandomisationResult:
    """Cascading model randomisation (Adebayo et al. 2018).

    Args:
        explain: ``explain(model)`` gives a CAM of that model, e.g. ``lambda m: LayerCAM(m, "layer4")``;
            it is called on the trained model and on each randomised copy.
        model: the trained model (left unchanged; a deep copy is randomised).
        images: ``Tensor[B, C, H, W]``.
        targets: class per image; default the trained model's prediction, used for every stage.
        stages: module names per stage, from the top (default :func:`cascade_stages` ``(model)``). At stage
            ``s`` the modules of stages ``1..s`` are re-initialised (``reset_parameters()``, else
            ``normal(0, 0.02)``), seeded by ``seed``.
        threshold: a map passes when its last-stage rank correlation with the trained model's map is below
            this (it changed when the weights did).

    Returns:
        :class:`RandomisationResult`.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must lie in (0, 1], got {threshold}")
    cams, logits = explain(model)(images, targets)
    t = _check_targets(targets, logits)
    stages = [list(s) for s in (cascade_stages(model) if stages is None else stages)]
    if not stages:
        raise ValueError("stages is empty")
    randomised = copy.deepcopy(model)
    modules = dict(randomised.named_modules())
    g_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    corr = []
    try:
        for stage in stages:
            for name in stage:
                if name not in modules:
                    raise ValueError(f"model has no module named {name!r}")
                _reinitialise(modules[name])
            rcams, _ = explain(randomised)(images, t)
            corr.append(spearman(cams, rcams))
    finally:
        torch.random.set_rng_state(g_state)
    correlation = torch.stack(corr)  # (S, B)
    return RandomisationResult(stages=stages, correlation=correlation, passed=correlation[-1] < threshold)
