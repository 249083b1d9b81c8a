"""BinActive: forward sign(x) with sign(0) = +1, backward G * 1{|x| <= 1}."""

import torch
from torch.testing import assert_close

from xnortrain import BinActive, bin_active


def test_forward_is_sign_with_sign_of_zero_plus_one():
    x = torch.tensor([-2.0, -1.0, -0.3, -0.0, 0.0, 0.3, 1.0, 2.0])
    assert torch.equal(bin_active(x), torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0, 1.0]))
    assert torch.equal(BinActive()(x), bin_active(x))


def test_backward_passes_gradient_where_abs_x_at_most_one():
    x = torch.tensor([-2.0, -1.0, -0.3, 0.0, 0.3, 1.0, 1.0001, 2.0], dtype=torch.float64, requires_grad=True)
    g = torch.arange(1.0, 9.0, dtype=torch.float64)
    bin_active(x).backward(g)
    assert_close(x.grad, torch.tensor([0.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0, 0.0], dtype=torch.float64))


def test_keeps_dtype_and_shape():
    x = torch.randn(2, 3, 4, dtype=torch.bfloat16)
    out = bin_active(x)
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
