"""The weight quantizers beyond XNOR: values, gradients, projections, rules, params, training."""

import math

import pytest
import torch
from models_for_tests import TinyNet, train_losses
from reference import rescaled_gradient
from torch import nn
from torch.testing import assert_close

from xnortrain import BinOp
from xnortrain.quantizers import (
    QUANTIZERS,
    Binary01,
    BinaryConnect,
    Codebook,
    Sign,
    Xnor,
    make_quantizer,
    sign_pm1,
)


def forward_and_grad(quantizer, w, grad_out):
    w = w.clone().requires_grad_(True)
    out = quantizer.quantize(w)
    out.backward(grad_out)
    return out.detach(), w.grad


W = torch.tensor([[-1.5, -0.7, -0.0, 0.0, 0.2, 0.5, 0.9, 1.3]], dtype=torch.float64)
G = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]], dtype=torch.float64)


def test_sign_values_and_clipped_straight_through_gradient():
    out, grad = forward_and_grad(Sign(), W, G)
    assert out.tolist() == [[-1, -1, 1, 1, 1, 1, 1, 1]]  # sign(0) = sign(-0.0) = +1
    assert grad.tolist() == [[0, 2, 3, 4, 5, 6, 7, 0]]  # G * 1{|W| <= 1}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_sign_pm1_is_the_same_function_eager_and_compiled(dtype):
    """sign_pm1 has one spelling for eager mode and one for torch.compile: the same values,
    sign(+-0) = +1, NaN -> +1, and the input's dtype."""
    torch.compiler.reset()
    w = torch.tensor([-math.inf, -1.5, -1e-30, -0.0, 0.0, 1e-30, 0.7, math.inf, math.nan], dtype=dtype)
    expected = torch.tensor([-1, -1, -1, 1, 1, 1, 1, 1, 1], dtype=dtype)
    eager, compiled = sign_pm1(w.clone()), torch.compile(sign_pm1, fullgraph=True)(w.clone())
    assert eager.dtype == compiled.dtype == dtype
    assert torch.equal(eager, expected) and torch.equal(compiled, expected)


def test_binary01_thresholds_and_clips_the_gradient_to_0_1():
    out, grad = forward_and_grad(Binary01(), W, G)
    assert out.tolist() == [[0, 0, 0, 0, 0, 1, 1, 1]]  # 1{W >= 0.5}
    assert grad.tolist() == [[0, 0, 3, 4, 5, 6, 7, 0]]  # G * 1{0 <= W <= 1}
    assert forward_and_grad(Binary01(threshold=0.0), W, G)[0].tolist() == [[0, 0, 1, 1, 1, 1, 1, 1]]


def test_binaryconnect_deterministic_is_sign_with_straight_through_gradient():
    out, grad = forward_and_grad(BinaryConnect(), W, G)
    assert out.tolist() == [[-1, -1, 1, 1, 1, 1, 1, 1]]
    assert torch.equal(grad, G)


def test_binaryconnect_stochastic_frequency_matches_hard_sigmoid_and_a_seed_repeats():
    w = torch.tensor([-1.2, -0.6, 0.0, 0.3, 0.8, 1.0])
    draws = 20_000
    torch.manual_seed(0)
    samples = torch.stack([BinaryConnect(stochastic=True).quantize(w) for _ in range(draws)])
    assert set(samples.unique().tolist()) == {-1.0, 1.0}
    p = ((w + 1) / 2).clamp(0, 1)
    freq = (samples == 1).double().mean(0)
    bound = 5 * torch.sqrt(p * (1 - p) / draws).double() + 1e-12  # 5 standard errors
    assert torch.all((freq - p.double()).abs() <= bound), (freq, p)
    torch.manual_seed(7)
    first = BinaryConnect(stochastic=True).quantize(w)
    torch.manual_seed(7)
    assert torch.equal(first, BinaryConnect(stochastic=True).quantize(w))


def test_codebook_picks_the_nearest_value_ties_to_the_larger():
    q = Codebook(values=[1, -1, 0.5, -0.5])
    w = torch.tensor([-2.0, -0.8, -0.75, -0.3, 0.0, 0.2, 0.74, 0.76, 3.0])
    out, grad = forward_and_grad(q, w, torch.ones_like(w))
    assert out.tolist() == [-1.0, -1.0, -0.5, -0.5, 0.5, 0.5, 0.5, 1.0, 1.0]
    assert torch.equal(grad, torch.ones_like(w))  # straight through


def test_codebook_with_filter_scale():
    w = torch.tensor([[0.1, -0.35, 0.25], [2.0, -1.0, 0.0]])  # no ties: W / alpha is never a midpoint
    alpha = w.abs().mean(1, keepdim=True)
    table = torch.tensor([-1.0, 0.0, 1.0])
    expected = alpha * table[(w / alpha).unsqueeze(-1).sub(table).abs().argmin(-1)]
    assert torch.allclose(Codebook(values=[-1, 0, 1], scale="filter").quantize(w), expected)


def test_xnor_layer_and_none_scales():
    w = torch.tensor([[0.5, -0.25], [1.0, -0.0]])
    assert Xnor(scale="layer", grad="exact").quantize(w).tolist() == [[0.4375, -0.4375], [0.4375, 0.4375]]
    out, grad = forward_and_grad(Xnor(scale="none"), W, G)
    assert out.tolist() == [[-1, -1, 1, 1, 1, 1, 1, 1]] and grad.tolist() == [[0, 2, 3, 4, 5, 6, 7, 0]]


def test_xnor_layer_scale_gradient_is_the_exact_rule_over_the_whole_tensor():
    w = torch.tensor([[0.5, -0.25, 1.5], [0.75, -0.1, 0.0]], dtype=torch.float64)
    g = torch.tensor([[1.0, -2.0, 0.5], [3.0, 1.0, -1.0]], dtype=torch.float64)
    _, grad = forward_and_grad(Xnor(scale="layer", grad="exact"), w, g)
    n, sign, alpha = w.numel(), torch.where(w >= 0, 1.0, -1.0).double(), w.abs().mean()
    expected = alpha * (w.abs() <= 1) * g + sign * (sign * g).sum() / n
    torch.testing.assert_close(grad, expected)


def test_projections_keep_real_weights_in_range():
    for q, lo, hi in [(Sign(), -1, 1), (Binary01(), 0, 1), (BinaryConnect(), -1, 1),
                      (Codebook(values=[-0.5, 2]), -0.5, 2), (Xnor(scale="layer", grad="exact"), -1, 1)]:
        w = torch.randn(6, 5) * 3
        q.project_(w)
        assert w.min() >= lo and w.max() <= hi, q


def test_bad_quantizer_specs_are_clear_errors():
    with pytest.raises(ValueError, match="unknown quantizer 'ternary': choose one of xnor, sign"):
        make_quantizer("ternary")
    with pytest.raises(ValueError, match="quantizer codebook: unknown option.*valid: values, scale"):
        make_quantizer({"name": "codebook", "levels": [1]})
    with pytest.raises(ValueError, match="grad 'xnor'.*per filter"):
        make_quantizer({"name": "xnor", "scale": "layer", "grad": "xnor"})
    with pytest.raises(ValueError, match="scale 'row' is not one of filter, layer, none"):
        make_quantizer({"name": "xnor", "scale": "row"})
    with pytest.raises(ValueError, match="binary01: threshold must be a number, got 'half'"):
        make_quantizer({"name": "binary01", "threshold": "half"})
    with pytest.raises(ValueError, match="binaryconnect: stochastic must be true or false, got 'yes'"):
        make_quantizer({"name": "binaryconnect", "stochastic": "yes"})
    with pytest.raises(ValueError, match="codebook: values must be a number, got 'a'"):
        make_quantizer({"name": "codebook", "values": [1, "a"]})


def test_rules_pick_a_quantizer_per_layer_first_match_wins():
    binop = BinOp(TinyNet(), quantizer=[{"match": "conv", "quantizer": "sign"},
                                        {"match": "*", "quantizer": "codebook", "values": [1, -1, 0.5, -0.5]}])
    kinds = {name: type(q).__name__ for name, q in binop.quantizers.items()}
    assert set(kinds.values()) == {"Sign", "Codebook"}
    assert kinds == {"conv": "Sign", "fc": "Codebook"}
    for name, value in binop.binarized().items():
        allowed = {-1.0, 1.0} if kinds[name] == "Sign" else {-1.0, -0.5, 0.5, 1.0}
        assert set(value.unique().tolist()) <= allowed, name
    with pytest.raises(ValueError, match="match no rule for .*add a last rule"):
        BinOp(TinyNet(), quantizer=[{"match": "conv", "quantizer": "sign"}])


class VectorMultiplier(nn.Module):
    """The forum model: y = (x * v) @ M with a learnable +-1 vector v and a 0/1 matrix M."""

    def __init__(self, n: int = 8, m: int = 4):
        super().__init__()
        self.v = nn.Parameter(torch.rand(n) * 2 - 1)
        self.mask = nn.Parameter(torch.rand(n, m))

    def forward(self, x):
        return (x * self.v) @ self.mask


def test_params_learnable_sign_vector_and_01_matrix_fit_a_target():
    torch.manual_seed(0)
    target = VectorMultiplier()
    with torch.no_grad():
        target.v.copy_(torch.tensor([1, -1, 1, 1, -1, -1, 1, -1.0]))
        target.mask.copy_((torch.rand(8, 4) > 0.5).float())
    x = torch.randn(256, 8)
    y = target(x).detach()
    model = VectorMultiplier()
    binop = BinOp(model, include=[], params=["v", "mask"],
                  quantizer=[{"match": "v", "quantizer": "sign"}, {"match": "mask", "quantizer": "binary01"}])
    assert binop.targets == {} and list(binop.params) == ["v", "mask"]
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    binop.project_after(optimizer)
    losses = train_losses(model, optimizer, lambda m: nn.functional.mse_loss(m(x), y), steps=60)
    values = binop.binarized()
    assert set(values["v"].unique().tolist()) <= {-1.0, 1.0}
    assert set(values["mask"].unique().tolist()) <= {0.0, 1.0}
    assert 0 <= binop.weights["mask"].min() and binop.weights["mask"].max() <= 1
    assert losses[-1] < 0.1 * losses[0], losses[::10]
    assert list(model.state_dict()) == ["v", "mask"]  # plain keys, real weights


def test_params_errors_name_the_parameter_and_the_fix():
    with pytest.raises(ValueError, match="has no parameter 'w'; parameters: v, mask"):
        BinOp(VectorMultiplier(), include=[], params=["w"], quantizer="sign")
    with pytest.raises(ValueError, match=r"'v' has shape \(8,\): quantizer .* needs filters"):
        BinOp(VectorMultiplier(), include=[], params=["v"])


# binary01 trains the 0/1 matrix of the params test above
@pytest.mark.parametrize("quantizer", ["sign", {"name": "binaryconnect", "stochastic": True},
                                       {"name": "codebook", "values": [1, -1, 0.5, -0.5]},
                                       {"name": "xnor", "scale": "layer"}])
def test_each_quantizer_trains_a_small_model_on_a_fixed_problem(quantizer):
    torch.manual_seed(0)
    x = torch.randn(512, 16)
    y = (x[:, :8].sum(1) > x[:, 8:].sum(1)).long()
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    BinOp(model, quantizer=quantizer, optimizer=optimizer)  # the middle layer
    losses = train_losses(model, optimizer, lambda m: nn.functional.cross_entropy(m(x), y), steps=60)
    first, last = losses[0], losses[-1]
    assert last < 0.7 * first, (first, last)
    assert not math.isnan(last)


# --- the gradient that reaches the real weight of a quantized layer, by quantizer -----------------


def inside(w, lo=-1.0, hi=1.0):
    return ((w >= lo) & (w <= hi)).to(w.dtype)


def sign_of(w):
    return torch.where(w >= 0, 1.0, -1.0).to(w.dtype)


def exact_over_the_tensor(w, g):
    """The exact rule with one alpha for the whole tensor (scale layer)."""
    return w.abs().mean() * inside(w) * g + sign_of(w) * (sign_of(w) * g).mean()


# (quantizer spec, dL/dW from W and G = dL/dW~, typed out from each quantizer's formula)
GRADIENT_CASES = [
    ({"name": "xnor", "grad": "xnor"}, lambda w, g: rescaled_gradient(w, g, "xnor")),
    ({"name": "xnor", "grad": "exact"}, lambda w, g: rescaled_gradient(w, g, "exact")),
    ({"name": "xnor", "grad": "ste"}, lambda w, g: rescaled_gradient(w, g, "ste")),
    ({"name": "xnor", "scale": "layer", "grad": "exact"}, exact_over_the_tensor),
    ({"name": "xnor", "scale": "layer", "grad": "ste"}, lambda w, g: inside(w) * g),
    ({"name": "xnor", "scale": "none"}, lambda w, g: inside(w) * g),
    ({"name": "sign"}, lambda w, g: inside(w) * g),
    ({"name": "binary01"}, lambda w, g: inside(w, 0.0, 1.0) * g),
    ({"name": "binaryconnect"}, lambda w, g: g),
    ({"name": "binaryconnect", "stochastic": True}, lambda w, g: g),
    ({"name": "codebook", "values": [1, -1, 0.5, -0.5]}, lambda w, g: g),
    ({"name": "codebook", "values": [-1, 0, 1], "scale": "filter"}, lambda w, g: g),
    ({"name": "none"}, lambda w, g: g),
]


def test_every_registered_quantizer_has_a_gradient_case():
    assert {spec["name"] for spec, _ in GRADIENT_CASES} == set(QUANTIZERS)


@pytest.mark.parametrize("spec, expected_gradient", GRADIENT_CASES, ids=[str(spec) for spec, _ in GRADIENT_CASES])
def test_gradient_reaching_the_real_weight_follows_the_quantizers_formula(spec, expected_gradient):
    torch.manual_seed(0)
    layer = nn.Linear(5, 3).double()  # 3 filters of n = C_in = 5
    binop = BinOp(layer, skip_first_last=False, quantizer=spec)
    w = binop.weights[""]
    with torch.no_grad():  # inside and outside every clip range, a zero and a -0.0
        w.copy_(torch.tensor([[-1.5, -0.7, 0.0, 0.3, 1.2],
                              [0.9, -0.2, -0.0, 0.6, -0.4],
                              [0.1, 0.5, -1.1, 0.8, 0.35]], dtype=torch.float64))
    x = torch.randn(4, 5, dtype=torch.float64)
    r = torch.randn(4, 3, dtype=torch.float64)
    (layer(x) * r).sum().backward()
    g = r.T @ x  # G = dL/dW~ of the loss sum(r * (x W~^T + b)): (3, 5)
    expected = expected_gradient(w.detach(), g)
    assert expected.abs().sum() > 0
    assert_close(w.grad, expected)


@pytest.mark.parametrize("spec", [spec for spec, _ in GRADIENT_CASES], ids=[str(spec) for spec, _ in GRADIENT_CASES])
def test_a_second_backward_through_the_same_graph_gives_the_same_gradient(spec):
    """The rules keep what they save from the forward pass unchanged (retain_graph=True)."""
    torch.manual_seed(0)
    layer = nn.Linear(5, 3).double()
    binop = BinOp(layer, skip_first_last=False, quantizer=spec)
    loss = (layer(torch.randn(4, 5, dtype=torch.float64)) * torch.randn(4, 3, dtype=torch.float64)).sum()
    loss.backward(retain_graph=True)
    first = binop.weights[""].grad.clone()
    binop.weights[""].grad = None
    loss.backward()
    assert_close(binop.weights[""].grad, first, rtol=0, atol=0)
