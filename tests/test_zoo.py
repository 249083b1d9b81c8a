"""The zoo: output shapes and one training step as XNOR-Net, BWN and full precision."""

import pytest
import torch
from torch import nn

from xnortrain import BinActive, BinOp
from xnortrain.activations import activation_scale
from xnortrain.zoo import ZOO, binary_conv, create_model

INPUTS = {"lenet5": (1, 28, 28), "nin": (3, 32, 32), "alexnet": (3, 227, 227)}


@pytest.mark.parametrize("form", ["xnor", "bwn", "full"])
@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model_trains_one_step_in_each_form(name, form):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, binary_activations=(form == "xnor"))
    assert any(isinstance(m, BinActive) for m in model.modules()) == (form == "xnor")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    binop = BinOp(model, optimizer=opt) if form != "full" else None
    x = torch.randn(2, *INPUTS[name])
    out = model(x)
    assert out.shape == (2, 7)
    nn.functional.cross_entropy(out, torch.tensor([0, 6])).backward()
    opt.step()
    if binop is not None:
        first, last = next(iter(binop.targets)), list(binop.targets)[-1]
        assert first.startswith("block") and last.startswith("block")  # first and last layer stay full precision
        assert all(w.abs().max() <= 1 for w in binop.weights.values())


def test_in_channels_is_an_argument():
    assert create_model("lenet5", in_channels=3)(torch.randn(2, 3, 28, 28)).shape == (2, 10)


def test_unknown_model_lists_the_zoo():
    with pytest.raises(ValueError, match="unknown zoo model 'resnet': choose one of alexnet, lenet5, nin"):
        create_model("resnet")


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
    torch.testing.assert_close(activation_scale(x, "K", conv), k_from_definition(x, kernel, stride, padding))
    torch.testing.assert_close(activation_scale(x, "channel_mean", conv), x.abs().mean((1, 2, 3)).view(2, 1, 1, 1))
    assert activation_scale(x, "none", conv) is None


def test_block_with_k_scales_the_binary_convolution():
    torch.manual_seed(0)
    block = binary_conv(4, 6, 3, padding=1, act_scale="K").double().eval()
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    normed = block.norm(x)
    expected = (block.conv(torch.where(normed >= 0, 1.0, -1.0).double()) * k_from_definition(normed, 3, 1, 1)).relu()
    torch.testing.assert_close(block(x), expected)
    assert [name for name, _ in block.named_children()] == ["norm", "act", "conv", "relu"]


@pytest.mark.parametrize("act_scale", ["K", "channel_mean"])
@pytest.mark.parametrize("name", ["lenet5", "nin"])
def test_zoo_models_train_with_activation_scaling(name, act_scale):
    torch.manual_seed(0)
    model = create_model(name, act_scale=act_scale)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    BinOp(model, optimizer=opt)
    out = model(torch.randn(2, *INPUTS[name]))
    nn.functional.cross_entropy(out, torch.tensor([0, 6])).backward()
    opt.step()
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_activation_scale_errors_name_the_choices():
    with pytest.raises(ValueError, match="act_scale 'k' is not one of none, channel_mean, K"):
        create_model("lenet5", act_scale="k")
    with pytest.raises(ValueError, match="needs binary_activations=True"):
        create_model("lenet5", act_scale="K", binary_activations=False)
