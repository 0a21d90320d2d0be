"""grid_anchors / AnchorGenerator against torchvision's AnchorGenerator (one feature map)."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList

from vislab.models.detection import AnchorGenerator, cell_anchors, grid_anchors


def _torchvision_anchors(feature_size, stride, sizes, ratios):
    (H, W), (sh, sw) = feature_size, stride
    gen = TVAnchorGenerator(sizes=(tuple(sizes),), aspect_ratios=(tuple(ratios),))
    images = ImageList(torch.zeros(1, 3, H * sh, W * sw), [(H * sh, W * sw)])
    return gen(images, [torch.zeros(1, 4, H, W)])[0]


@pytest.mark.parametrize("feature_size, stride, sizes, ratios", [
    ((5, 7), (16, 16), (128, 256, 512), (0.5, 1.0, 2.0)),  # the paper's 9 anchors
    ((8, 10), (16, 16), (32, 64, 128), (0.5, 1.0, 2.0)),  # the default for small images
    ((3, 4), (8, 12), (45, 91), (0.3, 1.7)),  # odd sizes and ratios (rounding), non-square stride
    ((6, 2), (32, 32), (20,), (1.0,)),  # one anchor per location
    ((1, 1), (16, 16), (33, 70, 150, 301), (0.25, 0.5, 1.0, 2.0, 4.0)),
])
def test_grid_anchors_equal_torchvision(feature_size, stride, sizes, ratios):
    ours = grid_anchors(feature_size, stride, sizes, ratios)
    ref = _torchvision_anchors(feature_size, stride, sizes, ratios)
    assert ours.shape == (feature_size[0] * feature_size[1] * len(sizes) * len(ratios), 4)
    assert torch.equal(ours, ref)


def test_order_ratios_outer_sizes_inner_location_major():
    sizes, ratios, stride = (32, 64, 128), (0.5, 1.0, 2.0), 16
    anchors = grid_anchors((2, 3), stride, sizes, ratios)  # (2·3·9, 4)
    A = 9
    for a in range(A):
        r, s = ratios[a // 3], sizes[a % 3]
        x1, y1, x2, y2 = anchors[a].tolist()
        w, h = x2 - x1, y2 - y1
        assert abs(w * h - s * s) / (s * s) < 0.06  # area ≈ size² (up to the rounding)
        assert abs(h / w - r) / r < 0.1  # ratio = h / w
    # location 1 is (row 0, col 1): the same anchors shifted right by one stride
    assert torch.equal(anchors[A:2 * A], anchors[:A] + torch.tensor([stride, 0, stride, 0.0]))
    # location 3 is (row 1, col 0)
    assert torch.equal(anchors[3 * A:4 * A], anchors[:A] + torch.tensor([0, stride, 0, stride + 0.0]))


def test_cell_anchors_are_rounded_and_centred():
    c = cell_anchors((45,), (0.3,))  # w = 45 / √0.3 = 82.16, h = 24.65
    assert torch.equal(c, torch.tensor([[-41.0, -12.0, 41.0, 12.0]]))


def test_anchor_generator_module_caches():
    gen = AnchorGenerator((16, 32), (0.5, 2.0))
    assert gen.num_anchors_per_location == 4
    a = gen((4, 5), 16)
    assert a is gen((4, 5), 16)
    assert torch.equal(a, grid_anchors((4, 5), 16, (16, 32), (0.5, 2.0)))
    assert gen((4, 5), 8).shape == (80, 4)


def test_argument_errors():
    with pytest.raises(ValueError, match="sizes must be a non-empty sequence of positive numbers"):
        grid_anchors((2, 2), 16, (), (1.0,))
    with pytest.raises(ValueError, match="aspect_ratios must be"):
        grid_anchors((2, 2), 16, (32,), (0.0,))
    with pytest.raises(ValueError, match="stride must be a positive int"):
        grid_anchors((2, 2), 0, (32,), (1.0,))
    with pytest.raises(ValueError, match="feature_size must be"):
        grid_anchors((2, 2, 2), 16, (32,), (1.0,))
