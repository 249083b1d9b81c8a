"""The zoo: output shapes and one training step as XNOR-Net, BWN and full precision."""

import pytest
import torch
from torch import nn

from xnortrain import BinActive, BinOp
from xnortrain.zoo import ZOO, create_model

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
