"""RPReLU and LearnedScale: values and gradients against the formulas, computed by hand."""

import torch
from torch.testing import assert_close

from xnortrain.layers import LearnedScale, RPReLU


def test_rprelu_value_and_gradients_follow_the_formula():
    torch.manual_seed(0)
    layer = RPReLU(3).double()
    with torch.no_grad():
        layer.gamma.copy_(torch.tensor([0.2, -0.1, 0.0]))
        layer.zeta.copy_(torch.tensor([0.5, 0.0, -0.3]))
        layer.prelu.weight.copy_(torch.tensor([0.25, 0.1, 0.5]))
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    g = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    v = x.detach() - layer.gamma.detach().view(1, 3, 1, 1)
    beta = layer.prelu.weight.detach().view(1, 3, 1, 1)
    positive = v > 0
    assert_close(layer(x), torch.where(positive, v, beta * v) + layer.zeta.detach().view(1, 3, 1, 1))
    layer(x).backward(g)
    slope = torch.where(positive, 1.0, beta)  # dy/dx
    assert_close(x.grad, g * slope)
    assert_close(layer.gamma.grad, -(g * slope).sum((0, 2, 3)))
    assert_close(layer.zeta.grad, g.sum((0, 2, 3)))
    assert_close(layer.prelu.weight.grad, torch.where(positive, 0.0, g * v).sum((0, 2, 3)))


def test_rprelu_starts_as_a_prelu():
    x = torch.randn(2, 4, 3)
    layer = RPReLU(4)
    assert_close(layer(x), layer.prelu(x))


def test_learned_scale_value_and_gradients_follow_the_formula():
    layer = LearnedScale(2).double()
    with torch.no_grad():
        layer.scale.copy_(torch.tensor([2.0, -0.5]))
    x = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 2, dtype=torch.float64)
    assert_close(layer(x), x.detach() * torch.tensor([[2.0, -0.5]], dtype=torch.float64))
    layer(x).backward(g)
    assert_close(x.grad, g * torch.tensor([[2.0, -0.5]], dtype=torch.float64))
    assert_close(layer.scale.grad, (g * x.detach()).sum(0))
