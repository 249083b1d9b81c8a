"""BatchNorm folded into the XNOR-popcount layers next to it and into the float convs before it:
which pairs fold, and the outputs stay."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from test_kernels import require_native_kernels
from torch import nn

from xnortrain.deploy.bitpack import channel_words
from xnortrain.deploy.fusion import (
    adjacent_pairs,
    changes_in_place,
    fold_batchnorms,
    fuse_residual_sums,
    fuse_sign_chains,
    residual_sums,
    sign_chains,
)
from xnortrain.deploy.xnor_layers import XnorConv2d, XnorLinear, kernel_layout, mapped, sign_bounds


def xnor_conv(c_in: int, c_out: int, seed: int, bias: bool = True, native: bool = False) -> XnorConv2d:
    gen = torch.Generator().manual_seed(seed)
    signs = torch.randn(c_out, c_in, 3, 3, generator=gen) >= 0
    conv = nn.Conv2d(c_in, c_out, 3, padding=1)
    return XnorConv2d(conv, signs, torch.rand(c_out, generator=gen) + 0.1,
                      torch.randn(c_out, generator=gen) if bias else None, native=native)


def trained_norm(channels: int, seed: int, dims: int = 2) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    norm = (nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d)(channels)
    for t in (norm.running_mean, norm.weight, norm.bias):
        t.data = torch.randn(channels, generator=gen)  # some gammas negative
    norm.running_var.data = torch.rand(channels, generator=gen) + 0.5
    return norm.eval()


class Net(nn.Module):
    """bn_in -> conv_a (folds into conv_a's input); conv_a -> bn_a (folds into its epilogue);
    conv_b, whose output the residual sum reads too -> bn_b (stays); linear -> bn_c (folds,
    BatchNorm1d, a layer without bias)."""

    def __init__(self):
        super().__init__()
        self.bn_in = trained_norm(4, 7)
        self.conv_a, self.bn_a = xnor_conv(4, 8, 0), trained_norm(8, 1)
        self.conv_b, self.bn_b = xnor_conv(8, 8, 2, bias=False), trained_norm(8, 3)
        self.flatten = nn.Flatten()
        gen = torch.Generator().manual_seed(4)
        self.linear = XnorLinear(torch.randn(5, 8 * 25, generator=gen) >= 0, torch.rand(5, generator=gen), None)
        self.bn_c = trained_norm(5, 5, dims=1)

    def forward(self, x):
        h = torch.relu(self.bn_a(self.conv_a(self.bn_in(x))))
        y = self.conv_b(h)
        h = self.bn_b(y) + y
        return self.bn_c(self.linear(self.flatten(h)))


def test_a_batchnorm_folds_where_it_alone_reads_or_feeds_a_layer_and_the_outputs_stay():
    model = Net().eval()
    before = copy.deepcopy(model)
    assert ("conv_b", "bn_b") not in adjacent_pairs(model)  # the residual sum reads conv_b's output too
    assert fold_batchnorms(model) == ["bn_in", "bn_a", "bn_c"]
    assert all(isinstance(m, nn.Identity) for m in (model.bn_in, model.bn_a, model.bn_c))
    assert isinstance(model.bn_b, nn.BatchNorm2d) and model.conv_a.input_scale.shape == (4,)
    x = torch.randn(3, 4, 5, 5, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(model(x), before(x), rtol=1e-5, atol=1e-5)


def test_the_input_map_gives_the_bits_of_sign_of_the_batchnorm():
    layer, norm = xnor_conv(4, 8, 0), trained_norm(4, 7)
    x = torch.randn(2, 4, 5, 5, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        expected = layer(norm(x))
        fold_batchnorms(model := nn.Sequential(norm, layer))
        torch.testing.assert_close(model(x), expected)


def test_a_batchnorm_between_two_layers_folds_once_into_the_first():
    model = nn.Sequential(xnor_conv(4, 4, 0), trained_norm(4, 1), xnor_conv(4, 4, 2)).eval()
    before = copy.deepcopy(model)
    assert fold_batchnorms(model) == ["1"] and model[2].input_scale is None
    x = torch.randn(2, 4, 5, 5, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(model(x), before(x), rtol=1e-5, atol=1e-5)


class FloatStem(nn.Module):
    """A float stem conv -> BN -> ReLU (folds into the conv's weights), then a float conv with a
    bias whose output a residual sum reads too -> BN (stays), and a binary layer."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(8)
        self.stem, self.stem_norm = nn.Conv2d(3, 4, 3, padding=1, bias=False), trained_norm(4, 9)
        self.side, self.side_norm = nn.Conv2d(4, 4, 1), trained_norm(4, 10)
        for conv in (self.stem, self.side):
            conv.weight.data = torch.randn(conv.weight.shape, generator=gen)
        self.conv = xnor_conv(4, 4, 11)

    def forward(self, x):
        h = torch.relu(self.stem_norm(self.stem(x)))
        y = self.side(h)
        return self.conv(self.side_norm(y) + y)


def test_a_batchnorm_after_a_float_conv_folds_into_its_weights_and_the_outputs_stay():
    model = FloatStem().eval()
    before = copy.deepcopy(model)
    assert fold_batchnorms(model) == ["stem_norm"]
    assert isinstance(model.stem_norm, nn.Identity) and isinstance(model.side_norm, nn.BatchNorm2d)
    assert model.stem.bias is not None  # b, where the conv had no bias
    x = torch.randn(2, 3, 6, 7, generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        torch.testing.assert_close(model.stem(x), before.stem_norm(before.stem(x)), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model(x), before(x), rtol=1e-5, atol=1e-4)
    assert fold_batchnorms(hooked := FloatStem().eval(), output_hooked={"stem"}) == []  # K rescales its output
    assert isinstance(hooked.stem_norm, nn.BatchNorm2d)


def test_a_layer_whose_input_or_output_a_hook_changes_keeps_its_batchnorm_on_that_side():
    model = Net().eval()
    assert fold_batchnorms(model, input_hooked={"conv_a"}, output_hooked={"conv_a"}) == ["bn_c"]
    assert isinstance(model.bn_in, nn.BatchNorm2d) and isinstance(model.bn_a, nn.BatchNorm2d)


def test_a_batchnorm_in_training_mode_or_called_twice_stays():
    model = Net().eval()
    model.bn_a.train()
    assert fold_batchnorms(model) == ["bn_in", "bn_c"]

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.norm = xnor_conv(4, 4, 0), trained_norm(4, 1)

        def forward(self, x):
            return self.norm(self.norm(self.conv(x)))

    assert fold_batchnorms(Twice().eval()) == []


def test_a_model_fx_cannot_trace_keeps_its_batchnorms():
    class Branching(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.norm = xnor_conv(4, 4, 0), trained_norm(4, 1)

        def forward(self, x):
            y = self.conv(x)
            return self.norm(y) if y.sum() > 0 else y  # control flow on values: no fx graph

    model = Branching().eval()
    assert fold_batchnorms(model) == [] and isinstance(model.norm, nn.BatchNorm2d)


class Chains(nn.Module):
    """a -> ReLU -> b -> c, then c's output read by d and by the sum after d, then e (two
    groups) after a ReLU called twice."""

    def __init__(self, native: bool):
        super().__init__()
        def conv(c_in, c_out, seed, groups=1):
            signs = torch.randn(c_out, c_in // groups, 3, 3, generator=torch.Generator().manual_seed(seed)) >= 0
            return XnorConv2d(nn.Conv2d(c_in, c_out, 3, padding=1, groups=groups), signs, torch.ones(c_out), None,
                              native=native)

        self.a, self.relu_a, self.b, self.c, self.d = conv(4, 8, 0), nn.ReLU(), conv(8, 8, 1), conv(8, 8, 2), conv(8, 8, 3)
        self.shared, self.e = nn.ReLU(), conv(8, 8, 4, groups=2)

    def forward(self, x):
        h = self.c(self.b(self.relu_a(self.a(x))))
        h = self.shared(self.d(h) + h)
        return self.e(self.shared(h))


def test_convs_link_where_the_next_alone_reads_the_output_through_relus_on_the_kernels_with_one_group():
    require_native_kernels()
    assert sign_chains(Chains(native=True)) == [["a", "relu_a", "b"], ["b", "c"]]
    assert sign_chains(Chains(native=True), input_hooked={"b"}) == [["b", "c"]]
    assert sign_chains(Chains(native=True), output_hooked={"b"}) == [["a", "relu_a", "b"]]
    assert sign_chains(Chains(native=False)) == []  # the pure-PyTorch layers take floats


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("relu", [False, True])
def test_sign_bounds_are_the_dots_whose_next_input_bit_is_one(dtype, relu):
    """Against each dot's bit [a * relu(alpha * dot + bias) + b >= 0] rounded one number at a
    time in numpy scalars of the dtype: alpha < 0 (a folded BatchNorm) and 0, a < 0 and 0, b 0,
    and biases that put y = 0 on a dot."""
    n, scalar = 9, {torch.float32: np.float32, torch.float64: np.float64}[dtype]
    gen = torch.Generator().manual_seed(3)
    alpha, bias = torch.randn(12, generator=gen, dtype=dtype), torch.randn(12, generator=gen, dtype=dtype)
    scale, shift = torch.randn(12, generator=gen, dtype=dtype), torch.randn(12, generator=gen, dtype=dtype)
    alpha[0], scale[1], shift[2:4] = 0.0, 0.0, 0.0
    bias[2:6] = -alpha[2:6] * torch.tensor([3.0, -4.0, 0.0, 5.0], dtype=dtype)
    low, high = sign_bounds(alpha, bias, relu, scale, shift, n)
    for o in range(12):
        a, b, w, c = (scalar(t[o].item()) for t in (alpha, bias, scale, shift))
        for dot in range(-n, n + 1):
            y = a * scalar(dot) + b
            bit = w * (scalar(0) if relu and y < 0 else y) + c >= 0
            assert bit == (low[o] <= dot <= high[o]), (o, dot)


def test_a_conv_whose_output_bits_are_no_interval_of_dots_stays_unlinked():
    """alpha = inf: y = -inf, NaN, +inf at dots -1, 0, 1, so after the ReLU the bits are 1, 0, 1."""
    assert sign_bounds(torch.tensor([math.inf]), None, True, None, None, 3) is None
    require_native_kernels()
    model = Chains(native=True)
    model.a.alpha[0] = math.inf
    assert fuse_sign_chains(model) == [["b", "c"]]
    assert not model.a.sign_output and isinstance(model.relu_a, nn.ReLU) and not model.b.signs_in


def test_a_linked_float32_conv_run_in_float64_gives_the_float64_bits():
    """The bounds found at linking are float32's; a float64 pass finds its own. Channels 0-7:
    y = 1/3 at dot 1, and -3 * y + 1 is 0 in float32 (bit 1) but -3e-8 in float64 (bit 0)."""
    require_native_kernels()
    def conv(c_in, c_out, seed):
        signs = torch.randn(c_out, c_in, 3, 3, generator=torch.Generator().manual_seed(seed)) >= 0
        layer = XnorConv2d(nn.Conv2d(c_in, c_out, 3), signs, torch.rand(c_out) + 0.1, torch.randn(c_out), native=True)
        layer.input_scale, layer.input_bias = torch.randn(c_in), torch.randn(c_in)
        return layer

    model = nn.Sequential(conv(5, 70, 0), nn.ReLU(), conv(70, 5, 1))  # 45 bits: odd dots
    model[0].alpha[:8], model[0].bias[:8] = 1 / 3, 0.0
    model[2].input_scale[:8], model[2].input_bias[:8] = -3.0, 1.0
    expected = copy.deepcopy(model)
    fuse_sign_chains(model)
    assert not torch.equal(model[0].sign_bounds, model[0]._bounds_in(torch.float64))
    x = torch.randn(2, 5, 8, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        floats = mapped(expected[2], torch.relu(expected[0](x)))
        assert torch.equal(model[0](x), channel_words(floats.permute(0, 2, 3, 1) >= 0))


def test_the_op_refuses_sign_bounds_of_another_layout_naming_the_one_it_takes():
    require_native_kernels()
    weights = kernel_layout(channel_words(torch.randn(16, 1, 1, 8) >= 0), 1)
    x, alpha, taps = torch.randn(1, 8, 4, 4), torch.rand(16), torch.zeros(1, 1, 16, dtype=torch.int32)
    wrong = [torch.zeros(16, 2, dtype=torch.int64), torch.zeros(2, 16, dtype=torch.int32),
             torch.zeros(2, 15, dtype=torch.int64), torch.zeros(16, 2, dtype=torch.int64).t()]
    for bounds in wrong:
        with pytest.raises(RuntimeError, match=r"sign_bounds must be contiguous int64 \(2, C_out\)"):
            torch.ops.xnortrain.xnor_conv2d(x, weights, taps, alpha, None, [1, 1], [0, 0], [1, 1], 1, None, None, 0,
                                            bounds)
    assert torch.ops.xnortrain.xnor_conv2d(x, weights, taps, alpha, None, [1, 1], [0, 0], [1, 1], 1, None, None, 0,
                                           torch.zeros(2, 16, dtype=torch.int64)).shape == (1, 4, 4, 1)


def test_sign_bounds_found_a_few_channels_at_a_time_are_the_same(monkeypatch):
    from xnortrain.deploy import xnor_layers

    gen = torch.Generator().manual_seed(4)
    alpha, bias, scale, shift = (torch.randn(13, generator=gen) for _ in range(4))
    whole = sign_bounds(alpha, bias, True, scale, shift, 9)
    monkeypatch.setattr(xnor_layers, "EVALUATIONS", 40)  # two channels of 19 dots at a time
    assert torch.equal(sign_bounds(alpha, bias, True, scale, shift, 9), whole)
    alpha[12], scale[12], shift[12] = math.inf, 1.0, 0.0  # the last group's bits: 1, 0 (NaN), 1
    assert sign_bounds(alpha, bias, True, scale, shift, 9) is None


class Sums(nn.Module):
    """Residual sums after native XNOR convs (8 channels, 5x5 images): `a` through an identity
    (a folded BatchNorm) plus x, x plus `b`, `c` in place plus x, `i` plus `j` (into the first);
    and left as they are: `d` read by the sum and by the return value, `e` plus a (1, 8, 1, 1)
    tensor (broadcast), `f` through torch.add with alpha, `g` plus itself, `k` plus its input
    after that input changed in place (the fused conv, run at the sum's place, would read the
    changed input)."""

    def __init__(self, native: bool = True):
        super().__init__()
        for i, name in enumerate("abcdefgijk"):
            setattr(self, name, xnor_conv(8, 8, i, native=native))
        self.norm_a = nn.Identity()
        self.register_buffer("offset", torch.randn(1, 8, 1, 1, generator=torch.Generator().manual_seed(9)))

    def forward(self, x):
        h = self.norm_a(self.a(x)) + x
        h = h + self.b(h)
        out = self.c(h)
        out += h
        d = self.d(out)
        h = d + out
        h = self.i(h) + self.j(h)
        k = self.k(h)
        h = k + torch.relu_(h)
        h = self.e(h) + self.offset
        h = torch.add(self.f(h), h, alpha=2)
        g = self.g(h)
        return g + g, d


class Blocks(nn.Module):
    """A residual block inside a Sequential: the sum lies in the block's forward."""

    def __init__(self, native: bool = True):
        super().__init__()
        self.layers = nn.Sequential(Sums(native), nn.Identity())

    def forward(self, x):
        return self.layers(x)


def native_sums(native: bool = True) -> Sums:
    require_native_kernels()
    return Sums(native).eval()


def test_the_sums_that_alone_read_a_conv_output_of_their_shape_are_found_with_the_module_holding_them():
    sample = torch.zeros(2, 8, 5, 5)
    assert residual_sums(native_sums(), sample) == [("", "a"), ("", "b"), ("", "c"), ("", "i")]
    assert residual_sums(native_sums(), sample, output_hooked={"b"}) == [("", "a"), ("", "c"), ("", "i")]
    assert residual_sums(native_sums(native=False), sample) == []  # the pure-PyTorch layers add as PyTorch does
    nested = Blocks(native=False)
    nested.layers[0] = native_sums()
    assert residual_sums(nested, sample) == [("layers.0", "layers.0.a"), ("layers.0", "layers.0.b"),
                                             ("layers.0", "layers.0.c"), ("layers.0", "layers.0.i")]


@pytest.mark.parametrize("nested", [False, True])
def test_a_fused_sum_gives_the_same_outputs_bit_for_bit(nested):
    model = native_sums()
    if nested:
        outer = Blocks()
        outer.layers[0] = model
        model = outer
    expected = copy.deepcopy(model)
    x = torch.randn(3, 8, 5, 5, generator=torch.Generator().manual_seed(0))
    fused, names = fuse_residual_sums(model, torch.zeros(2, 8, 5, 5))
    prefix = "layers.0." if nested else ""
    assert names == [f"{prefix}{name}" for name in "abci"]
    block = fused.layers[0] if nested else fused  # the module holding the sums, the model itself or a block
    assert isinstance(block, torch.fx.GraphModule) and (fused is model) is nested
    calls = {n.target: n.kwargs for n in block.graph.nodes if n.op == "call_module"}
    assert all("residual" in calls[name] for name in "abci") and not any(calls[name] for name in "defgjk")
    assert "norm_a" not in calls and isinstance(block.offset, torch.Tensor)
    with torch.no_grad():
        for got, want in zip(fused(x), expected(x)):
            assert torch.equal(got, want)


def test_a_model_that_cannot_run_on_the_sample_or_fx_cannot_trace_keeps_its_sums():
    model = native_sums()
    assert fuse_residual_sums(model, torch.zeros(2, 8, 5))[1] == [] and isinstance(model, Sums)  # 3-D: the convs refuse

    class Branching(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = xnor_conv(8, 8, 0, native=True)

        def forward(self, x):
            return self.conv(x) + x if x.sum() > 0 else x  # control flow on values: no fx graph

    assert residual_sums(Branching(), torch.ones(2, 8, 5, 5)) == []


def test_fused_sums_export_with_torch_export_and_keep_the_residual_in_the_op():
    model, _ = fuse_residual_sums(native_sums(), torch.zeros(2, 8, 5, 5))
    x = torch.randn(2, 8, 5, 5, generator=torch.Generator().manual_seed(1))
    program = torch.export.export(model, (x,))
    convs = [n for n in program.graph.nodes if str(n.target) == "xnortrain.xnor_conv2d.default"]
    assert sum(len(n.args) == 14 and n.args[13] is not None for n in convs) == 4
    with torch.no_grad():
        for got, want in zip(program.module()(x), model(x)):
            assert torch.equal(got, want)


def test_the_operations_that_may_change_a_tensor_in_place_are_told_apart():
    class Ops(nn.Module):
        def __init__(self):
            super().__init__()
            self.relu_in_place, self.relu = nn.ReLU(inplace=True), nn.ReLU()

        def forward(self, x):
            return (self.relu_in_place(x), x.add_(1), nn.functional.relu(x, inplace=True), torch.relu_(x),
                    self.relu(x), x.add(1), nn.functional.relu(x), torch.relu(x))

    model = Ops()
    graph = torch.fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())
    calls = [n for n in graph.nodes if n.op not in ("placeholder", "output")]
    assert [changes_in_place(n, modules) for n in calls] == [True] * 4 + [False] * 4
