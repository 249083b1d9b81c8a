"""BinOp against the swap-style reference (tests/reference.py), over whole trajectories,
eager and under torch.compile, in float64 to 1e-9."""

from __future__ import annotations

import copy

import pytest
import torch
from reference import INPUT_SIGNS, SwapBinOp
from torch import nn
from torch.testing import assert_close

from xnortrain import BinOp
from xnortrain.zoo import create_model


class MixedNet(nn.Module):
    """Every kind of target the procedure distinguishes, in one model."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)  # first layer, one input channel
        self.bn1 = nn.BatchNorm2d(8)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)  # C_in = 1 per filter
        self.grouped = nn.Conv2d(8, 12, 3, padding=1, groups=2)  # C_in = 4
        self.bn2 = nn.BatchNorm2d(12)
        self.conv = nn.Conv2d(12, 16, 3, stride=2)  # C_in = 12
        self.conv1d = nn.Conv1d(16, 6, 2)  # applied over the flattened width
        self.fc = nn.Linear(6 * 2, 24)  # Linear with bias
        self.head = nn.Linear(24, 5)  # last layer

    def forward(self, x):
        x = torch.relu(self.bn1(self.stem(x)))
        x = torch.relu(self.bn2(self.grouped(self.depthwise(x))))
        x = torch.relu(self.conv(x))  # (B, 16, 3, 3)
        x = self.conv1d(x.flatten(2))  # (B, 6, 8)
        x = torch.relu(self.fc(x[..., :2].flatten(1)))
        return self.head(x)


def make_optimizer(name: str, params):
    if name == "sgd":
        return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-3)
    return torch.optim.Adam(params, lr=0.01, weight_decay=1e-5)


def batches(steps: int):
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(6, 1, 8, 8, generator=gen, dtype=torch.float64)
        y = torch.randint(0, 5, (6,), generator=gen)
        yield x, y


TOLERANCE = {"rtol": 1e-9, "atol": 1e-9}


@pytest.mark.parametrize("skip_first_last", [True, False])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("grad", ["xnor", "exact", "ste"])
def test_training_trajectory_equals_reference(grad, optimizer, skip_first_last):
    torch.manual_seed(0)
    ours = MixedNet().double()
    initial = copy.deepcopy(ours.state_dict())
    binop = BinOp(ours, grad=grad, skip_first_last=skip_first_last)
    follow_reference(binop, ours, initial, optimizer, steps=25)


@pytest.mark.parametrize("grad", ["xnor", "exact", "ste"])
def test_compiled_training_trajectory_equals_reference(grad):
    """One compiled model follows an SGD and then an Adam trajectory (the optimizer and the
    projection run outside the compiled graph), restarted from the same weights."""
    torch.compiler.reset()  # a fresh compile, not one left over from another test
    torch.manual_seed(0)
    ours = MixedNet().double()
    initial = copy.deepcopy(ours.state_dict())
    binop = BinOp(ours, grad=grad, skip_first_last=False)
    compiled = torch.compile(ours, fullgraph=True)
    for optimizer in ("sgd", "adam"):
        ours.load_state_dict(initial)
        binop.project_()
        follow_reference(binop, compiled, initial, optimizer, steps=6)


def follow_reference(binop: BinOp, forward, initial: dict, optimizer: str, steps: int) -> None:
    """Train BinOp's model (through `forward`, the model or its compiled form) and the reference
    from the same `initial` weights side by side: the real weights, losses and gradients agree
    at every step."""
    ours = binop.model
    theirs = MixedNet().double()
    theirs.load_state_dict(initial)
    ours_opt = make_optimizer(optimizer, ours.parameters())
    binop.project_after(ours_opt)
    names = list(binop.targets)
    expected = ["depthwise", "grouped", "conv", "conv1d", "fc"]
    assert names in (expected, ["stem", *expected, "head"])

    reference = SwapBinOp(theirs, names, binop.grad)
    theirs_opt = make_optimizer(optimizer, theirs.parameters())

    for step, (x, y) in enumerate(batches(steps)):
        # the real weights BinOp holds are what the reference's steps 1-2 make of its weights
        for name, want in zip(names, reference.projected_weights()):
            assert_close(binop.weights[name], want, **TOLERANCE, msg=lambda m: f"step {step} {name}: {m}")

        reference.binarize()
        loss_theirs = nn.functional.cross_entropy(theirs(x), y)
        theirs_opt.zero_grad()
        loss_theirs.backward()
        reference.restore()
        reference.update_binary_grad_weight()

        ours_opt.zero_grad()
        loss_ours = nn.functional.cross_entropy(forward(x), y)
        loss_ours.backward()

        assert_close(loss_ours, loss_theirs, **TOLERANCE)
        ours_state, theirs_params = dict(ours.named_parameters()), dict(theirs.named_parameters())
        for name, p in theirs_params.items():
            ours_name = name.replace(".weight", ".parametrizations.weight.original") if name.split(".")[0] in names else name
            assert_close(ours_state[ours_name].grad, p.grad, **TOLERANCE, msg=lambda m: f"step {step} grad {name}: {m}")

        theirs_opt.step()
        ours_opt.step()

    # untouched parameters and BatchNorm statistics followed the same path too
    ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
    for key in theirs_sd:
        if key.rsplit(".", 1)[0] not in names:
            assert_close(ours_sd[key], theirs_sd[key], **TOLERANCE)


ZOO_CASES = {
    "lenet5": ("lenet5", {}, (1, 28, 28), "ste_sign", None),
    "nin": ("nin", {}, (3, 32, 32), "ste_sign", None),  # with dropout: both draw the same masks
    "resnet-xnor": ("resnet", {"depth": 8, "width": 8, "flavour": "xnor"}, (3, 32, 32), "ste_sign", None),
    "resnet-bireal": ("resnet", {"depth": 8, "width": 8, "flavour": "bireal"}, (1, 28, 28), "approx_sign",
                      ["*.shortcut.*"]),
    "resnet-reactnet": ("resnet", {"depth": 8, "width": 8, "flavour": "reactnet"}, (1, 28, 28), "rsign",
                        ["*.shortcut.*"]),
}


@pytest.mark.parametrize("case", sorted(ZOO_CASES))
def test_zoo_binary_network_trajectory_equals_reference(case):
    """BinOp with binary inputs on a zoo model against the swap-style reference whose layers see
    the reference's sign (forward pre-hooks calling tests/reference.py; for rsign, of the input
    less a threshold per channel that the reference learns too), Adam, float64."""
    name, kwargs, shape, activation, exclude = ZOO_CASES[case]
    torch.manual_seed(0)
    ours = create_model(name, num_classes=5, in_channels=shape[0], **kwargs).double()
    initial = copy.deepcopy(ours.state_dict())
    binop = BinOp(ours, activations=activation, exclude=exclude, example_input=torch.zeros(1, *shape).double())
    assert list(binop.activations) == list(binop.targets) and binop.targets
    theirs = create_model(name, num_classes=5, in_channels=shape[0], **kwargs).double()
    theirs.load_state_dict(initial)
    reference = SwapBinOp(theirs, list(binop.targets), "xnor")
    shift = activation == "rsign"  # sign(x - beta_c), beta a parameter of the layer starting at 0, approx_sign's gradient
    sign = INPUT_SIGNS["approx_sign" if shift else activation]
    for layer in binop.targets:
        module = theirs.get_submodule(layer)
        if shift:
            module.input_shift = nn.Parameter(torch.zeros(module.in_channels, dtype=torch.float64))
        module.register_forward_pre_hook(
            lambda m, args: (sign.apply(args[0] - m.input_shift.view(1, -1, 1, 1) if shift else args[0]),),
            prepend=True)  # before NIN's input dropout, as BinOp's
    ours_opt = torch.optim.Adam(ours.parameters(), lr=0.01, weight_decay=1e-5)
    binop.project_after(ours_opt)
    theirs_opt = torch.optim.Adam(theirs.parameters(), lr=0.01, weight_decay=1e-5)
    gen = torch.Generator().manual_seed(1)
    for step in range(4):
        x = torch.randn(4, *shape, generator=gen, dtype=torch.float64)
        y = torch.randint(0, 5, (4,), generator=gen)
        reference.binarize()
        torch.manual_seed(step)
        loss_theirs = nn.functional.cross_entropy(theirs(x), y)
        theirs_opt.zero_grad()
        loss_theirs.backward()
        reference.restore()
        reference.update_binary_grad_weight()
        theirs_opt.step()
        torch.manual_seed(step)
        loss_ours = nn.functional.cross_entropy(ours(x), y)
        ours_opt.zero_grad()
        loss_ours.backward()
        ours_opt.step()
        assert_close(loss_ours, loss_theirs, **TOLERANCE, msg=lambda m: f"step {step}: {m}")
    reference.binarize()  # steps 1-2 of the next step: what BinOp's projection made of the weights
    reference.restore()
    for key, value in theirs.state_dict().items():
        assert_close(ours.state_dict()[key], value, **TOLERANCE, msg=lambda m: f"{key}: {m}")
