"""Traced modules: shapes, parameters and MACs equal the instantiated model's; receptive fields equal
published values and gradient probing, across residual adds, concatenations and functional ops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vislab.arith import analyze, load_model, probe_receptive_field, trace_module

MODELS = ["resnet18", "vgg16", "alexnet", "mobilenet_v2", "unet", "densenet"]


def _leaf_shapes(model: nn.Module, shape: tuple[int, ...]) -> dict[str, list[list[int]]]:
    """Output shapes of every leaf module call, recorded with plain hooks (independent of vislab)."""
    out: dict[str, list[list[int]]] = {}
    hooks = []
    for name, m in model.named_modules():
        if next(iter(m.children()), None) is None:
            hooks.append(m.register_forward_hook(
                lambda mod, a, o, n=name: out.setdefault(n, []).append(list(o.shape[1:]))))
    with torch.no_grad():
        model.eval()(torch.zeros(1, *shape, device=next(model.parameters()).device))
    for h in hooks:
        h.remove()
    return out


@pytest.mark.parametrize("name", MODELS)
def test_torchvision_shapes_params_macs_equal_the_module(name):
    model = load_model(name)  # on the meta device: real PyTorch shape inference, no compute
    shape = (3, 96, 96)
    a = trace_module(model, shape)
    expected = _leaf_shapes(model, shape)
    got: dict[str, list[list[int]]] = {}
    for r in a.rows:
        if r["name"] in expected:
            got.setdefault(r["name"], []).append(r["output_shape"])
    assert got == expected
    named = dict(model.named_parameters())
    assert a.totals["params"] == sum(p.numel() for p in named.values())
    assert a.totals["params_no_bias"] == sum(p.numel() for n, p in named.items() if not n.endswith("bias"))
    assert sum(r["params"] for r in a.rows) == a.totals["params"]
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros(1, *shape, device="meta"))
    assert 2 * a.totals["macs"] == counter.get_total_flops()


@pytest.mark.parametrize("name, layer, expected", [
    ("vgg16", "features", ([212, 212], [32, 32], [90, 90])),  # Araujo et al. 2019, Table 1
    ("mobilenet_v2", "features", ([491, 491], [32, 32], [245, 245])),  # Araujo et al. 2019, Table 1
    ("alexnet", "features", ([195, 195], [32, 32], [66, 66])),  # RF/stride as alexnet_v2 in Araujo; p=2 conv1
    ("resnet18", "layer4", ([435, 435], [32, 32], [217, 217])),
    ("inception_v3", "Mixed_7c", ([1311, 1311], [32, 32], [618, 618])),  # Araujo et al. 2019, Table 1
])
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_published_receptive_fields(name, layer, expected):
    a = trace_module(load_model(name), (3, 299, 299) if name == "inception_v3" else (3, 224, 224))
    s = a.module_outputs[layer].summary()
    assert (s["rf"], s["stride"], s["padding"]) == expected


def _agrees_with_probe(model, shape, layer, units):
    a = trace_module(model, shape)
    g = a.module_outputs[layer]
    results = probe_receptive_field(model, shape, layer, units)
    for res in results:
        assert (res["rows"], res["cols"]) == g.region(*res["unit"]), res
    return results


def test_resnet18_probe_through_layer2():
    # layer2: RF 99, stride 8, padding 49; at 128 px the 16x16 map has border and interior units
    model = torchvision.models.resnet18()
    res = _agrees_with_probe(model, (3, 128, 128), "layer2", [(0, 0), (8, 8), (15, 15), (2, 13)])
    assert res[1]["rows"] == (8 * 8 - 49, 8 * 8 - 49 + 98)  # an interior unit sees exactly 99 pixels


def test_mobilenet_v2_probe_full_depth():
    # width 0.25 keeps it cheap; the RF (491, stride 32, padding 245) does not depend on the widths.
    # At 320 px unit (9, 9) has an unclipped left edge (9·32-245) and unit (0, 0) an unclipped right edge.
    model = torchvision.models.mobilenet_v2(width_mult=0.25)
    res = _agrees_with_probe(model, (3, 320, 320), "features", [(0, 0), (9, 9), (4, 6)])
    assert res[0]["rows"] == (0, 245) and res[1]["rows"][0] == 9 * 32 - 245


@pytest.mark.slow
@pytest.mark.parametrize("name, size, layer", [("resnet18", 448, "layer4"), ("vgg16", 224, "features"),
                                               ("alexnet", 256, "features"), ("mobilenet_v2", 512, "features")])
def test_full_models_probe(name, size, layer):
    model = torchvision.models.get_model(name)
    a = trace_module(model, (3, size, size))
    g = a.module_outputs[layer]
    h, w = g.h.n, g.w.n
    res = _agrees_with_probe(model, (3, size, size), layer, [(0, 0), (h // 2, w // 2), (h - 1, w - 1), (1, w - 2)])
    r0, r1 = res[1]["rows"]
    assert r1 - r0 + 1 == g.summary()["rf"][0]  # the centre unit's region lies inside the image


class Functional(nn.Module):
    """Functional ops written in forward: reflect pad, crop, bilinear resize, pixel shuffle, residual, concat."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 4, 3, stride=2, dilation=2, groups=2)
        self.b = nn.ConvTranspose2d(4, 4, 3, stride=2, padding=1, output_padding=1)
        self.c = nn.Conv2d(20, 20, 1)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)

    def forward(self, x):
        y = self.a(F.pad(x, (2, 1, 3, 0), mode="reflect"))
        y = self.b(y)
        y = y[..., 1:-1, 2:]
        z = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)
        z = F.pixel_unshuffle(z, 2)
        y = torch.cat([z, y], dim=1)
        y = y + self.c(y)
        return self.pool(F.relu(y))


def test_functional_ops_against_probe():
    model = Functional()
    shape = (2, 21, 19)
    a = trace_module(model, shape)
    assert a.notes == []
    g = a.module_outputs[""]
    h, w = g.h.n, g.w.n
    units = [(i, j) for i in range(h) for j in range(w)]
    for res in probe_receptive_field(model, shape, "", units):
        assert (res["rows"], res["cols"]) == g.region(*res["unit"]), res


def test_unet_and_densenet_against_probe():
    from vislab.models import create_model

    unet = create_model("unet", in_channels=1, widths=(4, 8, 16))
    _agrees_with_probe(unet, (1, 64, 64), "", [(0, 0), (32, 32), (31, 32), (63, 5)])
    valid = create_model("unet", in_channels=1, widths=(2, 4), padding=0)
    _agrees_with_probe(valid, (1, 44, 44), "", [(0, 0), (2, 1), (3, 3)])
    bilinear = create_model("unet", in_channels=1, widths=(2, 4), up_mode="bilinear")
    _agrees_with_probe(bilinear, (1, 32, 32), "", [(0, 0), (16, 15), (31, 31)])
    dense = create_model("densenet", block_config=(2, 3), growth_rate=4, init_features=8, num_classes=3)
    _agrees_with_probe(dense, (3, 96, 96), "features", [(0, 0), (6, 5), (11, 11)])


def test_global_ops_and_unknown_ops():
    class Roll(nn.Module):
        def forward(self, x):
            return torch.roll(x, 1, dims=3)

    model = nn.Sequential(nn.Conv2d(3, 4, 3), Roll(), nn.Conv2d(4, 4, 3))
    a = trace_module(model, (3, 16, 16))
    assert a.rows[0]["rf"] == [3, 3]
    assert a.rows[-1]["rf"] is None
    assert any("'roll'" in n for n in a.notes)

    gap = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    rows = analyze(gap, "3x16x16")["rows"]
    assert [r["rf"] for r in rows] == [[3, 3], "global", "global", "global"]

    class Mean(nn.Module):
        def forward(self, x):
            return x * x.mean((2, 3), keepdim=True)  # squeeze-excitation style: every unit sees everything

    rows = analyze(nn.Sequential(nn.Conv2d(3, 4, 3), Mean()), "3x16x16")["rows"]
    assert rows[-1]["rf"] == "global"


def test_trace_restores_training_mode_and_rejects_bad_input():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    model.train()
    trace_module(model, "3x8x8")
    assert model.training and model[1].training
    with pytest.raises(TypeError, match=r"trace_module expects an nn.Module, got str"):
        trace_module("resnet18", "3x8x8")
    with pytest.raises(ValueError, match=r"unknown model 'no_such_net': not a vislab model"):
        load_model("no_such_net")


def test_shared_module_parameters_counted_once():
    conv = nn.Conv2d(4, 4, 3, padding=1)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), conv, nn.ReLU(), conv)
    a = trace_module(model, "3x8x8")
    assert [r["params"] for r in a.rows] == [16, 148, 0, 0]
    assert a.totals["params"] == 164
    assert a.rows[-1]["rf"] == [5, 5]


def test_attention_macs_and_timm_models_equal_flop_counter():
    class TinyViT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.patch = nn.Conv2d(3, 32, 8, stride=8)
            self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
            self.head = nn.Linear(32, 5)

        def forward(self, x):
            t = self.patch(x).flatten(2).transpose(1, 2)  # (B, N, C)
            t = self.attn(t, t, t, need_weights=False)[0]
            return self.head(t.mean(1))

    for model, shape in ((TinyViT(), (3, 32, 32)), (load_model("resnet10t"), (3, 64, 64))):
        a = trace_module(model, shape)
        # on the meta device attention runs as plain matmuls, which FlopCounterMode counts (CPU flash
        # attention has no FLOP formula); autograd on keeps nn.MultiheadAttention off its fused fast path
        counter = FlopCounterMode(display=False)
        with counter:
            model.to("meta").eval()(torch.zeros(1, *shape, device="meta"))
        assert 2 * a.totals["macs"] == counter.get_total_flops()
        assert a.totals["params"] == sum(p.numel() for p in model.parameters())


def test_deformable_layers_are_traced_with_nominal_geometry_and_sampling_macs():
    from vislab.layers import DeformableConv2d, convert_to_deformable

    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                        nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
    regular = trace_module(net, (3, 20, 20))
    convert_to_deformable(net, ["2", "4"])
    assert isinstance(net[2], DeformableConv2d) and isinstance(net[4], DeformableConv2d)
    a = trace_module(net, (3, 20, 20))
    rows = {r["name"]: r for r in a.rows}
    reg = {r["name"]: r for r in regular.rows}
    # the deformable layer: same shape and nominal receptive field as the conv it replaced
    for name in ("2", "4"):
        assert rows[name]["type"] == "DeformableConv2d"
        assert rows[name]["output_shape"] == reg[name]["output_shape"]
        assert rows[name]["rf"] == reg[name]["rf"]
        assert rows[name]["params"] == reg[name]["params"]  # its own weight and bias; the predictor has its row
    # MACs: the convolution plus bilinear sampling (4 per sampled value) and the mask (1 more)
    assert rows["2"]["macs"] == reg["2"]["macs"] + 8 * 9 * 10 * 10 * 5
    assert rows["4"]["macs"] == reg["4"]["macs"] + 16 * 9 * 10 * 10 * 5
    # the offset/mask predictor: a Conv2d row with 27 output channels, counted like any conv
    off = rows["2.offset_conv"]
    assert off["output_shape"] == [27, 10, 10] and off["params"] == 8 * 27 * 9 + 27
    assert off["macs"] == 8 * 27 * 9 * 10 * 10
    assert a.totals["params"] == sum(p.numel() for p in net.parameters())
    assert any("deformable layers: nominal receptive field" in n for n in a.notes)
    # the trace leaves the layers as they were: the real forward still runs afterwards
    out = net(torch.randn(1, 3, 20, 20))
    assert out.shape == (1, 16, 10, 10) and "forward" not in vars(net[2])


def test_deformable_layers_trace_on_the_meta_device():
    from vislab.layers import convert_to_deformable

    model = load_model("encoder_cnn", {"in_channels": 1, "num_classes": 10})
    convert_to_deformable(model)
    a = trace_module(model, (1, 64, 64))
    assert sum(r["type"] == "DeformableConv2d" for r in a.rows) == 11
    assert a.totals["params"] == sum(p.numel() for p in model.parameters())
