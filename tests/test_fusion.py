"""BatchNorm folded into the XNOR-popcount layer before it: which pairs fold, and the outputs stay."""

from __future__ import annotations

import copy

import torch
from torch import nn

from xnortrain.deploy.fusion import batchnorms_after_xnor_layers, fold_batchnorms
from xnortrain.deploy.xnor_layers import XnorConv2d, XnorLinear


def xnor_conv(c_in: int, c_out: int, seed: int, bias: bool = True) -> XnorConv2d:
    gen = torch.Generator().manual_seed(seed)
    signs = torch.randn(c_out, c_in, 3, 3, generator=gen) >= 0
    conv = nn.Conv2d(c_in, c_out, 3, padding=1)
    return XnorConv2d(conv, signs, torch.rand(c_out, generator=gen) + 0.1,
                      torch.randn(c_out, generator=gen) if bias else None)


def trained_norm(channels: int, seed: int, dims: int = 2) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    norm = (nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d)(channels)
    for t in (norm.running_mean, norm.weight, norm.bias):
        t.data = torch.randn(channels, generator=gen)  # some gammas negative
    norm.running_var.data = torch.rand(channels, generator=gen) + 0.5
    return norm.eval()


class Net(nn.Module):
    """conv_a -> bn_a (folds); conv_b, whose output the residual sum reads too -> bn_b (stays);
    linear -> bn_c (folds, BatchNorm1d, layer without bias)."""

    def __init__(self):
        super().__init__()
        self.conv_a, self.bn_a = xnor_conv(4, 8, 0), trained_norm(8, 1)
        self.conv_b, self.bn_b = xnor_conv(8, 8, 2, bias=False), trained_norm(8, 3)
        self.flatten = nn.Flatten()
        gen = torch.Generator().manual_seed(4)
        self.linear = XnorLinear(torch.randn(5, 8 * 25, generator=gen) >= 0, torch.rand(5, generator=gen), None)
        self.bn_c = trained_norm(5, 5, dims=1)

    def forward(self, x):
        h = torch.relu(self.bn_a(self.conv_a(x)))
        y = self.conv_b(h)
        h = self.bn_b(y) + y
        return self.bn_c(self.linear(self.flatten(h)))


def test_a_batchnorm_folds_where_it_alone_reads_the_layers_output_and_the_outputs_stay():
    model = Net().eval()
    before = copy.deepcopy(model)
    assert batchnorms_after_xnor_layers(model) == [("conv_a", "bn_a"), ("linear", "bn_c")]
    assert fold_batchnorms(model) == ["bn_a", "bn_c"]
    assert isinstance(model.bn_a, nn.Identity) and isinstance(model.bn_c, nn.Identity)
    assert isinstance(model.bn_b, nn.BatchNorm2d)
    x = torch.randn(3, 4, 5, 5, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(model(x), before(x), rtol=1e-5, atol=1e-5)


def test_a_layer_whose_output_a_hook_rescales_keeps_its_batchnorm():
    model = Net().eval()
    assert fold_batchnorms(model, rescaled={"conv_a"}) == ["bn_c"]
    assert isinstance(model.bn_a, nn.BatchNorm2d)


def test_a_batchnorm_in_training_mode_or_called_twice_stays():
    model = Net().eval()
    model.bn_a.train()
    assert fold_batchnorms(model) == ["bn_c"]

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
