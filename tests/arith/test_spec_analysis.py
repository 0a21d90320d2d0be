"""Layer specs: parsing, errors, and agreement of the arithmetic with the instantiated module and with
gradient probing, on hand-written and random stacks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from vislab.arith import analyze, analyze_spec, build_module, parse_spec
from vislab.arith.formulas import receptive_field_chain
from vislab.arith.probe import positive_copy, probe_receptive_field
from vislab.arith.spec import SpecError

EXAMPLE = "conv(16,k=5,s=1,p=1) relu maxpool(2) conv(16,k=5) relu maxpool(2) flatten dense(10)"


def _real_shapes(net, shape):
    """Output shape of every spec layer, recorded by plain forward hooks (no vislab code involved)."""
    shapes = {}
    hooks = [layer.register_forward_hook(lambda m, a, o, i=i: shapes.__setitem__(i, list(o.shape[1:])))
             for i, layer in enumerate(net.layers)]
    with torch.no_grad():
        net.eval()(torch.zeros(1, *shape))
    for h in hooks:
        h.remove()
    return [shapes[i] for i in range(len(net.layers))]


def _check_against_module(spec: str, shape: tuple[int, ...]) -> None:
    a = analyze_spec(spec, shape)
    net = build_module(spec, shape)
    assert [r["output_shape"] for r in a.rows] == _real_shapes(net, shape)
    for row, layer in zip(a.rows, net.layers):
        named = dict(layer.named_parameters())
        assert row["params"] == sum(p.numel() for p in named.values()), row["name"]
        assert row["params_no_bias"] == sum(p.numel() for n, p in named.items() if not n.endswith("bias"))
    assert a.totals["params"] == sum(p.numel() for p in net.parameters())
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(torch.zeros(1, *shape))
    assert 2 * a.totals["macs"] == counter.get_total_flops()


def test_example_spec_table_hand_computed():
    rows = analyze(EXAMPLE, "3x128x128")["rows"]
    # 128 + 2·1 - 5 + 1 = 126 → pool 63 → 63 - 5 + 1 = 59 → pool 29 → 16·29·29 = 13456
    assert [r["output_shape"] for r in rows] == [[16, 126, 126], [16, 126, 126], [16, 63, 63], [16, 59, 59],
                                                  [16, 59, 59], [16, 29, 29], [13456], [10]]
    assert [r["params"] for r in rows] == [16 * 3 * 25 + 16, 0, 0, 16 * 16 * 25 + 16, 0, 0, 0, 13456 * 10 + 10]
    assert rows[0]["params_no_bias"] == 1200
    assert rows[0]["macs"] == 126 * 126 * 16 * 3 * 25
    # RF: 5, then pool 5+1=6 (jump 2), conv 6+4·2=14, pool 14+1·2=16 (jump 4); padding 1 from the first conv
    assert [r["rf"] for r in rows[:6]] == [[5, 5], [5, 5], [6, 6], [14, 14], [14, 14], [16, 16]]
    assert rows[5]["stride"] == [4, 4] and rows[5]["padding"] == [1, 1]
    assert rows[7]["rf"] == "global"
    _check_against_module(EXAMPLE, (3, 128, 128))


def test_vgg16_conv_stack_matches_araujo_table():
    """Araujo et al. 2019, Table 1: VGG-16 receptive field 212, effective stride 32, effective padding 90."""
    block = "conv(C,k=3,p=1) relu "
    spec = "".join(block.replace("C", str(c)) * n + "maxpool(2) " for c, n in
                   ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)))
    t = analyze(spec, "3x224x224")["totals"]
    assert (t["rf"], t["stride"], t["padding"]) == ([212, 212], [32, 32], [90, 90])
    assert t["output_shape"] == [512, 7, 7]
    assert t["params"] == 14_714_688  # torchvision vgg16().features


def test_parse_aliases_pairs_and_keywords():
    layers = parse_spec("conv2d(8, 3x5, s=2, p=same, d=2, g=1, bias=false) -> BN | dwconv(k=3,m=2); "
                        "convT(4,k=2,s=2) fc(3)")
    assert [l.kind for l in layers] == ["conv", "bn", "dwconv", "deconv", "dense"]
    assert layers[0].args == {"out": 8, "k": (3, 5), "s": 2, "p": "same", "d": 2, "g": 1, "bias": False}
    assert layers[2].args["m"] == 2 and layers[3].args["s"] == 2
    assert parse_spec("maxpool(3, s=2)")[0].args["s"] == 2
    assert parse_spec("maxpool(3)")[0].args["s"] == 3  # stride defaults to the kernel


@pytest.mark.parametrize("spec, match", [
    ("conv(16) convv(3)", r"layer 2 'convv\(3\)': unknown layer type 'convv'"),
    ("conv(-16,k=5)", r"layer 1 'conv\(-16,k=5\)': out must be positive, got '-16'"),
    ("conv(16,k=0)", r"layer 1 .*k must be positive"),
    ("conv(16,q=3)", r"unknown argument 'q'"),
    ("conv(16,3,1,0,1,1,9)", r"too many positional arguments"),
    ("conv(16,bias=maybe)", r"bias must be true/false, got 'maybe'"),
    ("conv(16,p=wide)", r"p must be a non-negative integer, HxW, 'same' or 'valid', got 'wide'"),
    ("conv(16", r"unbalanced parentheses"),
    ("conv(16) ##", r"cannot parse the layer spec at position 9"),
    ("conv", r"missing required argument 'out'"),
    ("save()", r"needs at least one name"),
    ("dropout(1.5)", r"p must be in \[0, 1\)"),
    ("", r"the layer spec is empty"),
])
def test_bad_specs_name_the_layer(spec, match):
    with pytest.raises(ValueError, match=match):
        analyze(spec, "3x32x32")


def test_layer_that_shrinks_the_map_names_layer_and_received_shape():
    with pytest.raises(SpecError, match=r"layer 3 'conv\(16,k=9\)' received 8x6x6 and would shrink the map to "
                                        r"0x0 \(below 1 pixel\)"):
        analyze("conv(8,k=5) maxpool(2) conv(16,k=9)", "3x16x16")
    with pytest.raises(SpecError, match=r"layer 2 'maxpool\(4\)' received 4x2x2"):
        analyze("conv(4,k=3) maxpool(4)", "3x4x4")


@pytest.mark.parametrize("spec, match", [
    ("conv(6,g=4)", r"received 3x8x8: groups=4 must divide both the 3 input and 6 output channels"),
    ("flatten conv(4)", r"needs a CxHxW feature map but received the flat shape 192"),
    ("conv(4) dense(10)", r"needs a flat input but received 4x6x6; add 'flatten' before it"),
    ("conv(4) concat(a)", r"nothing was saved under 'a'"),
    ("save(a) conv(4) concat(a)", r"received 4x6x6 and 3x8x8: concatenation needs the same height and width"),
    ("save(a) conv(4,p=1) add(a)", r"received 4x8x8 and 3x8x8: addition needs equal shapes"),
    ("save(a) save(a)", r"the name 'a' is already saved"),
    ("maxpool(2,p=2)", r"padding 2 is more than half the kernel"),
    ("deconv(4,k=3,s=2,op=2)", r"output padding 2 must be smaller than the stride 2"),
])
def test_spec_that_does_not_fit_its_input(spec, match):
    with pytest.raises(SpecError, match=match):
        analyze(spec, "3x8x8")


@pytest.mark.parametrize("text", ["3x224", "0x4x4", "3xax4", "3x-5x5"])
def test_bad_input_shape(text):
    with pytest.raises(ValueError, match=r"input shape must be CxHxW with positive sizes, like 3x224x224, got"):
        analyze("conv(4)", text)


def test_analyze_rejects_other_types():
    with pytest.raises(TypeError, match=r"analyze expects a layer-spec string or an nn.Module, got int"):
        analyze(3, "3x8x8")


def test_result_is_json_serialisable():
    import json

    data = analyze("conv(4,k=3,s=2) save(a) deconv(4,k=2,s=2) conv(4,p=1,s=2) concat(a) gap flatten dense(2)",
                   "3x16x16")
    assert json.loads(json.dumps(data)) == data


# ----------------------------------------------------------------------------------------------
# Random stacks: groups, dilation, strides, padded pooling, ceil mode, transposed convs, upsampling,
# asymmetric "same" padding, concatenation and residual adds.


def _candidates(rng: np.random.Generator, channels: int, saved: list[str]) -> str:
    r = rng.integers
    kind = rng.choice(["conv", "conv", "dwconv", "deconv", "maxpool", "avgpool", "upsample", "pad", "bn", "relu",
                       "save", "merge"])
    if kind == "conv":
        g = int(rng.choice([g for g in (1, 2, 3) if channels % g == 0]))
        out = g * int(r(1, 4))
        k = f"{r(1, 5)}x{r(1, 5)}" if r(0, 4) == 0 else str(r(1, 6))
        p = rng.choice(["0", "1", "2", "same", "valid"])
        return f"conv({out},k={k},s={r(1, 3)},p={p},d={r(1, 3)},g={g},bias={r(0, 2)})"
    if kind == "dwconv":
        return f"dwconv(k={r(1, 5)},s={r(1, 3)},p={r(0, 3)},d={r(1, 3)},m={r(1, 3)})"
    if kind == "deconv":
        s, d = int(r(1, 4)), int(r(1, 3))
        return f"deconv({r(1, 5)},k={r(1, 5)},s={s},p={r(0, 3)},op={r(0, max(s, d))},d={d})"
    if kind == "maxpool":
        k, d = int(r(1, 4)), int(r(1, 3))
        return f"maxpool({k},s={r(1, 4)},p={r(0, k // 2 + 1)},d={d},ceil={r(0, 2)})"
    if kind == "avgpool":
        k = int(r(1, 4))
        return f"avgpool({k},s={r(1, 4)},p={r(0, k // 2 + 1)},ceil={r(0, 2)})"
    if kind == "upsample":
        return f"upsample({r(2, 4)},mode={rng.choice(['nearest', 'bilinear'])})"
    if kind == "pad":
        return f"pad({r(0, 3)}x{r(0, 3)})"
    if kind in ("bn", "relu"):
        return str(kind)
    if kind == "save" or not saved:
        return f"save(s{len(saved)})"
    return f"{rng.choice(['concat', 'add'])}({rng.choice(saved)})"


def random_stack(seed: int, n_layers: int = 8) -> tuple[str, tuple[int, int, int]]:
    """A random valid spec: candidates that do not fit the running shape are skipped."""
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 4)), int(rng.integers(10, 29)), int(rng.integers(10, 29)))
    layers: list[str] = []
    saved: list[str] = []
    for _ in range(60):
        if len(layers) >= n_layers:
            break
        a = analyze_spec(" ".join(layers), shape) if layers else None
        channels = a.rows[-1]["output_shape"][0] if a else shape[0]
        cand = _candidates(rng, channels, saved)
        try:
            b = analyze_spec(" ".join(layers + [cand]), shape)
        except SpecError:
            continue
        if max(b.rows[-1]["output_shape"][1:]) > 48:  # keep the maps small
            continue
        layers.append(cand)
        if cand.startswith("save("):
            saved.append(cand[5:-1])
    return " ".join(layers), shape


@pytest.mark.parametrize("seed", range(24))
def test_random_stack_shapes_params_macs_equal_the_module(seed):
    spec, shape = random_stack(seed)
    _check_against_module(spec, shape)


@pytest.mark.parametrize("seed", range(16))
def test_random_stack_receptive_fields_equal_gradient_probe(seed):
    spec, shape = random_stack(seed)
    a = analyze_spec(spec, shape)
    net = build_module(spec, shape)
    probe = positive_copy(net)
    rng = np.random.default_rng(seed + 1000)
    checked = 0
    for idx in sorted({len(a.rows) - 1, int(rng.integers(0, len(a.rows)))}):
        g = a.geometries[idx]
        if g is None or g.kind != "map":
            continue
        h, w = g.h.n, g.w.n
        units = {(0, 0), (h - 1, w - 1), (h // 2, w // 2), (int(rng.integers(0, h)), int(rng.integers(0, w)))}
        for res in probe_receptive_field(probe, shape, f"layers.{idx}", sorted(units), positive=True):
            rows, cols = g.region(*res["unit"])
            # the region's extent; dilation and strided transposed convs may leave holes inside it
            assert (res["rows"], res["cols"]) == (rows, cols), (spec, idx, res)
            checked += 1
    assert checked > 0, spec


def test_unet_like_spec_with_concat_and_transposed_convs_against_probe():
    spec = ("conv(4,p=1) relu save(e1) maxpool(2) conv(8,p=1) relu save(e2) maxpool(2) conv(16,p=1) "
            "deconv(8,k=2,s=2) concat(e2) conv(8,p=1) deconv(4,k=2,s=2) concat(e1) conv(4,p=1) conv(1,k=1)")
    shape = (1, 32, 32)
    _check_against_module(spec, shape)
    a = analyze_spec(spec, shape)
    probe = positive_copy(build_module(spec, shape))
    last = len(a.rows) - 1
    for res in probe_receptive_field(probe, shape, f"layers.{last}", [(0, 0), (16, 16), (15, 16), (31, 2)],
                                     positive=True):
        assert (res["rows"], res["cols"]) == a.geometries[last].region(*res["unit"])


@pytest.mark.parametrize("seed", range(20))
def test_plain_chains_follow_the_araujo_recursion(seed):
    rng = np.random.default_rng(seed)
    layers, chain = [], []
    for _ in range(int(rng.integers(2, 9))):
        k, s, d = int(rng.integers(1, 6)), int(rng.integers(1, 4)), int(rng.integers(1, 3))
        if rng.integers(0, 2):
            p = int(rng.integers(0, 3))
            layers.append(f"conv(2,k={k},s={s},p={p},d={d})")
        else:
            p = int(rng.integers(0, k // 2 + 1))
            layers.append(f"maxpool({k},s={s},p={p},d={d})")
        chain.append((k, s, p, d))
    rows = analyze_spec(" ".join(layers), (1, 4000, 4000)).rows
    expected = receptive_field_chain(chain)
    assert [(r["rf"][0], r["stride"][0], r["padding"][0]) for r in rows] == expected
