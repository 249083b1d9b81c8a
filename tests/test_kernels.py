"""XNOR-popcount layers, native and pure-PyTorch, against the float ops they replace.

The native tests skip, naming the reason, where the kernels cannot be built (no C++
compiler); the pure-PyTorch ones run everywhere, as a simulated machine without a compiler
checks."""

from __future__ import annotations

import copy
import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from xnortrain.activations import bin_active
from xnortrain.deploy import kernels
from xnortrain.deploy.xnor_layers import SignMaxPool2d, XnorConv2d, XnorLinear, kernel_layout

PATHS = {"native": True, "native-scalar": True, "pytorch": False}  # native-scalar: without AVX-512
CHANNELS = (1, 3, 63, 64, 65, 200)
KERNELS = (1, 3, 5, 11)


def conv_cases() -> list[tuple]:
    """Every channel count with every kernel size; stride, padding, dilation, batch and the
    output channels cycle through their values so that each meets the others."""
    cases = []
    for i, (c_in, k) in enumerate(itertools.product(CHANNELS, KERNELS)):
        stride, padding, dilation, batch = (1, 2)[i % 2], i % 3, (1, 2)[i // 2 % 2], (1, 7)[i // 3 % 2]
        reach = dilation * (k - 1) + 1
        size = (max(7, reach - 2 * padding + 3), max(6, reach - 2 * padding + 2))  # not square: H and W differ
        cases.append((c_in, (5, 67)[i % 2], k, stride, padding, dilation, 1, batch, size))
    cases += [(64, 6, 3, 1, 1, 1, 2, 7, (9, 8)), (63, 9, 3, 2, 2, 2, 3, 1, (11, 10)), (200, 8, 1, 1, 0, 1, 4, 1, (5, 6))]
    # per-axis geometry (read in place: dilation along y only; gathered: along x), and output lines
    # of several row tiles
    cases += [(70, 9, 3, (2, 1), (0, 2), (2, 1), 1, 2, (12, 9)), (16, 16, 3, 1, 1, (1, 2), 1, 1, (9, 10)),
              (16, 24, 3, 1, 1, 1, 1, 2, (5, 70)), (130, 12, 1, (1, 2), 0, 1, 1, 3, (4, 9))]
    # narrow inputs whose kernel row fits one word (kw * C <= 64): 11, 63, 64 and 25 bits
    cases += [(1, 5, 11, 1, 5, 1, 1, 2, (13, 15)), (21, 9, 3, (1, 2), (0, 1), (2, 1), 1, 3, (9, 11)),
              (32, 70, 2, 1, 0, 1, 1, 1, (6, 5)), (5, 8, 5, (2, 1), 2, 1, 1, 2, (10, 9))]
    return cases


def random_signs(*shape: int, seed: int) -> torch.Tensor:
    return torch.where(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) >= 0, 1.0, -1.0)


def require_native_kernels() -> None:
    problem = kernels.load()
    if problem is not None:
        pytest.skip(f"native kernels unavailable: {problem}")


@pytest.fixture(params=sorted(PATHS))
def native(request, monkeypatch) -> bool:
    if PATHS[request.param]:
        require_native_kernels()
    if request.param == "native-scalar":
        monkeypatch.setenv("XNORTRAIN_NO_AVX512", "1")
    return PATHS[request.param]


def test_kernel_layout_interleaves_each_groups_filters_eight_at_a_time():
    words = torch.randint(-2**62, 2**62, (22, 3, 2, 4))  # 2 groups of 11 filters: blocks of 8 and 3 (+ 5 zero)
    laid = kernel_layout(words, groups=2)
    assert laid.shape == (2, 2, 3, 2, 4, 8) and laid.is_contiguous()
    for g, f in itertools.product(range(2), range(11)):
        assert torch.equal(laid[g, f // 8, ..., f % 8], words[g * 11 + f])
    assert not laid[:, 1, ..., 3:].any()


@pytest.mark.parametrize("c_in, c_out, k, stride, padding, dilation, groups, batch, size", conv_cases())
def test_xnor_conv_counts_exactly_what_the_float_conv_sums(native, c_in, c_out, k, stride, padding, dilation,
                                                           groups, batch, size):
    signs = random_signs(c_out, c_in // groups, k, k, seed=c_in * k)
    x = random_signs(batch, c_in, *size, seed=c_in + c_out * batch)
    conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=padding, dilation=dilation, groups=groups)
    layer = XnorConv2d(conv, signs >= 0, torch.ones(c_out), None, native=native)
    expected = nn.functional.conv2d(x.double(), signs.double(), None, stride, padding, dilation, groups)
    torch.testing.assert_close(layer(x).double(), expected, rtol=0, atol=0)  # integer dot products, exact in float32


@pytest.mark.parametrize("features", CHANNELS)
@pytest.mark.parametrize("batch", [(1,), (7,), (2, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_xnor_linear_counts_exactly_what_the_float_linear_sums(native, features, batch, dtype):
    signs = random_signs(37, features, seed=features)
    x = random_signs(*batch, features, seed=len(batch)).to(dtype)
    layer = XnorLinear(signs >= 0, torch.ones(37), None, native=native)
    torch.testing.assert_close(layer(x).double(), x.double() @ signs.double().t(), rtol=0, atol=0)


def test_alpha_and_bias_scale_the_counts_like_the_float_layers(native):
    """The kernels count exactly and round twice (alpha * count + bias); the reference sums in
    float64, so that only the kernels' float32 rounding is measured, at float32's tolerance."""
    torch.manual_seed(0)
    conv = nn.Conv2d(65, 12, 3, stride=2, padding=1)
    signs, alpha = random_signs(12, 65, 3, 3, seed=1), torch.rand(12) + 0.1
    x = torch.randn(3, 65, 9, 9)
    layer = XnorConv2d(conv, signs >= 0, alpha, conv.bias.detach(), native=native)
    weight, bias = (alpha.view(-1, 1, 1, 1) * signs).double(), conv.bias.detach().double()
    expected = nn.functional.conv2d(bin_active(x).double(), weight, bias, 2, 1)
    torch.testing.assert_close(layer(x).double(), expected, rtol=1.3e-6, atol=1e-5)
    linear = XnorLinear(signs.flatten(1) >= 0, alpha, conv.bias.detach(), native=native)
    flat = x[:, :, :3, :3].flatten(1)  # (3, 585)
    expected = bin_active(flat).double() @ weight.flatten(1).t() + bias
    torch.testing.assert_close(linear(flat).double(), expected, rtol=1.3e-6, atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_an_input_map_gives_the_bits_of_sign_of_a_times_x_plus_b(native, channels_last):
    """A folded BatchNorm: bits of sign(a_c * x_c + b_c), a multiply then an add as PyTorch
    rounds them, some a_c negative and one 0 (its channel's bit is then sign(b_c)); rows of 37
    pixels, so that packing sixteen pixels at a time meets whole blocks and a part block."""
    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(70, generator=gen), torch.randn(70, generator=gen)
    a[5] = 0.0
    x = torch.randn(2, 70, 6, 37, generator=gen)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    signs = random_signs(9, 70, 3, 3, seed=4)
    conv = XnorConv2d(nn.Conv2d(70, 9, 3, padding=1), signs >= 0, torch.ones(9), None, native=native)
    conv.input_scale, conv.input_bias = a, b
    mapped = x * a.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)
    expected = nn.functional.conv2d(torch.where(mapped >= 0, 1.0, -1.0), signs, padding=1)
    torch.testing.assert_close(conv(x), expected, rtol=0, atol=0)
    linear = XnorLinear(random_signs(9, 70, seed=5) >= 0, torch.ones(9), None, native=native)
    linear.input_scale, linear.input_bias = a, b
    rows = x[:, :, 0, 0].contiguous()
    expected = torch.where(rows * a + b >= 0, 1.0, -1.0) @ random_signs(9, 70, seed=5).T
    torch.testing.assert_close(linear(rows), expected, rtol=0, atol=0)


@pytest.mark.parametrize("channels_last", [False, True])
def test_an_input_packed_by_several_threads_gives_the_same_bits(native, channels_last):
    """An input large enough that its packing splits over two threads (80 image rows of 37
    pixels by 70 channels, above a task's share): every row's bits as the float conv sums them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = torch.randn(2, 70, 40, 37, generator=torch.Generator().manual_seed(6))
        x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        signs = random_signs(9, 70, 3, 3, seed=7)
        conv = XnorConv2d(nn.Conv2d(70, 9, 3, padding=1), signs >= 0, torch.ones(9), None, native=native)
        expected = nn.functional.conv2d(torch.where(x >= 0, 1.0, -1.0), signs, padding=1)
        torch.testing.assert_close(conv(x), expected, rtol=0, atol=0)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(params=["native", "native-scalar"])
def native_path(request, monkeypatch) -> None:
    require_native_kernels()
    if request.param == "native-scalar":
        monkeypatch.setenv("XNORTRAIN_NO_AVX512", "1")


def sign_chain(dtype: torch.dtype) -> nn.Sequential:
    """70 -> 130 channels (3x3, padded), ReLU and a BatchNorm's map -> 65 (3x3, padded: the packed
    signs copied into a bordered buffer), max pooling (3x3, stride 2, padded, ceil mode), a map
    with some a < 0 and one a = 0 -> 9 (1x1), on the kernels."""
    def conv(c_in, c_out, k, seed):
        gen = torch.Generator().manual_seed(seed)
        layer = XnorConv2d(nn.Conv2d(c_in, c_out, k, padding=k // 2), random_signs(c_out, c_in, k, k, seed=seed) >= 0,
                           torch.rand(c_out, generator=gen) + 0.1, torch.randn(c_out, generator=gen), native=True)
        layer.input_scale, layer.input_bias = torch.randn(c_in, generator=gen), torch.randn(c_in, generator=gen)
        return layer

    model = nn.Sequential(conv(70, 130, 3, 0), nn.ReLU(), nn.Identity(), conv(130, 65, 3, 1),
                          nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True), conv(65, 9, 1, 2))
    model[5].input_scale[3] = 0.0
    return model.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_conv_that_hands_the_next_its_packed_signs_gives_the_same_outputs(native_path, dtype):
    """The epilogue's bits sign(a * relu(y) + b) are those the next layer packs from y after the
    ReLU, and max pooling them (OR, or AND where a < 0) gives those of the pooled floats: the
    same outputs, bit for bit, with some outputs exactly 0 before the ReLU (a bias cancelling
    the count), a part tile, and a pooled width that ceil mode makes one wider."""
    from xnortrain.deploy.fusion import fuse_sign_chains

    unfused = sign_chain(dtype)
    unfused[0].bias[:5] = -unfused[0].alpha[:5] * 6  # dot = 6 somewhere: y = 0
    fused = copy.deepcopy(unfused)
    assert fuse_sign_chains(fused) == [["0", "1", "2", "3"], ["3", "4", "5"]]
    assert fused[0].sign_output and fused[0].output_relu and fused[3].signs_in and fused[3].sign_output
    assert isinstance(fused[1], nn.Identity) and isinstance(fused[4], SignMaxPool2d) and fused[3].input_scale is None
    x = torch.randn(2, 70, 8, 36, generator=torch.Generator().manual_seed(5), dtype=dtype)
    with torch.no_grad():
        signs = fused[0](x)
        assert signs.dtype == torch.int64 and signs.shape == (2, 8, 36, 3)
        assert fused[4](fused[3](signs)).shape == (2, 5, 19, 2)  # floor mode: (2, 4, 18, 2)
        assert torch.equal(fused(x), unfused(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("c_in, c_out, k, stride, padding, groups", [
    (65, 12, 3, 2, 1, 1), (16, 70, 3, 1, 1, 1), (8, 6, 3, 1, 0, 2), (130, 9, 1, 1, 0, 1)],
    ids=["strided-part-tile", "two-blocks-of-filters", "two-groups", "pointwise"])
def test_a_residual_added_in_the_epilogue_is_the_sum_after_the_conv(native, dtype, c_in, c_out, k, stride, padding,
                                                                     groups):
    """conv(x, residual=r) is conv(x) + r bit for bit: alpha * dot + bias rounded, then + r
    rounded, with r channels-last (as the kernels' outputs are) and contiguous (copied once)."""
    gen = torch.Generator().manual_seed(c_in)
    conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=padding, groups=groups)
    signs = random_signs(c_out, c_in // groups, k, k, seed=c_out) >= 0
    layer = XnorConv2d(conv, signs, torch.rand(c_out, generator=gen) + 0.1, torch.randn(c_out, generator=gen),
                       native=native)
    x = torch.randn(3, c_in, 9, 11, generator=gen, dtype=dtype)
    with torch.no_grad():
        y = layer(x)
        for r in (torch.randn(y.shape, generator=gen, dtype=dtype), y.contiguous()):
            for residual in (r, r.contiguous(memory_format=torch.channels_last)):
                assert torch.equal(layer(x, residual=residual), y + residual)


def test_narrow_convs_that_pass_packed_signs_give_the_same_outputs_and_leave_their_input(native_path):
    """Convs of 16 and 21 input channels, whose kernel rows fit one word, take the packed signs
    of the conv before (bordered, and without padding, where the words are copied first): the
    same outputs as the unlinked convs, and the words they were handed unchanged."""
    from xnortrain.deploy.fusion import fuse_sign_chains

    def conv(c_in, c_out, padding, seed):
        gen = torch.Generator().manual_seed(seed)
        return XnorConv2d(nn.Conv2d(c_in, c_out, 3, padding=padding), random_signs(c_out, c_in, 3, 3, seed=seed) >= 0,
                          torch.rand(c_out, generator=gen) + 0.1, torch.randn(c_out, generator=gen), native=True)

    unfused = nn.Sequential(conv(3, 16, 1, 0), nn.ReLU(), conv(16, 21, 1, 1), nn.ReLU(), conv(21, 9, 0, 2))
    fused = copy.deepcopy(unfused)
    assert fuse_sign_chains(fused) == [["0", "1", "2"], ["2", "3", "4"]]
    x = torch.randn(2, 3, 11, 10, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(fused(x), unfused(x))
        for first, second in ((0, 2), (2, 4)):
            signs = fused[:first + 1](x)
            handed = signs.clone()
            fused[second](signs)
            assert torch.equal(signs, handed)


def test_a_conv_that_takes_packed_signs_adds_a_residual_too(native_path):
    from xnortrain.deploy.fusion import fuse_sign_chains

    model = sign_chain(torch.float32)[:4]
    fuse_sign_chains(model)
    x = torch.randn(2, 70, 5, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        signs = model[0](x)
        y = model[3](signs)
        r = torch.randn(y.shape, generator=torch.Generator().manual_seed(2))
        assert torch.equal(model[3](signs, residual=r), y + r)


def test_the_op_refuses_a_residual_of_another_shape_or_dtype_or_with_sign_bounds():
    require_native_kernels()
    weights = kernel_layout(torch.zeros(16, 1, 1, 1, dtype=torch.int64), 1)
    x, alpha, taps = torch.randn(2, 8, 4, 4), torch.rand(16), torch.zeros(1, 1, 16, dtype=torch.int32)
    for residual in (torch.zeros(2, 16, 4, 3), torch.zeros(1, 16, 4, 4), torch.zeros(2, 16, 4, 4, dtype=torch.float64)):
        with pytest.raises(RuntimeError, match=r"residual must be a CPU tensor of the conv output's shape"):
            torch.ops.xnortrain.xnor_conv2d(x, weights, taps, alpha, None, [1, 1], [0, 0], [1, 1], 1,
                                            residual=residual)
    with pytest.raises(RuntimeError, match="adds a residual to float outputs only"):
        torch.ops.xnortrain.xnor_conv2d(x, weights, taps, alpha, None, [1, 1], [0, 0], [1, 1], 1, None, None, 0,
                                        torch.zeros(2, 16, dtype=torch.int64), torch.zeros(2, 16, 4, 4))


def test_the_op_refuses_tap_bits_of_another_shape_or_dtype_naming_the_layout_it_takes():
    require_native_kernels()
    weights = kernel_layout(torch.zeros(16, 3, 3, 1, dtype=torch.int64), 1)
    x, alpha = torch.randn(2, 8, 4, 4), torch.rand(16)
    for taps in (torch.zeros(3, 3, 15, dtype=torch.int32), torch.zeros(16, 3, 3, dtype=torch.int32),
                 torch.zeros(3, 3, 16, dtype=torch.int64), torch.zeros(3, 16, 3, dtype=torch.int32).transpose(1, 2)):
        with pytest.raises(RuntimeError, match=r"tap_bits must be contiguous int32 \(KH, KW, C_out\)"):
            torch.ops.xnortrain.xnor_conv2d(x, weights, taps, alpha, None, [1, 1], [1, 1], [1, 1], 1)
    taps = torch.zeros(3, 3, 16, dtype=torch.int32)
    out = torch.ops.xnortrain.xnor_conv2d(x, weights, taps, alpha, None, [1, 1], [1, 1], [1, 1], 1)
    assert out.shape == (2, 16, 4, 4)


def test_exact_zeros_count_as_plus_one(native):
    x = torch.randn(2, 70, 6, 5)
    x[x.abs() < 0.7] = 0.0  # about half the input exactly 0
    x[0, :, 0, 0] = 0.0
    signs = random_signs(4, 70, 3, 3, seed=3)
    conv = nn.Conv2d(70, 4, 3, padding=1, bias=False)
    layer = XnorConv2d(conv, signs >= 0, torch.ones(4), None, native=native)
    plus_one = torch.where(x >= 0, 1.0, -1.0)
    torch.testing.assert_close(layer(x), nn.functional.conv2d(plus_one, signs, None, 1, 1), rtol=0, atol=0)
    linear = XnorLinear(signs.flatten(1) >= 0, torch.ones(4), None, native=native)
    torch.testing.assert_close(linear(x.flatten(1)[:, :630]), plus_one.flatten(1)[:, :630] @ signs.flatten(1).t(),
                               rtol=0, atol=0)


def test_the_disable_variable_selects_the_pytorch_path(monkeypatch):
    monkeypatch.setenv(kernels.DISABLE, "1")
    assert kernels.load() == f"{kernels.DISABLE} is set"
    assert kernels.path_in_use().startswith("pure-PyTorch")
    monkeypatch.delenv(kernels.DISABLE)
    require_native_kernels()
    assert kernels.path_in_use().startswith("native")


def test_a_layer_never_builds_the_kernels_and_runs_the_pytorch_path_by_default(monkeypatch):
    monkeypatch.setattr(kernels, "_build_and_load", None)  # any call would fail
    assert not XnorLinear(torch.ones(3, 5, dtype=torch.bool), torch.ones(3), None).native
    assert not XnorConv2d(nn.Conv2d(2, 3, 1), torch.ones(3, 2, 1, 1, dtype=torch.bool), torch.ones(3), None).native


def test_native_layers_export_with_torch_export():
    require_native_kernels()
    conv = nn.Conv2d(8, 4, 3, padding=1)
    model = nn.Sequential(XnorConv2d(conv, random_signs(4, 8, 3, 3, seed=0) >= 0, torch.rand(4), None, native=True),
                          nn.Flatten(),
                          XnorLinear(random_signs(3, 4 * 25, seed=1) >= 0, torch.rand(3), torch.zeros(3), native=True))
    x = torch.randn(2, 8, 5, 5)
    program = torch.export.export(model, (x,))
    assert {"xnortrain.xnor_conv2d.default", "xnortrain.xnor_linear.default"} <= {
        str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    torch.testing.assert_close(program.module()(x), model(x))


def test_convs_that_pass_their_packed_signs_export_with_torch_export():
    from xnortrain.deploy.fusion import fuse_sign_chains

    require_native_kernels()
    model = sign_chain(torch.float32)
    fuse_sign_chains(model)
    x = torch.randn(2, 70, 5, 6)
    program = torch.export.export(model, (x,))
    assert "xnortrain.sign_max_pool2d.default" in {str(node.target) for node in program.graph.nodes}
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), rtol=0, atol=0)


def test_native_layers_compile_ahead_of_time_with_aotinductor(tmp_path):
    """AOTInductor (PyTorch's `aoti_compile_and_package`): the exported program becomes a .pt2
    package of C++ that calls the kernels as ops, and runs with the same outputs as eager."""
    require_native_kernels()
    conv = nn.Conv2d(8, 4, 3, padding=1)
    model = nn.Sequential(XnorConv2d(conv, random_signs(4, 8, 3, 3, seed=0) >= 0, torch.rand(4), None, native=True),
                          nn.ReLU(), nn.Flatten(),
                          XnorLinear(random_signs(3, 4 * 25, seed=1) >= 0, torch.rand(3), torch.zeros(3), native=True))
    x = torch.randn(2, 8, 5, 5)
    package = torch._inductor.aoti_compile_and_package(torch.export.export(model, (x,)),
                                                       package_path=str(tmp_path / "model.pt2"))
    with torch.no_grad():
        torch.testing.assert_close(torch._inductor.aoti_load_package(package)(x), model(x))


def test_native_layers_run_under_torch_compile_with_the_float_work_between_them():
    """torch.compile keeps the kernels as calls (their fake implementations give the shapes)
    and compiles the BatchNorm and ReLU around them: the same outputs as eager."""
    require_native_kernels()
    torch.compiler.reset()
    conv = nn.Conv2d(8, 16, 3, padding=1)
    model = nn.Sequential(nn.BatchNorm2d(8), XnorConv2d(conv, random_signs(16, 8, 3, 3, seed=0) >= 0, torch.rand(16),
                                                        torch.randn(16), native=True),
                          nn.BatchNorm2d(16), nn.ReLU(), nn.Flatten(),
                          XnorLinear(random_signs(3, 16 * 25, seed=1) >= 0, torch.rand(3), torch.zeros(3), native=True))
    model[0].running_mean.uniform_(-1, 1)
    model.eval()
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), model(x))


def environment_without_compilers(tmp_path: Path) -> dict[str, str]:
    """This process's environment with every C++ compiler on PATH failing (scripts in
    tmp_path/bin) and CC and CXX unset."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    for compiler in ("c++", "g++", "gcc", "cc", "clang", "clang++"):
        (fake_bin / compiler).write_text("#!/bin/sh\necho 'no compiler on this machine' >&2\nexit 1\n")
        (fake_bin / compiler).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("CC", "CXX")}
    env["PATH"] = f"{fake_bin}{os.pathsep}{env['PATH']}"
    return env


def test_without_a_compiler_the_pytorch_path_is_tested_and_the_native_tests_skip_naming_why(tmp_path):
    """A machine without a C++ compiler: every compiler on PATH fails, and the kernel cache is
    empty, so `kernels.load` must build and cannot."""
    env = environment_without_compilers(tmp_path)
    env.pop(kernels.DISABLE, None)
    env[kernels.CACHE] = str(tmp_path / "cache")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", __file__,
                           "-k", "not without_a_compiler"], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).parent.parent, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:]
    passed = int(re.search(r"(\d+) passed", done.stdout).group(1))
    skipped = int(re.search(r"(\d+) skipped", done.stdout).group(1))
    # conv, linear, input map, packing over threads, alpha/bias, residual, zeros; then no-build and the weight
    # layout, which have no native twin
    pytorch_tests = len(conv_cases()) + len(CHANNELS) * 3 * 2 + 2 + 2 + 4 * 2 + 2 + 2
    assert passed == pytorch_tests, done.stdout[-3000:]
    # both native paths of each with a twin, of the sign chain (two dtypes), of its residual and of the
    # narrow chain; torch.export (twice), AOTInductor, torch.compile, the disable test and the refusals of a
    # residual and of tap bits
    assert skipped == 2 * (pytorch_tests - 2) + 2 * 2 + 2 + 2 + 7
    assert "SKIPPED" in done.stdout and "native kernels unavailable" in done.stdout
