"""U-Net and DenseNet: registry, shapes, gradients, and DenseNet-121 equal to torchvision's."""

from __future__ import annotations

import pytest
import torch
import torchvision

from vislab.arith import trace_module
from vislab.models import create_model, list_models
from vislab.models.densenet import DenseNet
from vislab.models.unet import UNet


def test_registered():
    assert {"unet", "densenet", "densenet_cifar"} <= set(list_models())


def test_unet_same_padding_shapes_and_gradients():
    torch.manual_seed(0)
    model = create_model("unet", in_channels=2, num_classes=3, widths=(4, 8, 16))
    x = torch.randn(2, 2, 32, 40)
    y = model(x)
    assert y.shape == (2, 3, 32, 40)
    y.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_unet_paper_configuration_572_to_388():
    with torch.device("meta"):
        model = create_model("unet", num_classes=2, padding=0, batch_norm=False)
        y = model(torch.zeros(1, 3, 572, 572))
    assert y.shape == (1, 2, 388, 388)
    assert model.output_size(572) == 388
    a = trace_module(model, "3x572x572")
    # the paper's figure 1: 32x32 after the last pooling, then 30x30 and 28x28 in the bottleneck
    assert [r["output_shape"] for r in a.rows if r["name"].startswith("bottleneck.") and r["type"] == "Conv2d"] \
        == [[1024, 30, 30], [1024, 28, 28]]


def test_unet_bottleneck_is_16x16_for_256_inputs():
    a = trace_module(create_model("unet").to("meta"), "3x256x256")
    assert [r["output_shape"] for r in a.rows if r["name"] == "bottleneck.0"] == [[1024, 16, 16]]
    assert a.totals["output_shape"] == [1, 256, 256]


def test_unet_bilinear_variant():
    model = create_model("unet", widths=(4, 8), up_mode="bilinear")
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 1, 16, 16)


@pytest.mark.parametrize("kwargs, size, match", [
    ({"widths": (4, 8)}, 30, r"UNet with 2 levels cannot take a size of 30: .* use sizes divisible by 4"),
    ({"widths": (4, 8), "padding": 0}, 32, r"UNet with 2 levels cannot take a size of 32"),
])
def test_unet_bad_sizes(kwargs, size, match):
    with pytest.raises(ValueError, match=match):
        create_model("unet", **kwargs)(torch.zeros(1, 3, size, size))


@pytest.mark.parametrize("kwargs, match", [
    ({"widths": ()}, r"widths must be a non-empty sequence of positive ints, got \(\)"),
    ({"padding": 2}, r"padding must be 1 \(same\) or 0 \(valid, as in the paper\), got 2"),
    ({"up_mode": "nearest"}, r"up_mode must be 'transpose' or 'bilinear', got 'nearest'"),
])
def test_unet_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UNet(**kwargs)


def test_densenet121_equals_torchvision():
    """Same configuration, same module names: torchvision's state dict loads and the outputs agree."""
    ours = create_model("densenet")
    ref = torchvision.models.densenet121()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters()) == 7_978_856
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), ref.eval()(x))


def test_densenet_small_config_equals_torchvision_class():
    cfg = dict(growth_rate=8, block_config=(2, 3), num_init_features=16, bn_size=2, num_classes=5)
    ref = torchvision.models.DenseNet(**cfg)
    ours = DenseNet(growth_rate=8, block_config=(2, 3), init_features=16, bn_size=2, num_classes=5)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), ref.eval()(x))


def test_dense_block_channel_growth_and_compression():
    model = DenseNet(block_config=(3, 4), growth_rate=6, init_features=10, compression=0.5, stem="cifar",
                     num_classes=2)
    block1 = model.features.denseblock1
    assert [l.norm1.num_features for l in block1.values()] == [10, 16, 22]  # m + (l-1)·k
    assert model.features.transition1.conv.out_channels == (10 + 3 * 6) // 2
    no_b = DenseNet(block_config=(2,), growth_rate=4, init_features=8, bn_size=None, stem="cifar", num_classes=2)
    assert not hasattr(no_b.features.denseblock1.denselayer1, "conv1")
    y = model(torch.randn(2, 3, 16, 16))
    y.sum().backward()
    assert y.shape == (2, 2) and all(p.grad is not None for p in model.parameters())


def test_densenet_bc_100_for_cifar():
    model = create_model("densenet_cifar")  # DenseNet-BC (L=100, k=12): 0.8 M parameters in the paper
    assert 0.75e6 < sum(p.numel() for p in model.parameters()) < 0.85e6
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize("call, match", [
    (lambda: create_model("densenet_cifar", depth=50), r"depth must be 6n \+ 4 \(e.g. 100\) for a bottleneck, got 50"),
    (lambda: DenseNet(block_config=()), r"block_config must be a non-empty sequence of positive ints, got \(\)"),
    (lambda: DenseNet(growth_rate=0), r"growth_rate must be a positive int, got 0"),
    (lambda: DenseNet(compression=0), r"compression must be in \(0, 1\], got 0"),
    (lambda: DenseNet(stem="tiny"), r"stem must be 'imagenet' or 'cifar', got 'tiny'"),
])
def test_densenet_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()
