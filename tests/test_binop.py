"""BinOp's contract: W~, alpha, gradient rules, selection, safety of the real weights."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from models_for_tests import train_losses
from reference import alpha_of, rescaled_gradient, sign
from torch import nn
from torch.testing import assert_close

from xnortrain import BinOp, binarize, binarize_weight
from xnortrain.zoo import lenet5


def small_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(),
        nn.Linear(32, 10),
    )


def real_weights(binop: BinOp) -> dict[str, torch.Tensor]:
    return {name: w.detach().clone() for name, w in binop.weights.items()}


# --- W~ and alpha -----------------------------------------------------------------


def test_binarized_weight_takes_exactly_two_values_per_filter_even_with_zeros():
    w = torch.randn(6, 4, 3, 3)
    w[0, :2] = 0.0
    w[1, 1, 1, 1] = -0.0  # compares equal to 0: its sign is +1 too
    w[2] = 0.0  # an all-zero filter: alpha = 0, W~ = 0
    w_bin = binarize(w)
    alpha = w.abs().flatten(1).mean(1)
    for o in range(6):
        values = set(w_bin[o].flatten().tolist())
        if o == 2:
            assert values == {0.0}
        else:  # +-a, with a the mean |W| up to float32 rounding (summation order)
            a = max(values)
            assert values == {a, -a}
            assert_close(torch.tensor(a), alpha[o])
    assert (w_bin[0, :2] > 0).all() and w_bin[1, 1, 1, 1] > 0


def test_alpha_is_the_mean_absolute_value_of_each_output_filter():
    w = torch.randn(5, 3, 2, 2, dtype=torch.float64)
    assert_close(binarize(w).abs().flatten(1).amax(1), alpha_of(w))
    assert_close(binarize(w), alpha_of(w).view(-1, 1, 1, 1) * sign(w))


def test_each_layer_sees_binarized_weights_in_its_forward():
    torch.manual_seed(0)
    model = small_net()
    binop = BinOp(model)
    seen = {}
    for name, layer in binop.targets.items():
        layer.register_forward_pre_hook(lambda m, args, name=name: seen.__setitem__(name, m.weight.detach().clone()))
    model(torch.randn(2, 3, 4, 4))
    for name, w in binop.weights.items():
        assert_close(seen[name], binarize(w.detach()))
    assert_close(binop.binarized()["2"], seen["2"])


# --- gradient rules -----------------------------------------------------------------


def test_gradient_rules_on_a_hand_computed_example():
    # one Linear filter, n = C_in = 4; real weights inside [-1, 1] except one clipped entry
    w = torch.tensor([[0.5, -0.25, 0.0, 1.5]], dtype=torch.float64, requires_grad=True)
    g = torch.tensor([[1.0, 2.0, -1.0, 4.0]], dtype=torch.float64)
    # alpha = (0.5 + 0.25 + 0 + 1.5) / 4 = 0.5625; sign = [+1, -1, +1, +1]
    # mean_j sign_j G_j = (1 - 2 - 1 + 4) / 4 = 0.5; inside = [1, 1, 1, 0]
    exact = torch.tensor([[0.5625 * 1 + 0.5, 0.5625 * 2 - 0.5, 0.5625 * -1 + 0.5, 0.0 + 0.5]], dtype=torch.float64)
    expected = {"exact": exact, "xnor": 4 * (1 - 1 / 4) * exact, "ste": torch.tensor([[1.0, 2.0, -1.0, 0.0]], dtype=torch.float64)}
    for mode, want in expected.items():
        w.grad = None
        binarize_weight(w, mode).backward(g)
        assert_close(w.grad, want, msg=mode)


def test_xnor_factor_is_n_when_filters_have_one_input_channel():
    w = (torch.rand(4, 1, 3, 3, dtype=torch.float64) - 0.5).requires_grad_()
    g = torch.randn(4, 1, 3, 3, dtype=torch.float64)
    binarize_weight(w, "xnor").backward(g)
    xnor = w.grad.clone()
    w.grad = None
    binarize_weight(w, "exact").backward(g)
    assert_close(xnor, 9 * w.grad)


@settings(max_examples=60, deadline=None)
@given(
    c_out=st.integers(1, 5), c_in=st.integers(1, 5), k=st.sampled_from([(), (1,), (3,), (2, 3)]),
    spread=st.sampled_from([0.5, 2.0]), zero_filter=st.booleans(), mode=st.sampled_from(["xnor", "exact", "ste"]),
    seed=st.integers(0, 2**16),
)
def test_backward_matches_the_formula_for_any_shape_and_weights(c_out, c_in, k, spread, zero_filter, mode, seed):
    gen = torch.Generator().manual_seed(seed)
    w = (torch.rand(c_out, c_in, *k, generator=gen, dtype=torch.float64) * 2 - 1) * spread  # some |W| > 1
    w[w.abs() < 0.1] = 0.0
    if zero_filter:
        w[0] = 0.0
    g = torch.randn(w.shape, generator=gen, dtype=torch.float64)
    leaf = w.clone().requires_grad_()
    out = binarize_weight(leaf, mode)
    assert_close(out.detach(), alpha_of(w).reshape(-1, *[1] * (w.dim() - 1)) * sign(w))
    out.backward(g)
    assert_close(leaf.grad, rescaled_gradient(w, g, mode))


def test_gradient_accumulation_over_two_micro_batches_equals_one_batch():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 16), nn.Linear(16, 4)).double()
    binop = BinOp(net)
    x, y = torch.randn(8, 3, 8, 8, dtype=torch.float64), torch.randint(0, 4, (8,))
    loss = lambda xb, yb: nn.functional.cross_entropy(net(xb), yb, reduction="sum")  # noqa: E731
    loss(x, y).backward()
    full = {n: p.grad.clone() for n, p in net.named_parameters()}
    net.zero_grad()
    loss(x[:3], y[:3]).backward()
    loss(x[3:], y[3:]).backward()
    for n, p in net.named_parameters():
        assert_close(p.grad, full[n], msg=n)
    assert binop.targets


# --- projection -----------------------------------------------------------------------


def test_attach_projects_and_optimizer_hook_projects_after_each_step():
    torch.manual_seed(0)
    model = small_net()
    with torch.no_grad():
        model[2].weight.mul_(50)  # far outside [-1, 1] and not centred
    opt = torch.optim.SGD(model.parameters(), lr=10.0)
    binop = BinOp(model, optimizer=opt)

    for w in binop.weights.values():
        assert w.abs().max() <= 1
    nn.functional.cross_entropy(model(torch.randn(4, 3, 4, 4)), torch.tensor([0, 1, 2, 3])).backward()
    opt.step()
    for w in binop.weights.values():
        assert w.abs().max() <= 1


def test_project_centres_across_input_channels_and_clamps():
    model = nn.Sequential(nn.Linear(2, 3), nn.Conv2d(3, 2, 1), nn.Conv2d(2, 2, 3, groups=2), nn.Linear(2, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[0.2, 0.4, 0.9], [3.0, 1.0, -1.0]]).view(2, 3, 1, 1))
        model[2].weight.fill_(0.3)  # C_in = 1: centring would zero it
    BinOp(model)
    w1 = model[1].parametrizations.weight.original.detach().view(2, 3)
    # row 0: mean 0.5 -> [-0.3, -0.1, 0.4]; row 1: mean 1 -> [2, 0, -2] -> clamped [1, 0, -1]
    assert_close(w1, torch.tensor([[-0.3, -0.1, 0.4], [1.0, 0.0, -1.0]]))
    assert_close(model[2].parametrizations.weight.original.detach(), torch.full((2, 1, 3, 3), 0.3))


# --- the real weights are never binarized ------------------------------------------------------


def test_eval_leaves_real_weights_bit_identical():
    torch.manual_seed(0)
    model = lenet5()
    binop = BinOp(model)
    before = real_weights(binop)
    model.eval()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(5, 1, 28, 28))
    for name, w in binop.weights.items():
        assert torch.equal(w, before[name])


class Boom(Exception):
    pass


def test_exception_in_forward_leaves_real_weights_bit_identical():
    torch.manual_seed(0)
    model = small_net()
    binop = BinOp(model)
    before = real_weights(binop)

    def explode(*_):
        raise Boom

    handle = model[6].register_forward_hook(explode)  # after the first binarized layer ran
    with pytest.raises(Boom):
        model(torch.randn(2, 3, 4, 4))
    handle.remove()
    for name, w in binop.weights.items():
        assert torch.equal(w, before[name])
        assert w.grad is None


def test_exception_in_backward_leaves_real_weights_bit_identical():
    class FailingBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            raise Boom

    torch.manual_seed(0)
    model = small_net()
    binop = BinOp(model)
    before = real_weights(binop)
    out = model[:3](torch.randn(2, 3, 4, 4))
    with pytest.raises(Boom):
        model[3:](FailingBackward.apply(out)).sum().backward()
    for name, w in binop.weights.items():
        assert torch.equal(w, before[name])


def test_state_dict_holds_real_weights_under_the_plain_models_keys():
    torch.manual_seed(0)
    model = small_net()
    binop = BinOp(model)
    state = model.state_dict()
    assert set(state) == set(small_net().state_dict())
    for name, w in binop.weights.items():
        assert torch.equal(state[f"{name}.weight"], w)

    fresh = small_net()
    fresh_binop = BinOp(fresh)
    fresh.load_state_dict(state)
    for name, w in fresh_binop.weights.items():
        assert torch.equal(w, binop.weights[name])
    x = torch.randn(2, 3, 4, 4)
    model.eval(), fresh.eval()
    assert torch.equal(model(x), fresh(x))

    plain = small_net()
    plain.load_state_dict(state)  # a checkpoint of a BinOp model loads without BinOp too
    assert torch.equal(plain[2].weight, binop.weights["2"])


def test_a_model_in_training_deep_copies_into_an_independent_binarized_model():
    torch.manual_seed(0)
    model = small_net()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    binop = BinOp(model, optimizer=optimizer)
    x, y = torch.randn(8, 3, 4, 4), torch.randint(0, 10, (8,))
    for _ in range(2):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    model(x)  # a forward pass since the step: its W~ belongs to that pass's graph

    snapshot = copy.deepcopy(model)  # e.g. keeping the best model so far
    model.eval(), snapshot.eval()
    assert torch.equal(snapshot(x), model(x))
    with torch.no_grad():
        binop.weights["2"].neg_()
    assert not torch.equal(snapshot(x), model(x))
    assert torch.equal(snapshot[2].parametrizations.weight.original, -binop.weights["2"])


def test_detach_leaves_plain_layers_with_real_or_baked_weights():
    torch.manual_seed(0)
    model = small_net()
    binop = BinOp(model)
    real = binop.weights["2"]
    binop.detach()
    assert type(model[2]) is nn.Conv2d and model[2].weight is real
    assert "parametrizations" not in str(model)

    model2 = small_net()
    binop2 = BinOp(model2)
    expected = binop2.binarized()
    binop2.detach(bake=True)
    assert torch.equal(model2[2].weight.detach(), expected["2"])
    assert type(model2[6]) is nn.Linear


class Negate(nn.Module):
    def forward(self, w):
        return -w


def test_reading_a_target_weight_honours_parametrize_caching_and_stacking():
    from torch.nn.utils import parametrize

    torch.manual_seed(0)
    model = small_net()
    binop = BinOp(model)
    binarized = binop.binarized()
    layer, expected = model[2], binarized["2"]
    assert torch.equal(layer.weight, expected) and layer.weight.grad_fn is not None
    with torch.no_grad():
        binop.weights["2"].mul_(1.0)  # a new version: each read binarizes afresh
    assert layer.weight is not layer.weight
    with parametrize.cached():  # parametrize's own read: one W~ for the whole block
        assert layer.weight is layer.weight and torch.equal(layer.weight, expected)
    parametrize.register_parametrization(layer, "weight", Negate())  # stacked after BinOp's
    assert torch.equal(layer.weight, -expected)
    parametrize.remove_parametrizations(model[6], "weight")  # BinOp's own, removed by hand
    assert type(model[6]) is nn.Linear and torch.equal(model[6].weight, binarized["6"])


# --- selection ------------------------------------------------------------------------


class OutOfOrder(nn.Module):
    """Registration order differs from execution order: the head is registered first."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(8, 2)
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 8, 3), nn.Conv2d(8, 8, 1))
        self.norm = nn.BatchNorm2d(8)

    def forward(self, x):
        return self.head(self.norm(self.body(x)).mean((2, 3)))


def test_default_selection_excludes_first_and_last_by_execution_order_given_an_example():
    model = OutOfOrder()
    statistics = copy.deepcopy(dict(model.named_buffers()))
    assert list(BinOp(model, example_input=torch.randn(2, 3, 8, 8)).targets) == ["body.1", "body.2"]
    assert model.training  # the pass ran in eval mode: BatchNorm's statistics are as they were
    for name, value in model.named_buffers():
        assert torch.equal(value, statistics[name]), name


def test_default_selection_falls_back_to_registration_order_without_an_example():
    assert list(BinOp(OutOfOrder()).targets) == ["body.0", "body.1"]
    assert list(BinOp(OutOfOrder(), skip_first_last=False).targets) == ["head", "body.0", "body.1", "body.2"]


def test_include_and_exclude_select_by_glob():
    assert list(BinOp(OutOfOrder(), include=["body.*"], skip_first_last=False).targets) == ["body.0", "body.1", "body.2"]
    assert list(BinOp(OutOfOrder(), include=["body.*"], exclude=["body.1"]).targets) == ["body.0"]
    assert list(BinOp(OutOfOrder(), exclude="body.0").targets) == ["body.1"]  # a single pattern as a string


def test_include_and_exclude_accept_any_iterable_such_as_a_generator():
    binop = BinOp(OutOfOrder(), include=(p for p in ["body.*"]), exclude=iter(["body.1"]), skip_first_last=False,
                  params=["norm.weight"], quantizer="sign")
    assert list(binop.targets) == ["body.0", "body.2"] and list(binop.params) == ["norm.weight"]
    binop = BinOp(OutOfOrder(), include=(p for p in []), params=["norm.weight"], quantizer="sign")
    assert binop.targets == {} and list(binop.params) == ["norm.weight"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(include=["encoder.*"]), "include pattern 'encoder.*' matches no layer; candidates: head (Linear), body.0 (Conv2d)"),
        (dict(include=["norm"]), "include pattern 'norm' matches only layers that are not conv/linear: norm (BatchNorm2d)"),
        (dict(exclude=["bdy.*"]), "exclude pattern 'bdy.*' matches no layer"),
        (dict(include=["head"]), "selects no layer (skip_first_last=True keeps the first and last layers"),
        (dict(exclude=["*"], skip_first_last=False), "selects no layer; candidates: head (Linear)"),
        (dict(grad="sign"), "unknown grad mode 'sign': choose one of xnor, exact, ste"),
    ],
)
def test_bad_selection_raises_value_error_naming_candidates(kwargs, message):
    with pytest.raises(ValueError) as err:
        BinOp(OutOfOrder(), **kwargs)
    assert message in str(err.value)


def test_model_without_conv_or_linear_is_refused():
    with pytest.raises(ValueError, match="has no Conv1d/Conv2d/Conv3d/Linear layer"):
        BinOp(nn.Sequential(nn.ReLU()))


def test_attaching_twice_is_refused():
    model = small_net()
    BinOp(model)
    with pytest.raises(ValueError, match="already has a parametrization of .weight."):
        BinOp(model)


def test_repr_lists_targets_with_shapes():
    text = repr(BinOp(lenet5(), activations=[{"match": "block2.*", "activation": "sign"},
                                             {"match": "*", "activation": "none"}]))
    assert text.splitlines()[0] == ("BinOp(grad='xnor', 2 layers, 0 params, 425,000 binarized weights, "
                                    "1 binary inputs)")
    rows = [line.split(None, 2) for line in text.splitlines()[1:]]
    assert rows == [["block2.conv", "Conv2d", "(50, 20, 5, 5)           25,000  Xnor(scale='filter', grad='xnor')"
                     "  inputs: SteSign(scale='none', shift=False)"],
                    ["block3.linear", "Linear", "(500, 800)              400,000  Xnor(scale='filter', grad='xnor')"]]


# --- any model ------------------------------------------------------------------------


def test_binop_trains_torchvision_resnet18():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    binop = BinOp(model, optimizer=opt)
    names = list(binop.targets)
    assert names[0] == "layer1.0.conv1" and "conv1" not in names and "fc" not in names
    assert "layer2.0.downsample.0" in names and len(names) == 19
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    for w in binop.weights.values():
        assert w.abs().max() <= 1
    assert set(model.state_dict()) == set(torchvision.models.resnet18(num_classes=10).state_dict())


def test_binop_trains_a_custom_model_until_its_loss_falls():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(10, 64)
            self.hidden = nn.Linear(64, 64)
            self.out = nn.Linear(64, 3)

        def forward(self, x):
            return self.out(torch.relu(self.hidden(torch.relu(self.inp(x)))))

    torch.manual_seed(0)
    x = torch.randn(256, 10)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    model = Tiny()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    BinOp(model, optimizer=opt)
    losses = train_losses(model, opt, lambda m: nn.functional.cross_entropy(m(x), y), steps=60)
    assert losses[-1] < 0.6 * losses[0]


def test_import_and_binop_work_without_torchvision():
    code = (
        "import sys; sys.modules['torchvision'] = None\n"
        "import torch, xnortrain\n"
        "from xnortrain.zoo import lenet5\n"
        "m = lenet5(); b = xnortrain.BinOp(m); m(torch.randn(2, 1, 28, 28)).sum().backward()\n"
        "print(len(b.targets))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "2"
