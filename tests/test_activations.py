"""Input quantizers: their values and gradients, the activation scale K, and BinOp's binary inputs."""

import math
import warnings

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from xnortrain import BinOp, bin_active
from xnortrain.activations import (
    INPUT_QUANTIZERS,
    ApproxSign,
    RSign,
    SteSign,
    activation_scale,
    make_input_quantizer,
)


def test_sign_is_plus_one_at_zero_for_every_input_quantizer():
    x = torch.tensor([-2.0, -1.0, -0.3, -0.0, 0.0, 0.3, 1.0, 2.0])
    expected = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    for cls in set(INPUT_QUANTIZERS.values()):
        assert torch.equal(cls().quantize(x), expected), cls.name
    assert torch.equal(bin_active(x), expected)


def test_ste_sign_passes_the_gradient_where_abs_x_is_at_most_one():
    x = torch.tensor([-2.0, -1.0, -0.3, 0.0, 0.3, 1.0, 1.0001, 2.0], dtype=torch.float64, requires_grad=True)
    g = torch.arange(1.0, 9.0, dtype=torch.float64)
    SteSign().quantize(x).backward(g)
    assert_close(x.grad, torch.tensor([0.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0, 0.0], dtype=torch.float64))


def approx_sign_by_definition(x: torch.Tensor) -> torch.Tensor:
    """Bi-Real Net's ApproxSign: -1 below -1, x^2 + 2x on [-1, 0), 2x - x^2 on [0, 1), +1 from 1."""
    return torch.where(x < -1, -1.0, torch.where(x < 0, x * x + 2 * x, torch.where(x < 1, 2 * x - x * x, 1.0)))


def test_approx_sign_gradient_is_the_derivative_of_the_piecewise_quadratic():
    x = torch.linspace(-1.5, 1.5, 61, dtype=torch.float64)  # includes -1, 0 and 1
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.rand(61, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ApproxSign().quantize(ours).backward(g)
    approx_sign_by_definition(theirs).backward(g)
    assert_close(ours.grad, theirs.grad)
    by_hand = torch.tensor([-1.0, -0.5, 0.0, 0.25, 1.0], dtype=torch.float64, requires_grad=True)
    ApproxSign().quantize(by_hand).sum().backward()
    assert by_hand.grad.tolist() == [0.0, 1.0, 2.0, 1.5, 0.0]  # 2 + 2x left of 0, 2 - 2x from 0 on


def test_quantizers_keep_dtype_and_shape():
    x = torch.randn(2, 3, 4, dtype=torch.bfloat16)
    for cls in set(INPUT_QUANTIZERS.values()):
        out = cls().quantize(x)
        assert out.dtype == torch.bfloat16 and out.shape == x.shape


def test_input_quantizers_by_name_mapping_and_none():
    assert make_input_quantizer("sign") == SteSign() and make_input_quantizer("approx_sign") == ApproxSign()
    assert make_input_quantizer({"name": "ste_sign", "scale": "K"}) == SteSign(scale="K")
    assert make_input_quantizer(None) is None and make_input_quantizer("none") is None
    with pytest.raises(ValueError, match="unknown input quantizer 'tanh': choose one of ste_sign, sign, approx_sign, rsign"):
        make_input_quantizer("tanh")
    with pytest.raises(ValueError, match="input quantizer ste_sign: scale 'k' is not one of none, channel_mean, K"):
        make_input_quantizer({"name": "ste_sign", "scale": "k"})
    with pytest.raises(ValueError, match="unknown option\\(s\\) threshold; valid: scale, shift"):
        make_input_quantizer({"name": "approx_sign", "threshold": 1})
    with pytest.raises(ValueError, match="input quantizer approx_sign: shift must be true or false, got 1"):
        make_input_quantizer({"name": "approx_sign", "shift": 1})
    assert make_input_quantizer("rsign") == RSign() == RSign(shift=True)


class ReluNet(nn.Module):
    """conv -> ReLU -> conv (input non-negative) -> BN -> conv (input centred) -> linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1)
        self.after_relu = nn.Conv2d(4, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.after_norm = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        x = self.after_relu(torch.relu(self.stem(x)))
        return self.head(self.after_norm(self.norm(x)).mean((2, 3)))


def inputs_seen(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    seen = {}
    handles = [model.get_submodule(n).register_forward_hook(lambda m, a, o, n=n: seen.__setitem__(n, a[0]))
               for n in names]
    model(x)
    for h in handles:
        h.remove()
    return seen


def test_binop_binarizes_the_inputs_of_the_selected_layers_only():
    torch.manual_seed(0)
    model = ReluNet()
    binop = BinOp(model, activations="sign")
    with pytest.warns(UserWarning, match="binary inputs of after_relu are non-negative"):
        seen = inputs_seen(model, ["stem", "after_relu", "after_norm", "head"], torch.randn(2, 2, 5, 5))
    for name in ("after_relu", "after_norm"):
        assert set(seen[name].unique().tolist()) <= {-1.0, 1.0}, name
    assert len(seen["stem"].unique()) > 2 and len(seen["head"].unique()) > 2  # first and last stay real
    binop.detach()
    assert len(inputs_seen(model, ["after_norm"], torch.randn(2, 2, 5, 5))["after_norm"].unique()) > 2


def test_rules_choose_the_input_quantizer_per_layer_by_glob():
    binop = BinOp(ReluNet(), activations=[{"match": "after_relu", "activation": "none"},
                                          {"match": "*", "activation": "approx_sign", "scale": "channel_mean"}])
    assert binop.activations == {"after_norm": ApproxSign(scale="channel_mean")}
    with pytest.raises(ValueError, match="activation rules match no rule for after_norm"):
        BinOp(ReluNet(), activations=[{"match": "after_relu", "activation": "sign"}])


def test_scale_k_multiplies_the_output_by_k_of_the_real_input():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 6, 3, padding=1), nn.Conv2d(6, 2, 1)).double()
    BinOp(model, activations={"name": "sign", "scale": "K"})
    layer = model[1]
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    h = model[0](x)
    k = activation_scale(h, "K", layer)
    expected = nn.functional.conv2d(torch.where(h >= 0, 1.0, -1.0).double(), layer.weight, layer.bias, padding=1) * k
    assert_close(layer(h), expected)


def k_from_definition(x: torch.Tensor, kernel: int, stride: int, padding: int) -> torch.Tensor:
    """K[n, 0, i, j] = mean over the kernel window (zero padded) of A = mean_c |x|, loop by loop."""
    a = x.abs().mean(1)  # (N, H, W)
    n, h, w = a.shape
    padded = torch.zeros(n, h + 2 * padding, w + 2 * padding, dtype=x.dtype)
    padded[:, padding:padding + h, padding:padding + w] = a
    rows = (h + 2 * padding - kernel) // stride + 1
    cols = (w + 2 * padding - kernel) // stride + 1
    k = torch.empty(n, 1, rows, cols, dtype=x.dtype)
    for b in range(n):
        for i in range(rows):
            for j in range(cols):
                window = padded[b, i * stride:i * stride + kernel, j * stride:j * stride + kernel]
                k[b, 0, i, j] = window.sum() / kernel**2
    return k


@pytest.mark.parametrize("kernel, stride, padding", [(3, 1, 1), (5, 2, 0), (1, 1, 0), (3, 2, 2)])
def test_activation_scale_k_matches_its_definition(kernel, stride, padding):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    conv = nn.Conv2d(4, 3, kernel, stride=stride, padding=padding).double()
    assert_close(activation_scale(x, "K", conv), k_from_definition(x, kernel, stride, padding))
    assert_close(activation_scale(x, "channel_mean", conv), x.abs().mean((1, 2, 3)).view(2, 1, 1, 1))
    assert activation_scale(x, "none", conv) is None
    assert math.isclose(activation_scale(x.flatten(1), "K", nn.Linear(324, 2))[0, 0].item(), x[0].abs().mean().item())


def test_binop_warns_once_naming_layers_whose_binary_input_is_never_negative():
    torch.manual_seed(0)
    model = ReluNet()
    BinOp(model, activations="sign")
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(torch.randn(2, 2, 5, 5))  # evaluation: no check
    model.train()
    with pytest.warns(UserWarning, match=r"binary inputs of after_relu are non-negative everywhere .*BatchNorm"):
        model(torch.randn(2, 2, 5, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(torch.randn(2, 2, 5, 5))  # once


def test_binop_does_not_warn_where_inputs_are_centred():
    model = ReluNet()
    BinOp(model, activations="sign", exclude=["after_relu"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(torch.randn(2, 2, 5, 5))


def test_rsign_learns_a_threshold_per_input_channel_with_the_gradient_minus_the_channels_sum():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 1), nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 2, 1)).double()
    binop = BinOp(model, activations="rsign")
    beta = model[1].input_shift
    assert beta.shape == (3,) and beta.dtype == torch.float64 and not beta.any()
    with torch.no_grad():
        beta.copy_(torch.tensor([0.1, -0.2, 0.3]))
    h = model[0](torch.randn(2, 2, 5, 5, dtype=torch.float64)).detach().requires_grad_()
    out = model[1](h)
    shifted = h.detach() - beta.detach().view(1, 3, 1, 1)
    expected = nn.functional.conv2d(torch.where(shifted >= 0, 1.0, -1.0).double(), binop.binarized()["1"],
                                    model[1].bias, padding=1)
    assert_close(out, expected)
    out.sum().backward()
    assert_close(beta.grad, -h.grad.sum((0, 2, 3)))  # sign(x - beta): d/dbeta = -d/dx, summed over channel c
    assert (h.grad != 0).any()
    assert "1.input_shift" in model.state_dict()
    binop.detach()
    assert not hasattr(model[1], "input_shift")
