"""DeformConv2d (torchvision's module), DeformableConv2d (drop-in nn.Conv2d), convert_to_deformable,
deformable_param_groups; training, torch.compile and ONNX export of a model with the layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from vislab.layers import DeformableConv2d, DeformConv2d, convert_to_deformable, deformable_param_groups


def _seeded(seed=0):
    return torch.Generator().manual_seed(seed)


# ---- DeformConv2d -----------------------------------------------------------------------------


@pytest.mark.parametrize("args, kwargs", [
    ((4, 6, 3), dict(padding=1)),
    ((4, 4, (3, 2)), dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2)),
    ((6, 3, 3), dict(groups=3, bias=False)),
])
def test_deform_conv2d_module_matches_torchvision(args, kwargs):
    ours, theirs = DeformConv2d(*args, **kwargs), torchvision.ops.DeformConv2d(*args, **kwargs)
    ours.load_state_dict(theirs.state_dict())  # same parameter names and shapes
    assert repr(ours) == repr(theirs)
    x = torch.randn(2, args[0], 9, 8, generator=_seeded())
    kh, kw = ours.kernel_size
    Ho, Wo = _out_size(x, ours)
    offset = torch.randn(2, 2 * 2 * kh * kw, Ho, Wo, generator=_seeded(1)) * 2  # two offset groups
    mask = torch.rand(2, 2 * kh * kw, Ho, Wo, generator=_seeded(2))
    out_ours, out_theirs = ours(x, offset, mask), theirs(x, offset, mask)
    torch.testing.assert_close(out_ours, out_theirs, rtol=1e-5, atol=1e-5)
    out_ours.sum().backward()
    out_theirs.sum().backward()
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ours(x, offset), theirs(x, offset), rtol=1e-5, atol=1e-5)  # v1


def _out_size(x, layer):
    conv = nn.Conv2d(layer.in_channels, 1, layer.kernel_size, layer.stride, layer.padding, layer.dilation)
    return conv(x).shape[-2:]


def test_deform_conv2d_module_initialisation_matches_nn_conv2d():
    torch.manual_seed(0)
    ours = DeformConv2d(8, 16, 3)
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3)
    torch.testing.assert_close(ours.weight, conv.weight)
    torch.testing.assert_close(ours.bias, conv.bias)


@pytest.mark.parametrize("cls", [DeformConv2d, DeformableConv2d])
@pytest.mark.parametrize("args, match", [
    ((5, 4, 3, 1, 0, 1, 2), "in_channels must be divisible by groups, got in_channels=5, groups=2"),
    ((4, 5, 3, 1, 0, 1, 2), "out_channels must be divisible by groups, got out_channels=5, groups=2"),
    ((0, 4, 3), "in_channels must be a positive int, got 0"),
    ((4, 4, 0), "kernel_size must be >= 1, got 0"),
])
def test_constructor_errors(cls, args, match):
    with pytest.raises(ValueError, match=match):
        cls(*args)


# ---- DeformableConv2d -------------------------------------------------------------------------


@pytest.mark.parametrize("conv", [
    nn.Conv2d(4, 6, 3, padding=1),
    nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False),
    nn.Conv2d(4, 8, (3, 5), stride=(1, 2), padding=(2, 1), dilation=(2, 1), groups=2),
    nn.Conv2d(4, 4, 3, padding="same", groups=4),
    nn.Conv2d(4, 6, 3, padding="valid"),
])
@pytest.mark.parametrize("options", [dict(), dict(modulated=False), dict(offset_groups=2)])
def test_drop_in_layer_equals_the_regular_conv_at_init(conv, options):
    layer = DeformableConv2d.from_conv(conv, **options)
    x = torch.randn(2, 4, 11, 10, generator=_seeded())
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-5, atol=1e-5)
    for name in ("in_channels", "out_channels", "kernel_size", "stride", "dilation", "groups"):
        assert getattr(layer, name) == getattr(conv, name), name


def test_sigmoid_mask_halves_the_conv_at_init():
    conv = nn.Conv2d(3, 5, 3, padding=1)
    layer = DeformableConv2d.from_conv(conv, mask_activation="sigmoid")
    x = torch.randn(2, 3, 8, 8, generator=_seeded())
    expected = 0.5 * F.conv2d(x, conv.weight, None, padding=1) + conv.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_constant_integer_offset_shifts_the_input():
    """Offsets (dy, dx) = (1, -2) on every tap read x[h + 1, w - 2]: a conv of the shifted image."""
    layer = DeformableConv2d(3, 4, 3, padding=1, modulated=False)
    with torch.no_grad():
        layer.offset_conv.bias.view(9, 2).copy_(torch.tensor([1.0, -2.0]))
    x = torch.randn(1, 3, 7, 9, generator=_seeded())
    # tap (i, j) of output (h, w) reads x[h - 1 + i + 1, w - 1 + j - 2] = xp[h + i, w + j] with
    # xp[a, b] = x[a, b - 3] (zero outside x): a valid convolution of xp
    xp = F.pad(x, (3, 0, 0, 2))
    expected = F.conv2d(xp, layer.weight, layer.bias)[..., :9]
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_offset_and_mask_shapes_and_gradients_reach_the_offset_predictor():
    layer = DeformableConv2d(4, 6, 3, stride=2, padding=1, offset_groups=2)
    x = torch.randn(2, 4, 9, 9, generator=_seeded())
    offset, mask = layer.offset_and_mask(x)
    assert offset.shape == (2, 2 * 2 * 9, 5, 5) and mask.shape == (2, 2 * 9, 5, 5)
    assert torch.equal(offset, torch.zeros_like(offset)) and torch.equal(mask, torch.ones_like(mask))
    layer(x).square().sum().backward()
    assert layer.offset_conv.weight.grad.abs().sum() > 0
    assert layer.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kwargs, match", [
    (dict(offset_groups=3), "offset_groups must be a positive divisor of in_channels=4, got 3"),
    (dict(mask_activation="tanh"), "mask_activation must be '2sigmoid' or 'sigmoid', got 'tanh'"),
    (dict(padding="same", stride=2), r"padding='same' needs stride 1 \(as in nn.Conv2d\), got stride=\(2, 2\)"),
    (dict(padding="full"), "padding must be an int, a pair, 'valid' or 'same', got 'full'"),
])
def test_drop_in_layer_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DeformableConv2d(4, 4, 3, **kwargs)


def test_same_padding_with_even_kernel_is_refused():
    with pytest.raises(ValueError, match=r"padding='same' with kernel \(2, 2\).*needs asymmetric padding"):
        DeformableConv2d(4, 4, 2, padding="same")


def test_from_conv_refuses_other_padding_modes_and_keeps_dtype_and_mode():
    with pytest.raises(ValueError, match="only padding_mode='zeros' can be made deformable, got 'reflect'"):
        DeformableConv2d.from_conv(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(TypeError, match="conv must be an nn.Conv2d, got Linear"):
        DeformableConv2d.from_conv(nn.Linear(2, 2))
    conv = nn.Conv2d(2, 3, 3).double().eval()
    layer = DeformableConv2d.from_conv(conv)
    assert layer.weight.dtype == torch.float64 and layer.offset_conv.weight.dtype == torch.float64
    assert not layer.training


# ---- convert_to_deformable --------------------------------------------------------------------


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = nn.Sequential(nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                                   nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 3, stride=3, padding=1))
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.block(self.stem(x)).mean((2, 3)))


def _deformable_names(model):
    return [n for n, m in model.named_modules() if isinstance(m, DeformableConv2d)]


@pytest.mark.parametrize("layers, expected", [
    (None, ["stem", "block.1"]),  # 3×3 with stride 1 or 2 (not the 1×1, not the stride-3 one)
    (["block.3", "stem"], ["stem", "block.3"]),
    (lambda name, conv: name.startswith("block") and conv.kernel_size == (3, 3), ["block.1", "block.4"]),
])
def test_convert_selects_layers_and_keeps_the_function(layers, expected):
    model = _Net()
    x = torch.randn(2, 3, 12, 12, generator=_seeded())
    before = model(x)
    assert convert_to_deformable(model, layers) is model
    assert _deformable_names(model) == expected
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)


def test_convert_does_not_touch_offset_predictors_and_options_are_passed():
    model = convert_to_deformable(_Net(), ["stem"], modulated=False, offset_groups=3)
    assert model.stem.offset_conv.out_channels == 2 * 3 * 9 and not model.stem.modulated
    convert_to_deformable(model)  # the rest; stem.offset_conv stays an nn.Conv2d
    assert _deformable_names(model) == ["stem", "block.1"]
    assert type(model.stem.offset_conv) is nn.Conv2d


@pytest.mark.parametrize("layers, error, match", [
    (["nope"], ValueError, r"layer 'nope' is not a module of the model; the model's nn.Conv2d layers are \['stem'"),
    (["head"], ValueError, "layer 'head' is a Linear, not a convertible nn.Conv2d"),
    ([], ValueError, "layers is an empty list"),
    ("stem", TypeError, "got the string 'stem'"),
    (lambda name, conv: False, ValueError, "no nn.Conv2d layer of the model matches the selector"),
])
def test_convert_errors(layers, error, match):
    with pytest.raises(error, match=match):
        convert_to_deformable(_Net(), layers)


def test_convert_with_nothing_to_convert_says_so():
    with pytest.raises(ValueError, match="is a 3×3 nn.Conv2d with stride 1 or 2; its convolutions are"):
        convert_to_deformable(nn.Sequential(nn.Conv2d(3, 3, 1)))


# ---- parameter groups -------------------------------------------------------------------------


def test_param_groups_give_offset_predictors_a_smaller_learning_rate():
    model = convert_to_deformable(_Net())
    groups = deformable_param_groups(model, lr=0.1, offset_lr_mult=0.25, weight_decay=1e-4)
    assert [g["lr"] for g in groups] == [0.1, 0.025]
    assert all(g["weight_decay"] == 1e-4 for g in groups)
    offset_params = {id(p) for m in (model.stem, model.block[1]) for p in m.offset_conv.parameters()}
    assert {id(p) for p in groups[1]["params"]} == offset_params
    all_ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(all_ids) == sorted(id(p) for p in model.parameters())  # a partition
    torch.optim.SGD(groups, lr=1.0)  # accepted by an optimizer
    assert len(deformable_param_groups(_Net(), lr=0.1)) == 1  # no deformable layer: one group


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(lr=0.0), ValueError, "lr must be > 0, got 0.0"),
    (dict(lr=0.1, offset_lr_mult=-1.0), ValueError, "offset_lr_mult must be >= 0, got -1.0"),
])
def test_param_group_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        deformable_param_groups(_Net(), **kwargs)


# ---- a model with the layer trains, compiles and exports --------------------------------------


def _shapes_task(n=64, seed=0):
    """Bright 3×3 square (class 0) vs a bright plus sign (class 1) at random places on 12×12."""
    g = _seeded(seed)
    x = torch.randn(n, 1, 12, 12, generator=g) * 0.1
    y = torch.randint(0, 2, (n,), generator=g)
    for i in range(n):
        r, c = torch.randint(1, 10, (2,), generator=g).tolist()
        if y[i] == 0:
            x[i, 0, r - 1:r + 2, c - 1:c + 2] += 1
        else:
            x[i, 0, r - 1:r + 2, c] += 1
            x[i, 0, r, c - 1:c + 2] += 1
    return x, y


def test_a_model_with_the_drop_in_layer_trains():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    convert_to_deformable(model, ["2"])
    x, y = _shapes_task(n=32)
    opt = torch.optim.Adam(deformable_param_groups(model, lr=0.03, offset_lr_mult=0.5))
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert model[2].offset_conv.weight.abs().max() > 0  # the offsets moved away from zero


def _trained_like_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                          nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1))
    convert_to_deformable(model, ["2", "4"], offset_groups=2)
    with torch.no_grad():  # non-zero offsets and masks, as after training
        for layer in (model[2], model[4]):
            layer.offset_conv.weight.normal_(0, 0.3)
            layer.offset_conv.bias.normal_(0, 1.0)
    return model.eval()


def test_torch_compile_of_a_model_with_the_layer_matches_eager():
    model = _trained_like_model()
    x = torch.randn(2, 3, 16, 16, generator=_seeded())
    expected = model(x)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore:Constant folding:UserWarning")
@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo-exporter", "torchscript-exporter"])
def test_onnx_export_runs_in_onnxruntime_with_standard_ops(tmp_path, dynamo):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = _trained_like_model()
    x = torch.randn(2, 3, 16, 16, generator=_seeded())
    path = tmp_path / "deformable.onnx"
    if dynamo:  # the default exporter of torch.onnx.export, with a dynamic batch size
        batch = torch.export.Dim("batch", min=1, max=64)
        torch.onnx.export(model, (x,), path, dynamo=True, verbose=False, dynamic_shapes={"input": {0: batch}})
    else:
        with pytest.warns(DeprecationWarning):
            torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17)
    graph = onnx.load(path).graph
    assert {node.domain for node in graph.node} <= {"", "ai.onnx"}  # standard ONNX ops only
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for inputs in ([x, torch.randn(3, 3, 16, 16, generator=_seeded(1))] if dynamo else [x]):
        with torch.no_grad():
            expected = model(inputs).numpy()
        (actual,) = session.run(None, {session.get_inputs()[0].name: inputs.numpy()})
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)
