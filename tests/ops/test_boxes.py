"""vislab.ops.boxes against torchvision's BoxCoder (encode_single / decode_single) and torchvision.ops."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torchvision.models.detection._utils import BoxCoder

from vislab.ops.boxes import box_iou, clip_boxes_to_image, decode_boxes, encode_boxes, remove_small_boxes

WEIGHTS = [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0), (2.0, 3.0, 0.5, 7.0)]


def _boxes(n: int, size: tuple[int, int] = (120, 170), seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """Random xyxy boxes inside an (H, W) image, a quarter of them touching the border."""
    g = torch.Generator().manual_seed(seed)
    H, W = size
    x1 = torch.rand(n, generator=g) * (W - 2)
    y1 = torch.rand(n, generator=g) * (H - 2)
    x2 = x1 + 1 + torch.rand(n, generator=g) * (W - 1 - x1)
    y2 = y1 + 1 + torch.rand(n, generator=g) * (H - 1 - y1)
    b = torch.stack([x1, y1, x2, y2], 1)
    q = n // 4
    b[:q, 0] = 0.0  # left border
    b[q:2 * q, 2] = float(W)  # right border
    b[:q, 1] = 0.0
    return b.to(dtype)


@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_encode_equals_boxcoder(weights, dtype):
    gt, anchors = _boxes(300, seed=1, dtype=dtype), _boxes(300, seed=2, dtype=dtype)
    ref = BoxCoder(weights).encode_single(gt, anchors)
    ours = encode_boxes(gt, anchors, weights)
    assert ours.dtype == dtype
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)


@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("clip", [math.log(1000.0 / 16), 1.5])
def test_decode_equals_boxcoder(weights, clip):
    g = torch.Generator().manual_seed(3)
    anchors = _boxes(250, seed=4)
    deltas = torch.randn(250, 4, generator=g) * 2
    deltas[:20, 2:] = 50.0  # far above the clip: exp would overflow without it
    ref = BoxCoder(weights, bbox_xform_clip=clip).decode_single(deltas, anchors)
    ours = decode_boxes(deltas, anchors, weights, clip=clip)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    assert torch.isfinite(ours).all()


def test_decode_class_specific_deltas_equals_boxcoder():
    K = 5
    g = torch.Generator().manual_seed(5)
    proposals = _boxes(60, seed=6)
    deltas = torch.randn(60, K, 4, generator=g)
    w = (10.0, 10.0, 5.0, 5.0)
    ref = BoxCoder(w).decode_single(deltas.reshape(60, 4 * K), proposals).reshape(60, K, 4)
    torch.testing.assert_close(decode_boxes(deltas, proposals, w), ref, rtol=0, atol=0)


@pytest.mark.parametrize("weights", WEIGHTS)
def test_decode_inverts_encode(weights):
    gt, anchors = _boxes(200, seed=7, dtype=torch.float64), _boxes(200, seed=8, dtype=torch.float64)
    back = decode_boxes(encode_boxes(gt, anchors, weights), anchors, weights, clip=1e9)
    torch.testing.assert_close(back, gt, rtol=1e-10, atol=1e-9)


def test_no_plus_one_in_widths():
    # a 10×20 box on an identical anchor shifted by 5 px: dx = 5 / 10 exactly, widths are x2 − x1
    anchor = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    box = torch.tensor([[5.0, 0.0, 15.0, 20.0]])
    torch.testing.assert_close(encode_boxes(box, anchor), torch.tensor([[0.5, 0.0, 0.0, 0.0]]))


def test_wrappers_equal_torchvision():
    a, b = _boxes(40, seed=9), _boxes(30, seed=10)
    assert torch.equal(box_iou(a, b), torchvision.ops.box_iou(a, b))
    wild = a * 3 - 100
    assert torch.equal(clip_boxes_to_image(wild, (120, 170)), torchvision.ops.clip_boxes_to_image(wild, (120, 170)))
    clipped = clip_boxes_to_image(wild, (120, 170))
    assert torch.equal(remove_small_boxes(clipped, 5.0), torchvision.ops.remove_small_boxes(clipped, 5.0))


def test_argument_errors():
    b = _boxes(4)
    with pytest.raises(ValueError, match=r"boxes must be Tensor\[N, 4\], got \(4, 3\)"):
        encode_boxes(b[:, :3], b)
    with pytest.raises(ValueError, match="same length"):
        encode_boxes(b, b[:3])
    with pytest.raises(ValueError, match="weights must be 4 numbers"):
        encode_boxes(b, b, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="weights must be positive"):
        decode_boxes(b, b, (1.0, 0.0, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"deltas must be Tensor\[N, 4\] or Tensor\[N, K, 4\]"):
        decode_boxes(torch.zeros(4, 8), b)
    with pytest.raises(TypeError, match="floating-point"):
        encode_boxes(b.long(), b)
    with pytest.raises(ValueError, match=r"image_size must be \(H, W\)"):
        clip_boxes_to_image(b, (10,))
