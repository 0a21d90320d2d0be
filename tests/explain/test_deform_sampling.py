"""Sampling locations of deformable layers (hand-computed grids) and their plot."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vislab.explain.deform_sampling import deform_sampling_locations, plot_deform_sampling
from vislab.layers import DeformableConv2d

GRID_3X3 = [(dx, dy) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]  # (x, y) offsets, taps in row-major order


def _two_layers():
    return nn.Sequential(DeformableConv2d(1, 4, 3, padding=1), nn.ReLU(), DeformableConv2d(4, 4, 3, padding=1))


def _set_constant_offset(layer: DeformableConv2d, dy: float, dx: float):
    with torch.no_grad():
        layer.offset_conv.bias[: 2 * 9].view(9, 2).copy_(torch.tensor([dy, dx]))


def test_fresh_layer_samples_the_regular_grid():
    layer = DeformableConv2d(1, 2, 3, padding=1)
    s = deform_sampling_locations(layer, torch.randn(1, 10, 12), [(4, 6), (0, 0)])
    assert s.layers == [""]
    assert s.points.tolist() == [[4, 6], [0, 0]]
    expected = torch.tensor([[[4 + dx, 6 + dy] for dx, dy in GRID_3X3], [[dx, dy] for dx, dy in GRID_3X3]],
                            dtype=torch.float64)
    torch.testing.assert_close(s.levels[0], expected)
    torch.testing.assert_close(s.weights[0], torch.ones(2, 9, dtype=torch.float64))  # 2·sigmoid(0)


def test_constant_offset_and_mask_move_and_weight_every_tap():
    layer = DeformableConv2d(1, 2, 3, padding=1, mask_activation="sigmoid")
    _set_constant_offset(layer, dy=0.5, dx=-2.0)
    s = deform_sampling_locations(layer, torch.randn(1, 10, 12), [(5, 5)])
    expected = torch.tensor([[[5 + dx - 2.0, 5 + dy + 0.5] for dx, dy in GRID_3X3]], dtype=torch.float64)
    torch.testing.assert_close(s.levels[0], expected)
    torch.testing.assert_close(s.weights[0], torch.full((1, 9), 0.5, dtype=torch.float64))
    regular = deform_sampling_locations(layer, torch.randn(1, 10, 12), [(5, 5)], regular=True)
    torch.testing.assert_close(regular.levels[0], expected - torch.tensor([-2.0, 0.5], dtype=torch.float64))


def test_two_layers_compose_to_81_points_on_a_5x5_window():
    model = _two_layers()
    s = deform_sampling_locations(model, torch.randn(1, 16, 16), [(7, 8)])
    assert s.layers == ["2", "0"] and [lv.shape for lv in s.levels] == [(1, 9, 2), (1, 81, 2)]
    window = {(7 + dx, 8 + dy) for dx in range(-2, 3) for dy in range(-2, 3)}
    assert {tuple(p) for p in s.levels[1][0].tolist()} == window
    # the point read most often is the centre: 9 of the 81 paths end there
    counts = torch.unique(s.levels[1][0], dim=0, return_counts=True)[1]
    assert counts.max().item() == 9


def test_strided_layers_map_between_resolutions():
    """A stride-2 layer on a 16×16 image: output pixel (ho, wo) is centred at image (2·wo + 0.5, 2·ho + 0.5)
    by the pixel-centre rule, and its taps read input pixels 2·ho − 1 + i."""
    layer = DeformableConv2d(1, 1, 3, stride=2, padding=1)
    s = deform_sampling_locations(layer, torch.randn(1, 16, 16), [(9.0, 4.0)])
    # x = 9 → output column round((9.5)/2 − 0.5) = round(4.25) = 4; y = 4 → row round(1.75) = 2
    assert s.points.tolist() == [[8.5, 4.5]]
    expected = torch.tensor([[[2 * 4 - 1 + j, 2 * 2 - 1 + i] for i in range(3) for j in range(3)]],
                            dtype=torch.float64)
    torch.testing.assert_close(s.levels[0], expected)


def test_offsets_of_the_lower_layer_are_read_where_the_upper_layer_samples():
    model = _two_layers()
    _set_constant_offset(model[0], dy=1.0, dx=0.0)  # bottom layer: everything one row down
    s = deform_sampling_locations(model, torch.randn(1, 16, 16), [(7, 8)])
    top = torch.tensor([[7 + dx, 8 + dy] for dx, dy in GRID_3X3], dtype=torch.float64)
    torch.testing.assert_close(s.levels[0][0], top)
    expected = (top.unsqueeze(1) + torch.tensor([[dx, dy + 1.0] for dx, dy in GRID_3X3],
                                                dtype=torch.float64)).reshape(81, 2)
    torch.testing.assert_close(s.levels[1][0], expected)


def test_plot_returns_a_figure_with_both_panels(tmp_path):
    model = _two_layers()
    _set_constant_offset(model[2], dy=0.7, dx=-0.4)
    fig = plot_deform_sampling(model, torch.randn(1, 16, 16), [(7, 8), (3, 3)], title="test")
    assert len(fig.axes) == 2
    assert "regular" in fig.axes[0].get_title() and "deformable" in fig.axes[1].get_title()
    scatter = fig.axes[1].collections[0]
    assert scatter.get_offsets().shape == (2 * 81, 2)
    fig.savefig(tmp_path / "sampling.png")
    assert (tmp_path / "sampling.png").stat().st_size > 1000


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(model=nn.Sequential(nn.Conv2d(1, 1, 3))), ValueError, "the model has no DeformableConv2d layer"),
    (dict(layers=["1"]), ValueError,
     r"layer '1' is not a DeformableConv2d of the model; its deformable layers are \['0', '2'\]"),
    (dict(points=[(16.0, 3.0)]), ValueError, r"points must be \(x, y\) positions inside the 16×16 image"),
    (dict(image=torch.randn(2, 1, 16, 16)), ValueError,
     r"image must be Tensor\[C, H, W\] or Tensor\[1, C, H, W\], got \(2, 1, 16, 16\)"),
    (dict(offset_group=1), ValueError, r"offset_group must be in \[0, 1\)"),
    (dict(model="net"), TypeError, "model must be an nn.Module, got str"),
])
def test_errors(kwargs, error, match):
    args = {**dict(model=_two_layers(), image=torch.randn(1, 16, 16), points=[(3.0, 3.0)]), **kwargs}
    with pytest.raises(error, match=match):
        deform_sampling_locations(args.pop("model"), args.pop("image"), args.pop("points"), **args)


def test_too_many_chained_layers_is_refused_before_any_work():
    # 7 layers of 3×3: 9^7 = 4.8 million points per pixel (11 layers, as in deform-all, would exhaust memory)
    net = nn.Sequential(*[DeformableConv2d(2, 2, 3, padding=1) for _ in range(7)])
    with pytest.raises(ValueError, match=r"following 7 deformable layers gives 4,782,969 sampling points per chosen "
                                         r"pixel .* pass fewer layers"):
        deform_sampling_locations(net, torch.randn(2, 8, 8), [(3.0, 3.0)], layers=[str(i) for i in range(7)])
    # four layers for two pixels (13,122 points) are fine
    s = deform_sampling_locations(net, torch.randn(2, 8, 8), [(3.0, 3.0), (5.0, 5.0)], layers=["0", "1", "2", "3"])
    assert s.levels[-1].shape == (2, 9**4, 2)
