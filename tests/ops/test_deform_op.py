"""vislab::deform_conv2d as a registered torch operator: schema, fake kernel, autograd registration
and AOT dispatch (torch.library.opcheck) over a grid of geometries, dtypes and memory layouts;
the public function dispatches to it; torch.compile, torch.export and torch.fx see one op."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import vislab.ops.deform_conv as dc
from vislab.layers import DeformConv2d, convert_to_deformable
from vislab.ops import deform_conv2d, deform_conv2d_gather, deform_conv2d_output_size

OP = torch.ops.vislab.deform_conv2d.default
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                  reason="needs a CUDA device"))]


def _layout(t: torch.Tensor | None, layout: str) -> torch.Tensor | None:
    """The same values stored another way: "channels_last" (NHWC strides), "transposed" (H and W
    swapped in memory), "sliced" (every other element of a larger buffer) or "contiguous"."""
    if t is None or layout == "contiguous":
        return t
    if t.dim() != 4:  # bias: a strided view
        return torch.stack((t, torch.zeros_like(t)), 1)[:, 0] if layout == "sliced" else t
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "transposed":
        return t.transpose(2, 3).contiguous().transpose(2, 3)
    if layout == "sliced":
        return torch.stack((t, torch.zeros_like(t)), -1)[..., 0]
    raise ValueError(layout)


LAYOUTS = ["contiguous", "channels_last", "transposed", "sliced"]


def make_args(B=2, C=4, C_out=4, H=6, W=5, kernel=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1),
              groups=1, offset_groups=1, mask=True, bias=True, dtype=torch.float64, layout="contiguous",
              device="cpu", seed=0, requires_grad=True):
    """Positional arguments of the op ``(input, offset, weight, bias, stride, padding, dilation, mask)``;
    ``layout`` is one name for every tensor or a tuple of five (input, offset, weight, bias, mask)."""
    g = torch.Generator().manual_seed(seed)
    Ho, Wo = deform_conv2d_output_size((H, W), kernel, stride, padding, dilation)
    K = kernel[0] * kernel[1]
    tensors = [torch.randn(B, C, H, W, generator=g, dtype=dtype),
               torch.randn(B, 2 * offset_groups * K, Ho, Wo, generator=g, dtype=dtype) * 1.5,
               torch.randn(C_out, C // groups, *kernel, generator=g, dtype=dtype),
               torch.randn(C_out, generator=g, dtype=dtype) if bias else None,
               torch.rand(B, offset_groups * K, Ho, Wo, generator=g, dtype=dtype) if mask else None]
    layouts = (layout,) * 5 if isinstance(layout, str) else layout
    out = []
    for t, lay in zip(tensors, layouts):
        if t is not None:
            t = _layout(t.to(device), lay)
            if requires_grad:
                t.requires_grad_()
        out.append(t)
    x, offset, weight, b, m = out
    return (x, offset, weight, b, list(stride), list(padding), list(dilation), m)


# A compact grid: every axis of the issue (batch 0/1/odd, groups, offset groups, stride/padding/
# dilation pairs, with and without mask and bias, fp32 and fp64, both CPU samplers) appears at least
# once, each case in its own layout; the "mixed" layouts give every argument a different one.
MIXED = ("channels_last", "transposed", "sliced", "sliced", "transposed")
MIXED_2 = ("transposed", "channels_last", "channels_last", "contiguous", "sliced")
CASES = {
    "basic": (dict(), "contiguous"),
    "batch-0": (dict(B=0), "channels_last"),
    "batch-1-no-mask": (dict(B=1, mask=False), "transposed"),
    "batch-3-pairs": (dict(B=3, C=3, C_out=2, H=7, W=8, kernel=(3, 2), stride=(2, 1), padding=(1, 0),
                           dilation=(2, 1)), MIXED),
    "groups-offset-groups": (dict(C=6, C_out=4, groups=2, offset_groups=3, mask=True), MIXED_2),
    "fp32-groups-no-bias": (dict(C=8, C_out=4, groups=4, offset_groups=2, bias=False, dtype=torch.float32),
                            "sliced"),
    "grid-sampler-1-channel": (dict(B=3, C=1, C_out=3, H=7, W=7), MIXED),  # the grid_sample path on CPU
    "grid-sampler-fp32-no-mask": (dict(C=4, offset_groups=2, mask=False, dtype=torch.float32, stride=(2, 2)),
                                  "transposed"),
}


@pytest.fixture(params=["cpp", "cpp-3-threads", "pytorch"])
def cpu_kernel(request, monkeypatch):
    """Run a test with the C++ kernel (where it builds; with 1 and with 3 worker threads, the suite
    runs torch with 1) and with the PyTorch fallback."""
    if request.param == "pytorch":
        monkeypatch.setattr(dc._deform_cpp, "library", lambda: None)
    elif dc._deform_cpp.library() is None:
        pytest.skip(f"the C++ kernel is not available: {dc._deform_cpp.reason()}")
    before = torch.get_num_threads()
    torch.set_num_threads(3 if request.param == "cpp-3-threads" else before)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(CASES))
def test_opcheck(case, device, cpu_kernel):
    kwargs, layout = CASES[case]
    torch.library.opcheck(OP, make_args(**kwargs, layout=layout, device=device))


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS + ["mixed"])
@pytest.mark.parametrize("case", list(CASES))
def test_opcheck_exhaustive(case, layout, dtype, device, cpu_kernel):
    kwargs, _ = CASES[case]
    kwargs = {**kwargs, "dtype": dtype}
    for mask in (True, False):
        torch.library.opcheck(OP, make_args(**{**kwargs, "mask": mask}, device=device,
                                            layout=MIXED if layout == "mixed" else layout))


def test_opcheck_of_the_backward_op():
    x, offset, weight, _, stride, padding, dilation, mask = make_args(B=3, C=6, groups=2, offset_groups=3,
                                                                      layout=MIXED, requires_grad=False)
    grad_out = _layout(torch.randn(3, 4, 6, 5, dtype=torch.float64), "transposed")
    for output_mask in ([True, True, True, True], [False, True, False, True], [True, False, True, False]):
        torch.library.opcheck(torch.ops.vislab.deform_conv2d_backward.default,
                              (grad_out, x, offset, weight, mask, stride, padding, dilation, output_mask))


class _OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_public_function_and_its_backward_dispatch_to_the_registered_ops():
    x, offset, weight, bias, stride, padding, dilation, mask = make_args()
    with _OpLog() as log:
        out = deform_conv2d(x, offset, weight, bias, stride, padding, dilation, mask)
        out.sum().backward()
    assert "vislab.deform_conv2d.default" in log.ops
    assert "vislab.deform_conv2d_backward.default" in log.ops
    assert OP._schema.name == "vislab::deform_conv2d"
    for key in ("CPU", "CUDA", "Meta", "Autograd"):  # Meta: the fake kernel, also used by FakeTensor
        assert torch._C._dispatch_has_kernel_for_dispatch_key("vislab::deform_conv2d", key), key


@pytest.mark.parametrize("case", ["groups-offset-groups", "grid-sampler-1-channel", "batch-3-pairs"])
def test_registered_op_equals_the_gather_formulation(case):
    kwargs, layout = CASES[case]
    args = make_args(**kwargs, layout=layout)
    x, offset, weight, bias, stride, padding, dilation, mask = args
    results = []
    for fn in (deform_conv2d, deform_conv2d_gather):
        leaves = [None if t is None else t.detach().clone().requires_grad_() for t in (x, offset, weight, bias, mask)]
        out = fn(*leaves[:4], stride, padding, dilation, mask=leaves[4])
        out.backward(torch.arange(out.numel(), dtype=out.dtype).reshape(out.shape).cos())
        results.append([out.detach()] + [None if t is None else t.grad for t in leaves])
    for a, e in zip(*results):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


# ---- torch.compile, torch.export, torch.fx --------------------------------------------------


def _network():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2, padding=1),
                          nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1))
    convert_to_deformable(model, ["0", "2"])  # the 1-channel layer samples with grid_sample on CPU
    convert_to_deformable(model, ["4"], offset_groups=2)
    with torch.no_grad():  # non-zero offsets and masks, as after training
        for layer in (model[0], model[2], model[4]):
            layer.offset_conv.weight.normal_(0, 0.3)
            layer.offset_conv.bias.normal_(0, 1.0)
    return model


def test_network_compiles_with_fullgraph_and_the_op_stays_one_node():
    """fullgraph=True raises on any graph break; the traced graphs keep the op (forward and backward)."""
    model = _network()
    x = torch.randn(2, 1, 12, 12)
    expected = model(x)
    expected.square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    seen = []

    def backend(gm, example_inputs):
        from functorch.compile import make_boxed_func
        from torch._dynamo.backends.common import aot_autograd

        def record(g, _inputs):
            seen.extend(str(n.target) for n in g.graph.nodes if n.op == "call_function")
            return make_boxed_func(g)
        return aot_autograd(fw_compiler=record, bw_compiler=record)(gm, example_inputs)

    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    out = compiled(x)
    out.square().sum().backward()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for p, g in zip(model.parameters(), grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-5)
    assert seen.count("vislab.deform_conv2d.default") == 3
    assert seen.count("vislab.deform_conv2d_backward.default") == 3
    assert not any("index_select" in t or "gather" in t for t in seen)  # not traced through


def test_network_exports_with_a_dynamic_batch():
    model = _network().eval()
    x = torch.randn(2, 1, 12, 12)
    batch = torch.export.Dim("batch", min=1, max=32)
    program = torch.export.export(model, (x,), dynamic_shapes={"input": {0: batch}})
    targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert targets.count("vislab.deform_conv2d.default") == 3
    for b in (2, 5):
        inp = torch.randn(b, 1, 12, 12, generator=torch.Generator().manual_seed(b))
        torch.testing.assert_close(program.module()(inp), model(inp), rtol=1e-5, atol=1e-6)


def test_fx_symbolic_trace_keeps_the_op_as_a_leaf_call():
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = DeformConv2d(6, 4, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(2, 1), groups=2)

        def forward(self, x, offset, mask):
            return self.layer(x, offset, mask)

    wrapper = Wrapper().double()
    traced = torch.fx.symbolic_trace(wrapper)
    calls = [n for n in traced.graph.nodes if n.op == "call_function"]
    assert [n.target for n in calls] == [deform_conv2d]  # one node, not its internals
    x, offset, weight, _, *_, mask = make_args(B=3, C=6, C_out=4, H=5, W=4, kernel=(3, 2), stride=(2, 1),
                                               padding=(1, 0), dilation=(2, 1), groups=2, offset_groups=3,
                                               layout="transposed", requires_grad=False)
    torch.testing.assert_close(traced(x, offset, mask), wrapper(x, offset, mask))
    # and a network of drop-in layers
    model = _network()
    traced = torch.fx.symbolic_trace(model)
    assert sum(n.target is deform_conv2d for n in traced.graph.nodes) == 3
    inp = torch.randn(2, 1, 12, 12)
    torch.testing.assert_close(traced(inp), model(inp))


# ---- errors -------------------------------------------------------------------------------------


def test_size_errors_are_value_and_runtime_errors_with_torchvisions_phrases():
    assert issubclass(dc.DeformConvValueError, ValueError) and issubclass(dc.DeformConvValueError, RuntimeError)
    x, offset, weight, bias, stride, padding, dilation, mask = make_args(B=2, C=6, groups=2, offset_groups=3,
                                                                         requires_grad=False)
    layer = DeformConv2d(6, 4, 3, padding=1, groups=2).double()
    with pytest.raises(RuntimeError, match=r"the shape of the offset.*got shape \(2, 2, 6, 5\)"):
        layer(x, offset[:, :2])
    with pytest.raises(RuntimeError, match=r"mask.shape\[1\] is not valid.*\[2, 27, 6, 5\] \(G=3"):
        layer(x, offset, mask[:, :2])
    with pytest.raises(ValueError, match=r"the shape of the mask is wrong.*got shape \(1, 27, 6, 5\)"):
        layer(x, offset, mask[:1])
    # the sizes are checked before the dtypes (a float32 layer with float64 offsets: the size error)
    with pytest.raises(RuntimeError, match="the shape of the offset"):
        DeformConv2d(6, 4, 3, padding=1, groups=2)(x.float(), offset[:, :2])
    # the op checks its arguments too, under FakeTensor as well
    with pytest.raises(RuntimeError, match="the shape of the offset"):
        OP(x, offset[:, :2], weight, bias, stride, padding, dilation, None)
    from torch._subclasses.fake_tensor import FakeTensorMode
    mode = FakeTensorMode()
    fakes = [mode.from_tensor(t) for t in (x, offset, weight, bias, mask[:, :2].contiguous())]
    with mode, pytest.raises(RuntimeError, match=r"mask.shape\[1\] is not valid"):
        OP(*fakes[:4], stride, padding, dilation, fakes[4])


# ---- every argument in every layout; batch sizes 0 and 33 ------------------------------------------


def _forward_backward(fn, args, grad_seed=1):
    x, offset, weight, bias, stride, padding, dilation, mask = args
    out = fn(x, offset, weight, bias, stride, padding, dilation, mask=mask)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=out.dtype)
    leaves = [t for t in (x, offset, weight, bias, mask) if t is not None]
    grads = torch.autograd.grad(out, leaves, grad) if out.numel() else [torch.zeros_like(t) for t in leaves]
    return [out, *grads]


@pytest.mark.parametrize("use_mask", [True, False], ids=["mask", "no-mask"])
@pytest.mark.parametrize("channels", [12, 3], ids=["4-channels-per-offset-group", "1-channel-per-offset-group"])
def test_every_argument_in_every_layout_gives_the_contiguous_result(channels, use_mask, cpu_kernel):
    # without the C++ kernel: the sparse-matrix sampler (4 channels per offset group) and grid_sample (1)
    geometry = dict(B=3, C=channels, C_out=4, H=5, W=6, kernel=(3, 2), stride=(2, 1), padding=(1, 0),
                    dilation=(2, 1), groups=1 if channels == 3 else 2, offset_groups=3, mask=use_mask)
    expected = _forward_backward(deform_conv2d, make_args(**geometry))
    for position, layout in itertools.product(range(5), LAYOUTS[1:]):
        layouts = ["contiguous"] * 5
        layouts[position] = layout
        for layouts_ in (tuple(layouts), (layout,) * 5):
            actual = _forward_backward(deform_conv2d, make_args(**geometry, layout=layouts_))
            for a, e in zip(actual, expected):
                torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12, msg=str(layouts_))


def test_transposed_mask_in_the_grid_sampler_path():
    """The crash of issue 22: a mask stored with H and W swapped, one channel per offset group, in
    the grid_sample sampler (the CPU default without the C++ kernel)."""
    args = make_args(B=2, C=2, C_out=3, H=6, W=6, offset_groups=2, layout=("contiguous", "contiguous",
                                                                            "contiguous", "contiguous", "transposed"))
    expected = _forward_backward(deform_conv2d_gather, args)
    for fn in (deform_conv2d, lambda *a, **k: dc._deform_conv2d_with("grid", *a, **k)):
        for a, e in zip(_forward_backward(fn, args), expected):
            torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("batch", [0, 33])
def test_batch_0_and_33_with_and_without_mask_match_torchvision(batch, cpu_kernel):
    torchvision = pytest.importorskip("torchvision")
    for use_mask, layout in ((True, "transposed"), (False, MIXED)):
        args = make_args(B=batch, C=6, C_out=2, H=5, W=4, kernel=(3, 2), stride=(2, 1), padding=(1, 0),
                         dilation=(2, 1), groups=2, offset_groups=3, mask=use_mask, layout=layout)
        actual = _forward_backward(deform_conv2d, args)
        expected = _forward_backward(torchvision.ops.deform_conv2d, args)
        assert actual[0].shape == (batch, 2, 2, 3)
        for a, e in zip(actual, expected):
            torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


# ---- the C++ kernel and the fallback without a compiler --------------------------------------------

_SCRIPT = """
import torch
from vislab.ops import deform_conv2d, deform_conv2d_gather
import vislab.ops.deform_conv as dc
g = torch.Generator().manual_seed(0)
x, offset = torch.randn(2, 4, 6, 6, generator=g), torch.randn(2, 18, 6, 6, generator=g)
weight, mask = torch.randn(3, 4, 3, 3, generator=g), torch.rand(2, 9, 6, 6, generator=g)
for _ in range(2):
    out = deform_conv2d(x, offset, weight, padding=1, mask=mask)
torch.testing.assert_close(out, deform_conv2d_gather(x, offset, weight, padding=1, mask=mask))
print("kind", dc._default_kind(x, dc._check(x, offset, weight, None, 1, 1, 1, mask)))
"""


def _run_script(tmp_path, **env):
    import os
    import subprocess
    import sys

    full_env = {**os.environ, "VISLAB_KERNEL_DIR": str(tmp_path / "kernels"), **env}
    return subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, env=full_env, timeout=300)


def test_without_a_compiler_the_pytorch_path_runs_and_says_so_once(tmp_path):
    done = _run_script(tmp_path, CXX=str(tmp_path / "no-such-compiler"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["kind", "sparse"]
    notices = [line for line in done.stderr.splitlines() if line.startswith("vislab:")]
    assert len(notices) == 1 and "PyTorch implementation" in notices[0] and "no C++ compiler" in notices[0], \
        done.stderr


def test_the_kernel_builds_into_its_cache_and_can_be_turned_off(tmp_path):
    import shutil

    if shutil.which("c++") is None:
        pytest.skip("no C++ compiler on this machine")
    done = _run_script(tmp_path, CXX="c++")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["kind", "cpp"] and "vislab:" not in done.stderr
    assert len(list((tmp_path / "kernels").glob("vislab_deform_cpu_*.so"))) == 1
    done = _run_script(tmp_path, VISLAB_DEFORM_KERNEL="pytorch")  # an explicit choice: no notice
    assert done.returncode == 0 and done.stdout.split() == ["kind", "sparse"] and "vislab:" not in done.stderr


def test_a_compiler_without_openmp_builds_the_kernel_single_threaded_and_says_so(tmp_path):
    """A compiler that rejects -fopenmp (clang without libomp, say): the kernel is built without OpenMP after
    one notice line, and gives the same results."""
    import shutil

    if shutil.which("c++") is None:
        pytest.skip("no C++ compiler on this machine")
    wrapper = tmp_path / "c++-without-openmp"
    wrapper.write_text('#!/bin/sh\nfor a in "$@"; do [ "$a" = "-fopenmp" ] && { echo "unsupported option '
                       '-fopenmp" >&2; exit 1; }; done\nexec c++ "$@"\n')
    wrapper.chmod(0o755)
    done = _run_script(tmp_path, CXX=str(wrapper), VISLAB_DEFORM_KERNEL="cpp")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["kind", "cpp"]
    notices = [line for line in done.stderr.splitlines() if line.startswith("vislab:")]
    assert len(notices) == 1 and "without OpenMP" in notices[0] and "-fopenmp" in notices[0], done.stderr


def test_the_kernel_is_built_with_openmp_and_uses_torchs_runtime():
    """With GCC the kernel runs on OpenMP, and on torch's runtime (its libgomp.so.1 is the copy torch loaded):
    torch.set_num_threads sets that runtime's thread count, which a second runtime would not see."""
    import os
    import shutil
    import subprocess

    if dc._deform_cpp.library() is None or shutil.which("c++") is None:
        pytest.skip(f"the C++ kernel is not available: {dc._deform_cpp.reason()}")
    version = subprocess.run([os.environ.get("CXX", "c++"), "--version"], capture_output=True, text=True).stdout
    if "Free Software Foundation" not in version:
        pytest.skip("not GCC: whether its OpenMP runtime is torch's is not known")
    lib = dc._deform_cpp.library()
    assert lib.vislab_deform_openmp() == 1
    before = torch.get_num_threads()
    try:
        for n in (1, 3, 2):
            torch.set_num_threads(n)
            assert lib.vislab_deform_omp_max_threads() == n
    finally:
        torch.set_num_threads(before)


def test_the_kernel_runs_in_a_forked_child_after_the_parent_used_its_threads(monkeypatch):
    """The kernels run on torch's OpenMP threads: a child forked after the parent ran them on two threads works
    with one thread, as torch's own operators do in DataLoader workers (GNU OpenMP's pool does not survive a
    fork; torch's conv2d hangs there with two threads just the same)."""
    import multiprocessing

    if dc._deform_cpp.library() is None:
        pytest.skip(f"the C++ kernel is not available: {dc._deform_cpp.reason()}")
    monkeypatch.setattr(dc._deform_cpp, "WORKERS", 2)
    args = make_args(B=4, C=8, H=9, W=9, requires_grad=False, dtype=torch.float32)
    expected = deform_conv2d(*args[:7], mask=args[7])  # two OpenMP threads in the parent
    context = multiprocessing.get_context("fork")
    with context.Pool(1) as pool:
        result = pool.apply_async(_forked_call, (args,)).get(timeout=120)
    torch.testing.assert_close(result, expected)


def _forked_call(args):
    torch.set_num_threads(1)  # what a DataLoader worker does
    assert dc._deform_cpp.threads() == 1  # WORKERS is still 2 here: the kernels keep out of OpenMP after a fork
    return deform_conv2d(*args[:7], mask=args[7])


@pytest.mark.parametrize("groups", [1, 2])
def test_output_gradient_in_any_layout(groups, cpu_kernel):
    """The gradient arriving at the op may be channels-last, transposed or expanded (from .sum())."""
    args = make_args(B=3, C=4, C_out=4, groups=groups, offset_groups=2)
    x, offset, weight, bias, stride, padding, dilation, mask = args
    out = deform_conv2d(x, offset, weight, bias, stride, padding, dilation, mask)
    leaves = [x, offset, weight, bias, mask]
    base = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=out.dtype)
    expected = torch.autograd.grad(out, leaves, base, retain_graph=True)
    for grad in (base.contiguous(memory_format=torch.channels_last), _layout(base, "transposed"),
                 _layout(base, "sliced")):
        for a, e in zip(torch.autograd.grad(out, leaves, grad, retain_graph=True), expected):
            torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)
    ones = torch.autograd.grad(out.sum(), leaves, retain_graph=True)  # an expanded (stride-0) gradient
    for a, e in zip(ones, torch.autograd.grad(out, leaves, torch.ones_like(out))):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


def test_under_bf16_autocast_mixed_dtypes_run_in_float32_and_train():
    """`--precision bf16-mixed`: the offset conv gives bfloat16 offsets beside a float32 input. As torchvision's
    autocast rule (registered there for CUDA only: its CPU kernel fails on bfloat16), every argument runs in
    float32 and the result comes back in the input's dtype, equal to the float32 op on the same values; a
    convert_to_deformable network trains a step under CPU autocast."""
    g = torch.Generator().manual_seed(0)
    x, off = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 18, 8, 8, generator=g)
    w, b, m = torch.randn(5, 4, 3, 3, generator=g), torch.randn(5, generator=g), torch.rand(2, 9, 8, 8, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = deform_conv2d(x, off.bfloat16(), w, b, padding=1, mask=m.bfloat16())
        out_b = deform_conv2d(x.bfloat16(), off, w, b, padding=1)
    ref = deform_conv2d(x, off.bfloat16().float(), w, b, padding=1, mask=m.bfloat16().float())
    assert out.dtype == torch.float32 and torch.equal(out, ref)
    assert out_b.dtype == torch.bfloat16
    with pytest.raises(TypeError, match="offset must have the input's dtype"):  # outside autocast: refused
        deform_conv2d(x, off.bfloat16(), w, b, padding=1)
    net = convert_to_deformable(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = net(torch.randn(2, 3, 16, 16, generator=g)).float().square().mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters() if p.requires_grad)
