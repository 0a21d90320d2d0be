"""Region Proposal Network (Ren et al., 2015, §3.1): a small conv net slid over the feature map that
scores every anchor for "object vs background" and regresses it towards the object, and the proposal
layer that turns the ~H·W·A decoded anchors into a few hundred proposals.

Pipeline per image (``RegionProposalNetwork.forward``):

1. ``RPNHead``: ``Tensor[B, C, H, W]`` → objectness logits ``Tensor[B, A, H, W]`` and deltas
   ``Tensor[B, 4A, H, W]``, flattened location-major to ``Tensor[B, H·W·A]`` / ``Tensor[B, H·W·A, 4]``
   (the order of :func:`~vislab.models.detection.anchors.grid_anchors`).
2. decode the deltas against the anchors (``decode_boxes``, weights 1, 1, 1, 1); the proposals are
   detached: Faster R-CNN does not back-propagate through the box coordinates of its proposals.
3. :func:`select_proposals` (clip, drop small, top ``pre_nms_top_n``, NMS, top ``post_nms_top_n``);
   12000 / 2000 in training, 6000 / 300 at test time (the paper's numbers).
4. training only: :func:`~vislab.models.detection.targets.label_anchors` and
   :func:`~vislab.models.detection.targets.sample_labels` per image, then
   :func:`~vislab.models.detection.losses.rpn_loss`.
"""

from __future__ import annotations

import torch
import torchvision
from torch import Tensor, nn

from vislab.models.detection.anchors import AnchorGenerator
from vislab.models.detection.losses import rpn_loss
from vislab.models.detection.targets import label_anchors, sample_labels
from vislab.ops.boxes import clip_boxes_to_image, decode_boxes, encode_boxes, remove_small_boxes

__all__ = ["RPNHead", "RegionProposalNetwork", "flatten_rpn_outputs", "nms_top_n", "pre_nms_proposals",
           "select_proposals"]


class RPNHead(nn.Module):
    """The RPN's sliding network: 3×3 conv (``mid_channels``) + ReLU, then two sibling 1×1 convs.

    ``forward(x: Tensor[B, C, H, W]) → (objectness Tensor[B, A, H, W], deltas Tensor[B, 4A, H, W])``;
    channel ``a·4 + k`` of ``deltas`` is coordinate ``k`` of anchor ``a``.

    Objectness: the paper's "cls" layer has **2A outputs** (object / not-object scores per anchor, a
    two-way softmax); torchvision's has **A outputs**, one logit per anchor trained with a sigmoid
    (binary cross-entropy). We use **A sigmoid logits**: a two-way softmax depends only on the difference
    of its two scores, ``softmax(b, f)_1 = σ(f − b)``, so the 2A head is an over-parametrisation of the
    same model, and A logits are what lets this RPN be checked weight for weight against torchvision's.

    Initialisation as in the paper and torchvision: weights N(0, 0.01²), biases 0. ``mid_channels``
    defaults to ``in_channels`` (torchvision's choice; 512 for VGG16 as in the paper).
    """

    def __init__(self, in_channels: int, num_anchors: int, *, mid_channels: int | None = None) -> None:
        super().__init__()
        if in_channels < 1 or num_anchors < 1:
            raise ValueError(f"in_channels and num_anchors must be >= 1, got {in_channels} and {num_anchors}")
        mid = in_channels if mid_channels is None else int(mid_channels)
        if mid < 1:
            raise ValueError(f"mid_channels must be >= 1, got {mid_channels}")
        self.num_anchors = num_anchors
        self.conv = nn.Conv2d(in_channels, mid, kernel_size=3, padding=1)
        self.cls_logits = nn.Conv2d(mid, num_anchors, kernel_size=1)
        self.bbox_pred = nn.Conv2d(mid, 4 * num_anchors, kernel_size=1)
        for layer in (self.conv, self.cls_logits, self.bbox_pred):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        t = torch.relu(self.conv(x))  # (B, mid, H, W)
        return self.cls_logits(t), self.bbox_pred(t)  # (B, A, H, W), (B, 4A, H, W)


def flatten_rpn_outputs(objectness: Tensor, deltas: Tensor) -> tuple[Tensor, Tensor]:
    """``Tensor[B, A, H, W]``, ``Tensor[B, 4A, H, W]`` → ``Tensor[B, H·W·A]``, ``Tensor[B, H·W·A, 4]``, anchor order."""
    B, A, H, W = objectness.shape
    if tuple(deltas.shape) != (B, 4 * A, H, W):
        raise ValueError(f"deltas must be Tensor[{B}, {4 * A}, {H}, {W}], got {tuple(deltas.shape)}")
    objectness = objectness.permute(0, 2, 3, 1).reshape(B, H * W * A)  # (B, H·W·A)
    deltas = deltas.view(B, A, 4, H, W).permute(0, 3, 4, 1, 2).reshape(B, H * W * A, 4)  # (B, H·W·A, 4)
    return objectness, deltas


def _check_proposal_inputs(boxes: Tensor, scores: Tensor, pre_nms_top_n: int, min_size: float) -> None:
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be Tensor[N, 4], got {tuple(boxes.shape)}")
    if tuple(scores.shape) != (boxes.shape[0],):
        raise ValueError(f"scores must be Tensor[{boxes.shape[0]}], got {tuple(scores.shape)}")
    if pre_nms_top_n < 1:
        raise ValueError(f"pre_nms_top_n must be >= 1, got {pre_nms_top_n}")
    if min_size < 0:
        raise ValueError(f"min_size must be >= 0, got {min_size}")


def pre_nms_proposals(boxes: Tensor, scores: Tensor, image_size: tuple[int, int], *, pre_nms_top_n: int,
                      min_size: float, topk_first: bool = False) -> tuple[Tensor, Tensor]:
    """The candidates that go into NMS: the first three steps of :func:`select_proposals`.

    Returns ``(boxes Tensor[K, 4], scores Tensor[K])``, clipped, sorted by score (descending).
    """
    _check_proposal_inputs(boxes, scores, pre_nms_top_n, min_size)
    # torchvision's order: the best pre_nms_top_n first, then clip and drop the small ones. It is also the paper's
    # order (1. clip, 2. drop small, 3. top-n) whenever no small box is among the best k or every box is ranked, and
    # then ranking first keeps exactly tied scores in the order torchvision's top-k gives them.
    k = min(pre_nms_top_n, scores.numel())
    top, order = scores.topk(k)
    ranked = clip_boxes_to_image(boxes[order], image_size)
    keep = remove_small_boxes(ranked, min_size)
    if topk_first or keep.numel() == k or k == scores.numel():
        return ranked[keep], top[keep]
    # the paper's order with small boxes among the best k: its top-n reaches past them
    boxes = clip_boxes_to_image(boxes, image_size)  # 1.
    keep = remove_small_boxes(boxes, min_size)  # 2.
    boxes, scores = boxes[keep], scores[keep]
    scores, order = scores.topk(min(pre_nms_top_n, scores.numel()))  # 3.
    return boxes[order], scores


def nms_top_n(boxes: Tensor, scores: Tensor, iou_threshold: float, top_n: int) -> Tensor:
    """``torchvision.ops.nms(boxes, scores, iou_threshold)[:top_n]`` for boxes already sorted by score (descending),
    computed on a prefix when that suffices.

    Greedy NMS decides box ``i`` from the boxes ranked before it only, so NMS of the first ``m`` boxes keeps exactly
    the kept boxes of the full NMS that lie among them. When ``m = 4·top_n`` is at most half of the boxes, NMS runs
    on that prefix first; if it keeps ``top_n`` boxes those are the answer, otherwise NMS runs on all boxes. The
    result is the same indices as one NMS of everything; with far fewer boxes wanted than given (6000 → 300 at test
    time) it is a fraction of the cost, and a failed prefix costs at most about half of one full NMS.

    Returns ``Tensor[K]`` int64 indices into ``boxes``, ``K <= top_n``, in score order.
    """
    n = boxes.shape[0]
    m = 4 * top_n
    if 2 * m <= n:
        keep = torchvision.ops.nms(boxes[:m], scores[:m], iou_threshold)
        if keep.numel() >= top_n:
            return keep[:top_n]
    return torchvision.ops.nms(boxes, scores, iou_threshold)[:top_n]


def select_proposals(boxes: Tensor, scores: Tensor, image_size: tuple[int, int], *, pre_nms_top_n: int,
                     post_nms_top_n: int, nms_thresh: float, min_size: float,
                     topk_first: bool = False) -> tuple[Tensor, Tensor]:
    """The proposal layer for one image (one feature level).

    In this order: (1) clip the boxes to the image; (2) drop boxes whose width or height is below
    ``min_size``; (3) keep the ``pre_nms_top_n`` highest scores; (4) NMS at IoU ``nms_thresh``
    (``torchvision.ops.nms``); (5) keep the first ``post_nms_top_n``. Steps 4–5 run as :func:`nms_top_n`, which
    runs NMS on the best boxes only when that is enough (the same result, less work).

    ``topk_first=True`` does (3) before (1)–(2), which is torchvision's ``RegionProposalNetwork.filter_proposals``
    order. The two orders differ only when boxes dropped in (2) are among the ``pre_nms_top_n`` best and
    ``pre_nms_top_n < N`` (then torchvision ends with fewer candidates). Otherwise they are identical, exactly tied
    scores included: the default order ranks with the same top-k call and filters the ranking (ties in a
    different order would put different boxes through NMS and the RoI sampler).

    Args:
        boxes: ``Tensor[N, 4]`` xyxy decoded anchors; scores: ``Tensor[N]`` objectness, any score increasing
            with it (top-n and NMS rank by it). The RPN passes logits: float32 sigmoid probabilities tie where
            logits do not (torchvision also ranks its top-n by logits; its NMS sorts probabilities stably,
            which on logit-sorted input gives the same order).
        image_size: ``(H, W)`` of the (resized, unpadded) image.

    Returns:
        ``(boxes Tensor[P, 4], scores Tensor[P])``, ``P <= post_nms_top_n``, sorted by score, descending.
    """
    if post_nms_top_n < 1:
        raise ValueError(f"post_nms_top_n must be >= 1, got {post_nms_top_n}")
    if not 0.0 <= nms_thresh <= 1.0:
        raise ValueError(f"nms_thresh must be in [0, 1], got {nms_thresh}")
    boxes, scores = pre_nms_proposals(boxes, scores, image_size, pre_nms_top_n=pre_nms_top_n, min_size=min_size,
                                      topk_first=topk_first)
    keep = nms_top_n(boxes, scores, nms_thresh, post_nms_top_n)  # 4.–5., sorted by score
    return boxes[keep], scores[keep]


def _top_n(value: int | tuple[int, int] | dict[str, int], name: str) -> dict[str, int]:
    if isinstance(value, int):
        value = {"training": value, "testing": value}
    elif isinstance(value, tuple):
        value = {"training": value[0], "testing": value[1]}
    if set(value) != {"training", "testing"} or any(int(v) < 1 for v in value.values()):
        raise ValueError(f"{name} must be >= 1 for training and testing, got {value!r}")
    return {k: int(v) for k, v in value.items()}


class RegionProposalNetwork(nn.Module):
    """Anchors + :class:`RPNHead` + proposal layer, and the RPN losses in training mode.

    ``forward(features Tensor[B, C, H, W], image_sizes [(h, w)] * B, batch_size (H_pad, W_pad), targets=None)``
    → ``(proposals list[Tensor[P_i, 4]], losses)``; ``losses`` is ``{}`` in eval mode and
    ``{"loss_objectness", "loss_rpn_box_reg"}`` in training mode (``targets`` required: dicts with ``"boxes"``
    in the resized image's pixels). The anchor stride is ``batch_size // feature size`` per axis.

    Args:
        pre_nms_top_n, post_nms_top_n: ``{"training": n, "testing": n}`` (or ``(train, test)``).
        min_size: proposals with a side below it (resized image pixels) are dropped; 1e-3 like torchvision
            (the paper used 16 px in the original image).
        topk_first: torchvision's order in :func:`select_proposals`.
    """

    def __init__(self, anchor_generator: AnchorGenerator, head: RPNHead, *, fg_iou_thresh: float = 0.7,
                 bg_iou_thresh: float = 0.3, batch_size_per_image: int = 256, positive_fraction: float = 0.5,
                 pre_nms_top_n: int | tuple[int, int] | dict[str, int] = (12000, 6000),
                 post_nms_top_n: int | tuple[int, int] | dict[str, int] = (2000, 300), nms_thresh: float = 0.7,
                 min_size: float = 1e-3, topk_first: bool = False) -> None:
        super().__init__()
        if head.num_anchors != anchor_generator.num_anchors_per_location:
            raise ValueError(f"head predicts {head.num_anchors} anchors per location, the anchor generator has "
                             f"{anchor_generator.num_anchors_per_location}")
        if not 0.0 <= bg_iou_thresh <= fg_iou_thresh <= 1.0:
            raise ValueError(f"need 0 <= bg_iou_thresh <= fg_iou_thresh <= 1, got {fg_iou_thresh}, {bg_iou_thresh}")
        if batch_size_per_image < 1 or not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(f"need batch_size_per_image >= 1 and positive_fraction in [0, 1], got "
                             f"{batch_size_per_image}, {positive_fraction}")
        if not 0.0 <= nms_thresh <= 1.0:
            raise ValueError(f"nms_thresh must be in [0, 1], got {nms_thresh}")
        self.anchor_generator = anchor_generator
        self.head = head
        self.fg_iou_thresh, self.bg_iou_thresh = fg_iou_thresh, bg_iou_thresh
        self.batch_size_per_image, self.positive_fraction = batch_size_per_image, positive_fraction
        self.pre_nms_top_n = _top_n(pre_nms_top_n, "pre_nms_top_n")
        self.post_nms_top_n = _top_n(post_nms_top_n, "post_nms_top_n")
        self.nms_thresh, self.min_size, self.topk_first = nms_thresh, min_size, topk_first

    def _mode(self) -> str:
        return "training" if self.training else "testing"

    def predict(self, features: Tensor, batch_size: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
        """Anchors ``Tensor[N, 4]``, objectness logits ``Tensor[B, N]`` and deltas ``Tensor[B, N, 4]``."""
        if features.dim() != 4:
            raise ValueError(f"features must be Tensor[B, C, H, W], got {tuple(features.shape)}")
        H, W = features.shape[-2:]
        stride = (int(batch_size[0]) // H, int(batch_size[1]) // W)
        objectness, deltas = flatten_rpn_outputs(*self.head(features))
        anchors = self.anchor_generator((H, W), stride, dtype=features.dtype, device=features.device)
        return anchors, objectness, deltas

    def propose(self, anchors: Tensor, objectness: Tensor, deltas: Tensor, image_sizes: list[tuple[int, int]],
                *, mode: str | None = None, keep_pre_nms: bool = False) -> list[dict[str, Tensor]]:
        """Per image ``{"boxes", "scores"}`` after NMS (and ``"pre_nms_boxes"``, ``"pre_nms_scores"`` if asked);
        scores are objectness probabilities.

        ``mode``: ``"training"`` / ``"testing"`` proposal numbers (default: the module's mode).
        """
        mode = mode or self._mode()
        B, N = objectness.shape
        logits = objectness.detach()  # (B, N): ranked as logits, reported as probabilities
        boxes = decode_boxes(deltas.detach().reshape(B * N, 4), anchors.repeat(B, 1)).view(B, N, 4)  # (B, N, 4)
        out = []
        for i in range(B):
            pre_boxes, pre_scores = pre_nms_proposals(boxes[i], logits[i], image_sizes[i],
                                                      pre_nms_top_n=self.pre_nms_top_n[mode],
                                                      min_size=self.min_size, topk_first=self.topk_first)
            keep = nms_top_n(pre_boxes, pre_scores, self.nms_thresh, self.post_nms_top_n[mode])
            item = {"boxes": pre_boxes[keep], "scores": torch.sigmoid(pre_scores[keep])}
            if keep_pre_nms:
                item.update(pre_nms_boxes=pre_boxes, pre_nms_scores=torch.sigmoid(pre_scores))
            out.append(item)
        return out

    def assign(self, anchors: Tensor, targets: list[dict[str, Tensor]],
               generator: torch.Generator | None = None) -> list[dict[str, Tensor]]:
        """Per image: ``labels`` (1 / 0 / −1), ``regression_targets`` ``Tensor[N, 4]`` (zeros but for positives),
        and the sampled ``pos_mask`` / ``neg_mask``."""
        out = []
        for t in targets:
            gt = t["boxes"].to(anchors.dtype)
            labels, matched = label_anchors(anchors, gt, self.fg_iou_thresh, self.bg_iou_thresh)
            reg = torch.zeros_like(anchors)
            pos = labels == 1
            if pos.any():
                reg[pos] = encode_boxes(gt[matched[pos]], anchors[pos])
            out.append({"labels": labels, "regression_targets": reg, "matched": matched})
        for item in out:  # sampled after all images are labelled: the order torchvision draws in
            item["pos_mask"], item["neg_mask"] = sample_labels(item["labels"], self.batch_size_per_image,
                                                               self.positive_fraction, generator=generator)
        return out

    def loss(self, anchors: Tensor, objectness: Tensor, deltas: Tensor,
             targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        assigned = self.assign(anchors, targets)
        cat = {k: torch.cat([a[k] for a in assigned]) for k in ("labels", "regression_targets", "pos_mask",
                                                                 "neg_mask")}
        loss_objectness, loss_box = rpn_loss(objectness.reshape(-1), deltas.reshape(-1, 4), cat["labels"],
                                             cat["regression_targets"], cat["pos_mask"], cat["neg_mask"])
        return {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_box}

    def forward(self, features: Tensor, image_sizes: list[tuple[int, int]], batch_size: tuple[int, int],
                targets: list[dict[str, Tensor]] | None = None) -> tuple[list[Tensor], dict[str, Tensor]]:
        if len(image_sizes) != features.shape[0]:
            raise ValueError(f"got {len(image_sizes)} image sizes for a batch of {features.shape[0]} feature maps")
        anchors, objectness, deltas = self.predict(features, batch_size)
        proposals = [p["boxes"] for p in self.propose(anchors, objectness, deltas, image_sizes)]
        losses: dict[str, Tensor] = {}
        if self.training:
            if targets is None:
                raise ValueError("the RPN needs targets in training mode")
            losses = self.loss(anchors, objectness, deltas, targets)
        return proposals, losses
