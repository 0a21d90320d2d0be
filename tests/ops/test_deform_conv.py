"""vislab.ops.deform_conv2d against torchvision.ops.deform_conv2d, a float64 loop reference written
from torchvision's CPU kernel, gradcheck, F.conv2d special cases, half precisions, compile, CUDA."""

from __future__ import annotations

import math
import os
import shutil

import pytest
import torch
import torch.nn.functional as F
import torchvision

import vislab.ops.deform_conv as dc
from vislab.ops import deform_conv2d, deform_conv2d_gather, deform_conv2d_output_size

# the three implementations that must agree: the custom Function with each sampler, and the
# standard-op formulation differentiated by autograd
IMPLEMENTATIONS = {
    "fast-sparse": lambda *a, **k: dc._deform_conv2d_with("sparse", *a, **k),
    "fast-gather": lambda *a, **k: dc._deform_conv2d_with("gather", *a, **k),
    "fast-grid": lambda *a, **k: dc._deform_conv2d_with("grid", *a, **k),
    "fast-cpp": lambda *a, **k: dc._deform_conv2d_with("cpp", *a, **k),
    "standard-ops": deform_conv2d_gather,
}


@pytest.fixture(autouse=True)
def _cpp_kernel_or_skip(request):
    """The "fast-cpp" cases and the fused kernels' tests need the compiled kernel; on a machine without a C++
    compiler they are skipped with the reason (the other implementations, the fallback among them, still run)."""
    params = getattr(getattr(request.node, "callspec", None), "params", {})
    if (params.get("impl") == "fast-cpp" or "fused" in request.node.name) and dc._deform_cpp.library() is None:
        pytest.skip(f"the C++ kernel is not available: {dc._deform_cpp.reason()}")


def _loop_reference(x, offset, weight, bias, stride, padding, dilation, mask):
    """Float64 loops, transcribed from torchvision's deform_conv2d CPU kernel (bilinear_interpolate:
    0 when y <= -1, y >= H, x <= -1 or x >= W; each corner outside the map counts 0)."""
    x, offset, weight = x.double(), offset.double(), weight.double()
    B, C, H, W = x.shape
    C_out, C_pg, kh, kw = weight.shape
    groups = C // C_pg
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    Ho, Wo = offset.shape[-2:]
    G = offset.shape[1] // (2 * kh * kw)

    def value(b, c, y, xx):
        if y <= -1 or y >= H or xx <= -1 or xx >= W:
            return 0.0
        y0, x0 = math.floor(y), math.floor(xx)
        ly, lx = y - y0, xx - x0
        total = 0.0
        for yy, wy in ((y0, 1 - ly), (y0 + 1, ly)):
            for xc, wx in ((x0, 1 - lx), (x0 + 1, lx)):
                if 0 <= yy < H and 0 <= xc < W:
                    total += wy * wx * float(x[b, c, yy, xc])
        return total

    cols = torch.zeros(B, C, kh, kw, Ho, Wo, dtype=torch.float64)
    for b in range(B):
        for c in range(C):
            g = c // (C // G)
            for i in range(kh):
                for j in range(kw):
                    k = g * kh * kw + i * kw + j
                    for ho in range(Ho):
                        for wo in range(Wo):
                            y = ho * sh - ph + i * dh + float(offset[b, 2 * k, ho, wo])
                            xx = wo * sw - pw + j * dw + float(offset[b, 2 * k + 1, ho, wo])
                            m = 1.0 if mask is None else float(mask[b, k, ho, wo])
                            cols[b, c, i, j, ho, wo] = m * value(b, c, y, xx)
    out = torch.zeros(B, C_out, Ho, Wo, dtype=torch.float64)
    opg = C_out // groups
    for g in range(groups):
        cg = cols[:, g * C_pg:(g + 1) * C_pg]
        out[:, g * opg:(g + 1) * opg] = torch.einsum("bcijhw,ocij->bohw", cg, weight[g * opg:(g + 1) * opg])
    if bias is not None:
        out += bias.double().view(1, -1, 1, 1)
    return out


def _inputs(B, C, C_out, H, W, kh, kw, stride=1, padding=0, dilation=1, groups=1, offset_groups=1,
            use_mask=True, use_bias=True, offset_scale=2.0, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    Ho, Wo = deform_conv2d_output_size((H, W), (kh, kw), stride, padding, dilation)
    K = kh * kw
    x = torch.randn(B, C, H, W, generator=g, dtype=dtype)
    offset = torch.randn(B, 2 * offset_groups * K, Ho, Wo, generator=g, dtype=dtype) * offset_scale
    weight = torch.randn(C_out, C // groups, kh, kw, generator=g, dtype=dtype)
    bias = torch.randn(C_out, generator=g, dtype=dtype) if use_bias else None
    mask = torch.rand(B, offset_groups * K, Ho, Wo, generator=g, dtype=dtype) if use_mask else None
    return x, offset, weight, bias, mask


def _forward_backward(fn, x, offset, weight, bias, mask, seed=1, **kw):
    """Output and the gradients of (input, offset, weight, bias, mask) for a fixed random grad_out."""
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in (x, offset, weight, bias, mask)]
    out = fn(leaves[0], leaves[1], leaves[2], leaves[3], mask=leaves[4], **kw)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    out.backward(grad_out)
    return [out.detach()] + [None if t is None else t.grad for t in leaves]


def _assert_rel_close(actual, expected, tol, what=""):
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = expected.abs().max().item() if expected.numel() else 0.0
    err = (actual.double() - expected.double()).abs().max().item() if expected.numel() else 0.0
    assert err <= tol * max(scale, 1e-30) or err == 0.0, f"{what}: max error {err:.3g} vs scale {scale:.3g}"


NAMES = ["output", "input", "offset", "weight", "bias", "mask"]

# (B, C, C_out, H, W, kh, kw, stride, padding, dilation, groups, offset_groups, mask, bias, offset_scale)
CASES = {
    "3x3-basic": (2, 4, 6, 7, 8, 3, 3, 1, 1, 1, 1, 1, True, True, 2.0),
    "no-mask-no-bias": (2, 4, 5, 6, 6, 3, 3, 1, 1, 1, 1, 1, False, False, 2.0),
    "stride-2": (2, 3, 4, 9, 8, 3, 3, 2, 1, 1, 1, 1, True, True, 2.0),
    "stride-pad-dil-pairs": (1, 4, 4, 9, 10, 3, 3, (2, 1), (0, 2), (2, 1), 1, 1, True, True, 1.5),
    "non-square-2x3": (2, 4, 3, 6, 7, 2, 3, 1, (1, 0), 1, 1, 1, True, True, 2.0),
    "non-square-1x3": (1, 2, 3, 5, 6, 1, 3, 1, (0, 1), 1, 1, 1, False, True, 2.0),
    "dilation-2": (1, 4, 4, 9, 9, 3, 3, 1, 2, 2, 1, 1, True, True, 2.0),
    "groups-2": (2, 4, 6, 6, 6, 3, 3, 1, 1, 1, 2, 1, True, True, 2.0),
    "offset-groups-2": (2, 4, 4, 6, 6, 3, 3, 1, 1, 1, 1, 2, True, True, 2.0),
    "groups-2-offset-groups-4": (1, 8, 4, 6, 5, 3, 3, 1, 1, 1, 2, 4, True, False, 2.0),
    "groups-4-offset-groups-2": (1, 8, 8, 5, 6, 3, 3, 1, 1, 1, 4, 2, True, True, 2.0),
    "groups-3-offset-groups-2": (1, 6, 3, 5, 5, 3, 3, 1, 1, 1, 3, 2, False, True, 2.0),
    "depthwise": (2, 4, 4, 6, 6, 3, 3, 1, 1, 1, 4, 4, True, True, 2.0),
    "large-offsets-leave-map": (2, 3, 4, 6, 7, 3, 3, 1, 1, 1, 1, 1, True, True, 8.0),
    "1x1-kernel": (2, 3, 5, 5, 5, 1, 1, 1, 0, 1, 1, 1, True, True, 2.0),
    "5x5-kernel": (1, 2, 3, 8, 8, 5, 5, 1, 2, 1, 1, 1, True, True, 2.0),
    "tiny-map-1x1": (2, 2, 3, 1, 1, 3, 3, 1, 1, 1, 1, 1, True, True, 1.0),
}


def _case(name, dtype=torch.float32, seed=0):
    B, C, C_out, H, W, kh, kw, s, p, d, g, G, m, b, scale = CASES[name]
    tensors = _inputs(B, C, C_out, H, W, kh, kw, s, p, d, g, G, m, b, scale, dtype=dtype, seed=seed)
    return tensors, dict(stride=s, padding=p, dilation=d)


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("case", list(CASES))
def test_matches_torchvision_forward_and_all_gradients(case, impl):
    (x, offset, weight, bias, mask), kw = _case(case)
    expected = _forward_backward(torchvision.ops.deform_conv2d, x, offset, weight, bias, mask, **kw)
    actual = _forward_backward(IMPLEMENTATIONS[impl], x, offset, weight, bias, mask, **kw)
    for name, a, e in zip(NAMES, actual, expected):
        assert (a is None) == (e is None), name
        if e is not None:
            _assert_rel_close(a, e, 1e-5, f"{case}/{impl}/{name}")


@pytest.mark.parametrize("case", ["3x3-basic", "stride-pad-dil-pairs", "groups-4-offset-groups-2", "non-square-2x3",
                                  "large-offsets-leave-map"])
def test_matches_float64_loop_reference(case):
    (x, offset, weight, bias, mask), kw = _case(case, dtype=torch.float64)
    kw_pairs = {k: dc._pair(v, k, 0) for k, v in kw.items()}
    expected = _loop_reference(x, offset, weight, bias, kw_pairs["stride"], kw_pairs["padding"],
                               kw_pairs["dilation"], mask)
    torch.testing.assert_close(deform_conv2d(x, offset, weight, bias, mask=mask, **kw), expected,
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(deform_conv2d_gather(x, offset, weight, bias, mask=mask, **kw), expected,
                               rtol=1e-12, atol=1e-12)


def test_boundary_rules_by_hand():
    """One 1×1 tap on a 2×3 map: the value read at chosen positions, and its offset gradient."""
    x = torch.tensor([[[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]]], dtype=torch.float64)
    weight = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    # output pixel (0, 0) samples y = dy, x = dx
    positions = {  # (y, x): value
        (0.0, 0.0): 1.0,
        (0.5, 0.5): (1 + 2 + 4 + 5) / 4,
        (-0.5, 0.0): 0.5 * 1.0,  # half the top-left pixel, half the zero row above
        (1.5, 2.0): 0.5 * 6.0,  # half the last pixel, half the zero row below
        (-1.0, 1.0): 0.0,  # y <= -1 reads nothing
        (2.0, 1.0): 0.0,  # y >= H
        (0.0, 3.0): 0.0,  # x >= W
        (-0.99, -0.99): 0.01 * 0.01 * 1.0,
    }
    for (y, xx), expected in positions.items():
        offset = torch.zeros(1, 2, 2, 3, dtype=torch.float64)
        offset[0, :, 0, 0] = torch.tensor([y, xx], dtype=torch.float64)
        for fn in (deform_conv2d, deform_conv2d_gather, torchvision.ops.deform_conv2d):
            out = fn(x, offset, weight)
            assert out[0, 0, 0, 0].item() == pytest.approx(expected, abs=1e-12), (y, xx, fn.__name__)
    # at y = -1 exactly the value is 0 but, as in torchvision, the y-gradient is the row below (one-sided)
    offset = torch.zeros(1, 2, 2, 3, dtype=torch.float64)
    offset[0, :, 0, 0] = torch.tensor([-1.0, 1.0])
    for fn in (deform_conv2d, torchvision.ops.deform_conv2d):
        leaf = offset.clone().requires_grad_()
        fn(x, leaf, weight)[0, 0, 0, 0].backward()
        assert leaf.grad[0, :, 0, 0].tolist() == pytest.approx([2.0, 0.0]), fn.__name__


@pytest.mark.parametrize("transpose", ["csr", "coo"])
@pytest.mark.parametrize("case", ["3x3-basic", "groups-3-offset-groups-2", "large-offsets-leave-map"])
def test_both_transposed_sampling_matrices_match_torchvision(monkeypatch, case, transpose):
    monkeypatch.setattr(dc, "_TRANSPOSE", transpose)
    (x, offset, weight, bias, mask), kw = _case(case)
    expected = _forward_backward(torchvision.ops.deform_conv2d, x, offset, weight, bias, mask, **kw)
    actual = _forward_backward(IMPLEMENTATIONS["fast-sparse"], x, offset, weight, bias, mask, **kw)
    _assert_rel_close(actual[1], expected[1], 1e-5, f"{case}/{transpose}/input")


@pytest.fixture(params=[1, 3], ids=["1-thread", "3-threads"])
def threads(request):
    """torch's intra-op threads (the suite runs with 1); the C++ kernels run that many workers."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
def test_several_batch_chunks_equal_one(monkeypatch, impl, threads):
    (x, offset, weight, bias, mask), kw = _case("groups-2")  # 6×6 maps
    x, offset, mask = (t.repeat(3, 1, 1, 1) for t in (x, offset, mask))  # B = 6
    whole = _forward_backward(IMPLEMENTATIONS[impl], x, offset, weight, bias, mask, **kw)
    monkeypatch.setattr(dc, "_MIN_CHUNK_COLUMNS", 1)
    monkeypatch.setattr(dc, "_CHUNK_BYTES", 1)  # one image per chunk
    monkeypatch.setattr(dc, "_CHUNK_BYTES_CPP", 1)
    assert len(dc._chunks(dc._check(x, offset, weight, bias, mask=mask, **kw), 4, x.device)) == 6
    chunked = _forward_backward(IMPLEMENTATIONS[impl], x, offset, weight, bias, mask, **kw)
    monkeypatch.setattr(dc, "_CHUNK_BYTES", 4 * weight.shape[1] * 9 * 36 * 4)  # 4 images, then 2
    monkeypatch.setattr(dc, "_CHUNK_BYTES_CPP", 4 * weight.shape[1] * 9 * 36 * 4)
    uneven = _forward_backward(IMPLEMENTATIONS[impl], x, offset, weight, bias, mask, **kw)
    for name, a, b, c in zip(NAMES, whole, chunked, uneven):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5, msg=name)
        torch.testing.assert_close(c, a, rtol=1e-5, atol=1e-5, msg=name)


def _gradcheck(impl, use_mask, fast_mode):
    # B=1, C=4 → 2 outputs, 4×3 map, groups 2, offset groups 2, stride (1, 2): small enough for the
    # numerical Jacobian, with every index path exercised
    x, offset, weight, bias, mask = _inputs(1, 4, 2, 4, 3, 3, 3, (1, 2), 1, 1, 2, 2, True, True, 1.5,
                                            dtype=torch.float64, seed=3)
    fn = IMPLEMENTATIONS[impl]
    mask = mask if use_mask else None
    inputs = tuple(None if t is None else t.requires_grad_() for t in (x, offset, weight, bias, mask))

    def f(x, offset, weight, bias, mask):
        return fn(x, offset, weight, bias, stride=(1, 2), padding=1, mask=mask)

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=fast_mode)


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("use_mask", [True, False])
def test_gradcheck_float64(impl, use_mask):
    _gradcheck(impl, use_mask, fast_mode=True)


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
def test_gradcheck_float64_full_jacobian(impl):
    _gradcheck(impl, True, fast_mode=False)


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("geometry", [dict(stride=1, padding=1, dilation=1, groups=1),
                                      dict(stride=2, padding=(1, 2), dilation=(1, 2), groups=2),
                                      dict(stride=(1, 2), padding=0, dilation=2, groups=4)])
def test_zero_offsets_equal_conv2d_and_half_mask_halves_it(impl, geometry):
    g = torch.Generator().manual_seed(5)
    geometry = dict(geometry)
    groups = geometry.pop("groups")
    x = torch.randn(2, 8, 9, 10, generator=g)
    weight = torch.randn(4, 8 // groups, 3, 3, generator=g)
    bias = torch.randn(4, generator=g)
    conv = F.conv2d(x, weight, bias, groups=groups, **geometry)
    offset = torch.zeros(2, 2 * 9, *conv.shape[-2:])
    fn = IMPLEMENTATIONS[impl]
    torch.testing.assert_close(fn(x, offset, weight, bias, **geometry), conv, rtol=1e-5, atol=1e-5)
    half = torch.full((2, 9, *conv.shape[-2:]), 0.5)
    torch.testing.assert_close(fn(x, offset, weight, None, mask=half, **geometry),
                               0.5 * F.conv2d(x, weight, None, groups=groups, **geometry), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
def test_batch_zero(impl):
    (x, offset, weight, bias, mask), kw = _case("3x3-basic")
    x, offset, mask = x[:0], offset[:0], mask[:0]
    out, gx, goff, gw, gb, gm = _forward_backward(IMPLEMENTATIONS[impl], x, offset, weight, bias, mask, **kw)
    assert out.shape == (0, 6, 7, 8)
    assert gx.shape == x.shape and goff.shape == offset.shape and gm.shape == mask.shape
    assert torch.equal(gw, torch.zeros_like(weight)) and torch.equal(gb, torch.zeros_like(bias))
    expected = torchvision.ops.deform_conv2d(x, offset, weight, bias, mask=mask, **kw)
    assert expected.shape == out.shape


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
def test_non_contiguous_inputs(impl):
    (x, offset, weight, bias, mask), kw = _case("offset-groups-2")
    expected = _forward_backward(torchvision.ops.deform_conv2d, x, offset, weight, bias, mask, **kw)
    # channels-last input, offset/mask stored transposed, weight as a permuted view
    x_nc = x.contiguous(memory_format=torch.channels_last)
    offset_nc = offset.transpose(2, 3).contiguous().transpose(2, 3)
    mask_nc = mask.transpose(0, 1).contiguous().transpose(0, 1)
    weight_nc = weight.permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)
    assert not any(t.is_contiguous() for t in (x_nc, offset_nc, mask_nc, weight_nc))
    actual = _forward_backward(IMPLEMENTATIONS[impl], x_nc, offset_nc, weight_nc, bias, mask_nc, **kw)
    for name, a, e in zip(NAMES, actual, expected):
        _assert_rel_close(a, e, 1e-5, name)


@pytest.mark.parametrize("impl", ["fast-sparse", "fast-gather", "fast-grid", "fast-cpp"])
def test_only_some_inputs_require_grad(impl):
    (x, offset, weight, bias, mask), kw = _case("3x3-basic")
    full = _forward_backward(IMPLEMENTATIONS[impl], x, offset, weight, bias, mask, **kw)
    for which in range(5):
        leaves = [t.detach().clone().requires_grad_(i == which) for i, t in enumerate((x, offset, weight, bias, mask))]
        out = IMPLEMENTATIONS[impl](*leaves[:4], mask=leaves[4], **kw)
        out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)))
        torch.testing.assert_close(leaves[which].grad, full[which + 1], rtol=1e-6, atol=1e-6)
        assert all(t.grad is None for i, t in enumerate(leaves) if i != which)


# groups = 1 with 8 or 16 output channels: the C++ path's fused kernels (no column buffer); widths that are not
# a multiple of the kernel's 8-pixel block, column lengths that are not a multiple of its 16-entry block
FUSED_CASES = {
    "fused-16-channels": (3, 16, 16, 9, 10, 3, 3, 1, 1, 1, 1, 1, True, True, 2.0),
    "fused-8-stride-pad-dil-pairs": (2, 4, 8, 9, 10, 3, 3, (2, 1), (0, 2), (2, 1), 1, 1, True, True, 1.5),
    "fused-offset-groups-2-no-mask-no-bias": (2, 6, 16, 6, 7, 3, 3, 1, 1, 1, 1, 2, False, False, 2.0),
    "fused-32-in-2x3-kernel": (2, 32, 8, 6, 7, 2, 3, 1, (1, 0), 1, 1, 1, True, True, 2.0),
    "fused-large-offsets-leave-map": (2, 2, 16, 6, 5, 3, 3, 1, 1, 1, 1, 1, True, True, 8.0),
    "fused-batch-0": (0, 16, 16, 5, 5, 3, 3, 1, 1, 1, 1, 1, True, True, 2.0),
    "fused-one-channel": (3, 1, 16, 9, 10, 3, 3, 1, 1, 1, 1, 1, True, True, 2.0),
    "fused-one-channel-per-offset-group-stride-dil": (2, 3, 32, 9, 11, 3, 3, (2, 1), (0, 2), (2, 1), 1, 3, True, True,
                                                      1.5),
    "fused-one-channel-no-mask-24-out": (2, 1, 24, 6, 7, 2, 3, 1, (1, 0), 1, 1, 1, False, False, 8.0),
}


@pytest.mark.parametrize("case", list(FUSED_CASES))
def test_fused_kernel_matches_torchvision_and_the_column_path(monkeypatch, case, threads):
    B, C, C_out, H, W, kh, kw, s, p, d, g, G, m, b, scale = FUSED_CASES[case]
    x, offset, weight, bias, mask = _inputs(B, C, C_out, H, W, kh, kw, s, p, d, g, G, m, b, scale, dtype=torch.float64)
    kw_ = dict(stride=s, padding=p, dilation=d)
    assert dc._fused(dc._check(x, offset, weight, bias, mask=mask, **kw_))
    monkeypatch.setattr(dc, "_FUSED_X_BYTES", 1)  # one image per chunk: the chunk offsets matter
    fused = _forward_backward(IMPLEMENTATIONS["fast-cpp"], x, offset, weight, bias, mask, **kw_)
    reference = _forward_backward(torchvision.ops.deform_conv2d, x, offset, weight, bias, mask, **kw_)
    monkeypatch.setattr(dc, "_FUSED_OUT", ())
    columns = _forward_backward(IMPLEMENTATIONS["fast-cpp"], x, offset, weight, bias, mask, **kw_)
    for name, a, r, c in zip(NAMES, fused, reference, columns):
        if r is None:
            assert a is None
            continue
        _assert_rel_close(a, r, 1e-12, f"{case} {name} vs torchvision")
        _assert_rel_close(a, c, 1e-12, f"{case} {name} vs the column path")


@pytest.mark.parametrize("n, c_out", [(4, 16), (4, 32), (1, 16), (1, 32)], ids=["fused", "columns", "fused-1-image",
                                                                             "columns-1-image"])
def test_fused_and_column_kernels_give_the_same_bits_every_call(threads, n, c_out):
    """Workers pull pieces of rows dynamically; the result must not depend on which worker takes which piece
    (two demo runs of one seed differed): the input gradient is scattered one image per piece into one buffer
    (fewer images than workers: one fixed range per worker, summed in order), the weight gradient summed per
    piece in piece order. Fused kernel (16 output channels) and column path (32), 10 calls each."""
    x, offset, weight, bias, mask = _inputs(n, 16, c_out, 12, 12, 3, 3, padding=1, offset_scale=0.5)
    first = _forward_backward(deform_conv2d, x, offset, weight, bias, mask, padding=1)
    for _ in range(9):
        again = _forward_backward(deform_conv2d, x, offset, weight, bias, mask, padding=1)
        assert all(torch.equal(a, b) for a, b in zip(first, again))


@pytest.mark.parametrize("workers", [1, 2, 3, 8])
@pytest.mark.parametrize("images, rows", [(1, 56), (2, 7), (3, 5), (4, 56), (64, 64), (5, 1)])
def test_scatter_pieces_never_mix_images(workers, images, rows, monkeypatch):
    """The pieces of a scattering pass cover every row once; shared-buffer pieces hold whole images, the others
    lie within one image and every image has the same number of them (summed per image in piece order)."""
    from vislab.ops import _deform_cpp

    monkeypatch.setattr(_deform_cpp, "WORKERS", workers)
    bounds, shared = _deform_cpp.scatter_pieces(images, rows)
    assert bounds[0] == 0 and bounds[-1] == images * rows and all(a < b for a, b in zip(bounds, bounds[1:]))
    if shared:
        assert all(a % rows == 0 for a in bounds) and images >= min(2 * workers, images * rows)
    else:
        assert all(a // rows == (b - 1) // rows for a, b in zip(bounds, bounds[1:]))  # within one image
        assert (len(bounds) - 1) % images == 0


def test_fused_kernel_computes_only_the_gradients_asked_for():
    x, offset, weight, bias, mask = _inputs(2, 16, 16, 7, 9, 3, 3, padding=1, dtype=torch.float64)
    full = _forward_backward(deform_conv2d, x, offset, weight, bias, mask, padding=1)
    for which in range(5):
        leaves = [t.detach().clone().requires_grad_(i == which) for i, t in enumerate((x, offset, weight, bias, mask))]
        out = deform_conv2d(*leaves[:4], mask=leaves[4], padding=1)
        out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype))
        torch.testing.assert_close(leaves[which].grad, full[which + 1], rtol=1e-12, atol=1e-12)


def test_fused_kernel_is_chosen_for_few_output_channels_only():
    def fused(c_in, c_out, groups=1, offset_groups=1):
        x, offset, weight, _, mask = _inputs(1, c_in, c_out, 5, 5, 3, 3, padding=1, groups=groups,
                                             offset_groups=offset_groups)
        return dc._fused(dc._check(x, offset, weight, None, 1, 1, 1, mask))

    assert fused(16, 16) and fused(32, 8) and fused(4, 16, offset_groups=2)
    assert not fused(16, 32) and not fused(16, 12) and not fused(16, 16, groups=2)
    assert fused(1, 16) and fused(1, 64) and fused(4, 24, offset_groups=4)  # one channel per offset group
    assert not fused(1, 128)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
def test_half_precisions(dtype, impl):
    """Half-precision inputs give half-precision results close to float32 on the same (rounded) values."""
    (x, offset, weight, bias, mask), kw = _case("groups-2", seed=7)
    low = [t.to(dtype) for t in (x, offset, weight, bias, mask)]
    expected = _forward_backward(deform_conv2d, *(t.float() for t in low), **kw)
    actual = _forward_backward(IMPLEMENTATIONS[impl], *low, **kw)
    tol = 2e-2 if dtype == torch.bfloat16 else 3e-3
    for name, a, e in zip(NAMES, actual, expected):
        assert a.dtype == dtype, name
        _assert_rel_close(a.float(), e, tol, name)


def test_output_size_matches_nn_conv2d():
    for kernel, stride, padding, dilation in [(3, 1, 1, 1), ((2, 3), (2, 1), (0, 1), (1, 2)), (5, 3, 2, 2)]:
        conv = torch.nn.Conv2d(1, 1, kernel, stride, padding, dilation)
        expected = conv(torch.zeros(1, 1, 13, 11)).shape[-2:]
        assert deform_conv2d_output_size((13, 11), kernel, stride, padding, dilation) == tuple(expected)


def test_default_sampler_on_cpu_is_the_cpp_kernel_else_sparse_and_grid_for_few_channels(monkeypatch):
    (x, offset, weight, bias, mask), kw = _case("3x3-basic")
    geom = dc._check(x, offset, weight, bias, mask=mask, **kw)
    gray = dc._check(x[:, :1], offset, weight[:, :1], bias, mask=mask, **kw)  # one channel
    if shutil.which(os.environ.get("CXX", "c++")):  # with a compiler the kernel must build
        assert dc._deform_cpp.library() is not None, dc._deform_cpp.reason()
        assert dc._default_kind(x, geom) == "cpp" and dc._default_kind(x, gray) == "cpp"
    monkeypatch.setattr(dc._deform_cpp, "library", lambda: None)  # a machine without one
    assert dc._default_kind(torch.zeros(1)) == "sparse"
    assert geom.in_channels > dc._GRID_MAX_CHANNELS and dc._default_kind(x, geom) == "sparse"
    assert dc._default_kind(x, gray) == "grid"


# ---- argument checks --------------------------------------------------------------------------


def _valid():
    (x, offset, weight, bias, mask), kw = _case("offset-groups-2")
    return dict(input=x, offset=offset, weight=weight, bias=bias, mask=mask, **kw)


@pytest.mark.parametrize("change, error, match", [
    (dict(input=torch.zeros(4, 6, 6)), ValueError,
     r"input must be Tensor\[B, C, H, W\] \(4-D\), got shape \(4, 6, 6\)"),
    (dict(input="x"), TypeError, "input must be a torch.Tensor, got str"),
    (dict(weight=torch.zeros(4, 4, 3)), ValueError, r"weight must be Tensor\[C_out, C_in/groups, kh, kw\]"),
    (dict(weight=torch.zeros(4, 3, 3, 3)), ValueError,
     r"must divide the input's 4 channels, got weight shape \(4, 3, 3, 3\)"),
    (dict(weight=torch.zeros(3, 2, 3, 3)), ValueError,
     r"positive multiple of groups=2.*got weight shape \(3, 2, 3, 3\)"),
    (dict(offset=torch.zeros(2, 17, 6, 6)), ValueError,
     r"offset must be Tensor\[B, 2·G·kh·kw, Ho, Wo\] = \[2, 2·G·9, 6, 6\].*got shape \(2, 17, 6, 6\)"),
    (dict(offset=torch.zeros(2, 36, 5, 6)), ValueError, r"got shape \(2, 36, 5, 6\)"),
    (dict(offset=torch.zeros(2, 54, 6, 6), mask=None), ValueError,
     r"3 offset groups .* must divide the input's 4 channels"),
    (dict(mask=torch.zeros(2, 9, 6, 6)), ValueError,
     r"mask must be Tensor\[B, G·kh·kw, Ho, Wo\] = \[2, 18, 6, 6\] \(G=2"),
    (dict(bias=torch.zeros(5)), ValueError, r"bias must be Tensor\[C_out\] = \[4\], got shape \(5,\)"),
    (dict(bias=[0.0]), TypeError, "bias must be a torch.Tensor or None, got list"),
    (dict(weight=torch.zeros(4, 4, 3, 3, dtype=torch.float64)), TypeError,
     "weight must have the input's dtype torch.float32, got torch.float64"),
    (dict(input=torch.zeros(2, 4, 6, 6, dtype=torch.int64)), TypeError, "input must be a floating-point tensor"),
    (dict(stride=0), ValueError, "stride must be >= 1, got 0"),
    (dict(padding=-1), ValueError, "padding must be >= 0, got -1"),
    (dict(dilation=(1, 2, 3)), TypeError, r"dilation must be an int or a pair of ints, got \(1, 2, 3\)"),
    (dict(stride=1.5), TypeError, "stride must be an int or a pair of ints, got 1.5"),
    (dict(padding=0, input=torch.zeros(2, 4, 2, 2), offset=torch.zeros(2, 36, 1, 1), mask=None), ValueError,
     "the output would be empty: input 2×2 with kernel 3×3"),
])
@pytest.mark.parametrize("fn", [deform_conv2d, deform_conv2d_gather])
def test_argument_errors(fn, change, error, match):
    args = {**_valid(), **change}
    with pytest.raises(error, match=match):
        fn(**args)


# ---- torch.compile, CUDA ----------------------------------------------------------------------


def test_torch_compile_fullgraph_matches_eager():
    (x, offset, weight, bias, mask), kw = _case("offset-groups-2")
    eager = _forward_backward(deform_conv2d, x, offset, weight, bias, mask, **kw)
    torch._dynamo.reset()
    compiled = torch.compile(lambda *a, **k: deform_conv2d(*a, **k), fullgraph=True, backend="aot_eager")
    actual = _forward_backward(compiled, x, offset, weight, bias, mask, **kw)
    for name, a, e in zip(NAMES, actual, eager):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.slow
def test_torch_compile_inductor_matches_eager():
    (x, offset, weight, bias, mask), kw = _case("groups-2")
    eager = _forward_backward(deform_conv2d, x, offset, weight, bias, mask, **kw)
    torch._dynamo.reset()
    compiled = torch.compile(lambda *a, **k: deform_conv2d(*a, **k), fullgraph=True)
    actual = _forward_backward(compiled, x, offset, weight, bias, mask, **kw)
    for name, a, e in zip(NAMES, actual, eager):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4, msg=name)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("case", ["3x3-basic", "groups-4-offset-groups-2", "large-offsets-leave-map"])
def test_cuda_matches_cpu_and_torchvision(case):
    (x, offset, weight, bias, mask), kw = _case(case)
    expected = _forward_backward(deform_conv2d, x, offset, weight, bias, mask, **kw)
    on_gpu = [t.cuda() for t in (x, offset, weight, bias, mask)]

    def run(fn):
        leaves = [t.detach().clone().requires_grad_() for t in on_gpu]
        out = fn(*leaves[:4], mask=leaves[4], **kw)
        out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).cuda())
        return [out.detach().cpu()] + [t.grad.cpu() for t in leaves]

    for result in (run(deform_conv2d), run(torchvision.ops.deform_conv2d)):
        for name, a, e in zip(NAMES, result, expected):
            _assert_rel_close(a, e, 1e-4, name)


@cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_precisions(dtype):
    (x, offset, weight, bias, mask), kw = _case("groups-2", seed=7)
    expected = deform_conv2d(x, offset, weight, bias, mask=mask, **kw)
    out = deform_conv2d(*(t.cuda().to(dtype) for t in (x, offset, weight, bias)), mask=mask.cuda().to(dtype), **kw)
    assert out.dtype == dtype
    _assert_rel_close(out.float().cpu(), expected, 3e-2, "output")
