"""EncoderCNN: shapes, gradients, conv inventory, conversion to deformable, argument checks."""

import pytest
import torch
from torch import nn

from vislab.models import create_model, list_models
from vislab.models.encoder_cnn import EncoderCNN, conv_names


def _small(**kw) -> EncoderCNN:
    return EncoderCNN(**{"in_channels": 1, "num_classes": 10, "widths": (4, 8, 8, 16, 16), **kw})


def test_registered_and_default_layout():
    assert "encoder_cnn" in list_models()
    model = create_model("encoder_cnn", in_channels=3, num_classes=80)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 11
    assert all(m.kernel_size == (3, 3) and m.padding == (1, 1) for m in convs)
    assert [m.out_channels for m in convs] == [32, 32, 64, 64, 128, 128, 256, 256, 256, 256, 256]
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 4
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == 3
    # parameters counted by hand: convs (no bias) + BN2d + 3 linears + BN1d
    conv_p = 9 * (3 * 32 + 32 * 32 + 32 * 64 + 64 * 64 + 64 * 128 + 128 * 128 + 128 * 256 + 3 * 256 * 256
                  + 256 * 256)
    bn_p = 2 * (2 * 32 + 2 * 64 + 2 * 128 + 5 * 256) + 2 * (256 + 128)
    fc_p = (256 * 256 + 256) + (256 * 128 + 128) + (128 * 80 + 80)
    assert sum(p.numel() for p in model.parameters()) == conv_p + bn_p + fc_p


@pytest.mark.parametrize("size", [(64, 64), (16, 24), (33, 47)])
def test_forward_shape_and_finite(size):
    model = _small().eval()
    out = model(torch.randn(3, 1, *size))
    assert out.shape == (3, 10)
    assert torch.isfinite(out).all()


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = _small(pool="max").train()
    x, y = torch.randn(4, 1, 32, 32), (torch.rand(4, 10) > 0.5).float()
    nn.functional.binary_cross_entropy_with_logits(model(x), y).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_conv_names_in_forward_order():
    model = _small()
    names = conv_names(model)
    assert names == model.conv_names()
    assert names[:3] == ["features.stage1.conv1", "features.stage1.conv2", "features.stage2.conv1"]
    assert names[-1] == "features.stage5.conv3"
    modules = dict(model.named_modules())
    assert all(isinstance(modules[n], nn.Conv2d) for n in names)
    # forward order: record the order in which the convs run
    seen = []
    hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: seen.append(n)) for n in names]
    model.eval()(torch.randn(1, 1, 16, 16))
    for h in hooks:
        h.remove()
    assert seen == names
    # generic fallback for other models
    seq = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 1), nn.Conv2d(2, 2, 3))
    assert conv_names(seq) == ["0", "2"]


@pytest.mark.parametrize("variant", ["deform-first2", "deform-all"])
def test_conversion_to_deformable_keeps_names_and_output(variant):
    layers = pytest.importorskip("vislab.layers")
    convert = getattr(layers, "convert_to_deformable", None)
    if convert is None:
        pytest.skip("vislab.layers.convert_to_deformable not available yet")
    torch.manual_seed(0)
    model = _small().eval()
    x = torch.randn(2, 1, 32, 32)
    ref = model(x)
    names = conv_names(model)
    chosen = names[:2] if variant == "deform-first2" else names
    converted = convert(model, layers=chosen)
    assert conv_names(converted) == names
    modules = dict(converted.named_modules())
    assert [type(modules[n]) is nn.Conv2d for n in names] == [n not in chosen for n in names]
    # offsets start at zero (and the mask at one), so the deformable model computes the regular one
    torch.testing.assert_close(converted.eval()(x), ref, rtol=1e-4, atol=1e-5)


def test_errors():
    with pytest.raises(ValueError, match=r"expected input Tensor\[B, 1, H, W\], got shape \(2, 3, 32, 32\)"):
        _small()(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"at least 16 .*got \(8, 32\)"):
        _small()(torch.randn(2, 1, 8, 32))
    with pytest.raises(ValueError, match=r"one positive int per stage \(5 stages\), got \(2, 2\)"):
        _small(convs_per_stage=(2, 2))
    with pytest.raises(ValueError, match=r"widths must be a non-empty sequence of positive ints, got \(\)"):
        _small(widths=())
    with pytest.raises(ValueError, match=r"hidden must be two positive ints"):
        _small(hidden=(8,))
    with pytest.raises(ValueError, match="pool must be 'avg' or 'max', got 'min'"):
        _small(pool="min")
    with pytest.raises(ValueError, match=r"dropout must lie in \[0, 1\), got 1.0"):
        _small(dropout=1.0)
    with pytest.raises(ValueError, match="in_channels must be a positive int, got 0"):
        _small(in_channels=0)
    with pytest.raises(TypeError, match="must be an nn.Module, got str"):
        conv_names("model")
