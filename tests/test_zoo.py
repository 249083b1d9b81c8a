"""The zoo: output shapes, one training step as XNOR-Net, BWN and full precision, and the ResNet's flavours."""

import pytest
import torch
from torch import nn

from xnortrain import BinOp
from xnortrain.zoo import ZOO, create_model

INPUTS = {"lenet5": (1, 28, 28), "nin": (3, 32, 32), "alexnet": (3, 227, 227), "resnet": (3, 32, 32)}
FORMS = {"xnor": {"activations": "sign"}, "bwn": {}, "full": None}


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model_trains_one_step_in_each_form(name, form):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, **({"flavour": "xnor"} if name == "resnet" and form == "xnor" else {}))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(2, *INPUTS[name])
    binop = None if FORMS[form] is None else BinOp(model, optimizer=opt, example_input=x[:1], **FORMS[form])
    out = model(x)
    assert out.shape == (2, 7)
    nn.functional.cross_entropy(out, torch.tensor([0, 6])).backward()
    opt.step()
    if binop is not None:
        assert not {"conv1", "fc4", "conv9", "fc8", "stem.conv", "fc"} & set(binop.targets)  # full precision
        assert all(w.abs().max() <= 1 for w in binop.weights.values())
        assert list(binop.activations) == (list(binop.targets) if form == "xnor" else [])


@pytest.mark.parametrize("activations", ["sign", None])
def test_xnor_blocks_drop_inputs_after_the_sign_as_the_papers_models_do(activations):
    """NIN's block4: sign -> dropout(0.5) -> conv, so in training the conv sees 0 (dropped) or
    +-2 (kept, rescaled by 1 / (1 - p)), and sign(x) = +-1 in eval; plain dropout without binary inputs."""
    torch.manual_seed(0)
    model = create_model("nin")
    BinOp(model, activations=activations, example_input=torch.randn(1, 3, 32, 32))
    seen = []
    model.block4.conv.register_forward_hook(lambda m, args, out: seen.append(args[0].detach()))
    for training in (True, False):
        model.train(training)(torch.randn(2, 3, 32, 32))
    trained, evaluated = seen
    if activations is None:
        assert (trained == 0).float().mean().item() == pytest.approx(0.5, abs=0.05)
        assert len(trained.unique()) > 1000 and len(evaluated.unique()) > 1000
        return
    assert set(trained.unique().tolist()) == {-2.0, 0.0, 2.0}
    assert (trained == 0).float().mean().item() == pytest.approx(0.5, abs=0.05)
    assert set(evaluated.unique().tolist()) == {-1.0, 1.0}


def test_in_channels_is_an_argument():
    assert create_model("lenet5", in_channels=3)(torch.randn(2, 3, 28, 28)).shape == (2, 10)


def test_unknown_model_lists_the_zoo():
    with pytest.raises(ValueError, match="unknown zoo model 'resnet18': choose one of alexnet, lenet5, nin, resnet"):
        create_model("resnet18")


@pytest.mark.parametrize("flavour", ["float", "xnor", "bireal", "reactnet"])
@pytest.mark.parametrize("size", [28, 32])
def test_resnet_takes_28_and_32_pixel_inputs_in_every_flavour(flavour, size):
    model = create_model("resnet", in_channels=1, depth=14, width=8, flavour=flavour)
    assert model(torch.randn(2, 1, size, size)).shape == (2, 10)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert len([n for n in convs if n.endswith((".conv1", ".conv2"))]) == 6 * 2  # two 3x3 convs in 2 x 3 blocks
    assert len([n for n in convs if "shortcut" in n]) == 2  # the second and third stage downsample
    assert model.layer3[0].conv1.stride == (2, 2) and model.fc.in_features == 32


def test_bireal_downsampling_is_real_valued_and_every_binary_conv_has_a_real_shortcut():
    torch.manual_seed(0)
    model = create_model("resnet", depth=8, width=8, flavour="bireal")
    binop = BinOp(model, activations="approx_sign", exclude=["*.shortcut.*"], example_input=torch.zeros(1, 3, 32, 32))
    assert list(binop.targets) == [f"layer{s}.0.conv{c}" for s in (1, 2, 3) for c in (1, 2)]
    block = model.layer2[0]
    assert [type(m) for m in block.shortcut] == [nn.AvgPool2d, nn.Conv2d, nn.BatchNorm2d]
    x = torch.randn(2, 8, 32, 32)
    h = block.bn1(block.conv1(x)) + block.shortcut(x)  # conv1 sees sign(x) through BinOp's hook
    torch.testing.assert_close(block(x), block.bn2(block.conv2(h)) + h)


def test_resnet_refuses_a_depth_and_flavour_it_does_not_have():
    with pytest.raises(ValueError, match="depth 21 is not 6n \\+ 2"):
        create_model("resnet", depth=21)
    with pytest.raises(ValueError, match="flavour 'deep' is not one of float, xnor, bireal, reactnet"):
        create_model("resnet", flavour="deep")


def test_reactnet_blocks_put_an_rprelu_after_each_real_valued_sum():
    from xnortrain.layers import RPReLU

    torch.manual_seed(0)
    model = create_model("resnet", depth=8, width=8, flavour="reactnet")
    binop = BinOp(model, activations="rsign", exclude=["*.shortcut.*"], example_input=torch.zeros(1, 3, 32, 32))
    assert {type(q).__name__ for q in binop.activations.values()} == {"RSign"}
    block = model.layer2[0]
    assert isinstance(block.act1, RPReLU) and isinstance(block.act2, RPReLU)
    x = torch.randn(2, 8, 32, 32)
    h = block.act1(block.bn1(block.conv1(x)) + block.shortcut(x))
    torch.testing.assert_close(block(x), block.act2(block.bn2(block.conv2(h)) + h))
    assert "layer2.0.conv1.input_shift" in model.state_dict()
