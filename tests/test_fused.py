"""The fused CPU kernels against the reference formulas, and W~ computed ahead at projection."""

from __future__ import annotations

import gc
import shutil
import weakref
from copy import deepcopy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import alpha_of, centre_and_clamp_, per_filter, rescaled_gradient, sign
from torch import nn
from torch.testing import assert_close

from xnortrain import BinOp, binarize, fused


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_kernels_build_where_a_c_compiler_is_present():
    # so that the tests below and test_trajectory's "fused" cases do run the kernels
    assert fused.library() is not None
    assert fused.usable(torch.zeros(2, 3)) and fused.usable(torch.zeros(2, 3, dtype=torch.float64))
    assert not fused.usable(torch.zeros(2, 3, dtype=torch.float16))
    assert not fused.usable(torch.zeros(3, 2).t())


needs_kernels = pytest.mark.skipif(fused.library() is None, reason="fused kernels unavailable (no C compiler)")


@needs_kernels
@settings(max_examples=80, deadline=None)
@given(
    c_out=st.integers(1, 5), c_in=st.integers(1, 6), k=st.sampled_from([(), (1,), (3,), (2, 3), (1, 1)]),
    spread=st.sampled_from([0.5, 2.0]), zero_filter=st.booleans(), negative_zero=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2**16),
)
def test_kernels_match_the_formulas(c_out, c_in, k, spread, zero_filter, negative_zero, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    w = (torch.rand(c_out, c_in, *k, generator=gen, dtype=torch.float64) * 2 - 1) * spread  # some |W| > 1
    w[w.abs() < 0.1] = 0.0
    if zero_filter:
        w[0] = 0.0
    if negative_zero:
        w[-1].view(-1)[0] = -0.0
    w = w.to(dtype)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {}

    # step 4 on the weights as they are, with the |W| > 1 flag
    w_bin, alpha, clipped = fused.binarize(w.flatten(1))
    assert_close(w_bin.view_as(w), per_filter(alpha_of(w), w) * sign(w), **tol)
    assert clipped == bool((w.abs() > 1).any())

    # steps 1-2 in place, then step 4 of the projected weights
    projected = w.clone()
    centre_and_clamp_(projected)
    ours = w.clone()
    w_bin, alpha = fused.project_binarize_(ours, centre=c_in > 1)
    assert_close(ours, projected, **tol)
    assert_close(w_bin, per_filter(alpha_of(ours), w) * sign(ours), **tol)
    assert not torch.signbit(w_bin)[ours == 0].any()  # sign(0) = sign(-0.0) = +1
    assert torch.equal(fused.binarize(ours.flatten(1))[0].view_as(w), w_bin)  # the same bits by either kernel

    # step 7 where every |W| <= 1 (after the projection), for xnor and exact
    g = torch.randn(w.shape, generator=gen, dtype=torch.float64).to(dtype)
    for mode in ("xnor", "exact"):
        n = ours[0].numel()
        scale = 1.0 if mode == "exact" else (n if c_in == 1 else n * (1 - 1 / c_in))
        got = fused.binarized_grad(w_bin, g, alpha, scale)
        assert_close(got, rescaled_gradient(ours, g, mode), **tol)


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 4))


def seen_weights(model: nn.Module, binop: BinOp) -> dict[str, torch.Tensor]:
    """The weight each target uses in a forward pass."""
    seen = {}
    hooks = [layer.register_forward_pre_hook(lambda m, _, name=name: seen.__setitem__(name, m.weight.detach().clone()))
             for name, layer in binop.targets.items()]
    model(torch.randn(2, 3, 8, 8, dtype=next(model.parameters()).dtype))
    for hook in hooks:
        hook.remove()
    return seen


def assert_layers_see_current_weights(model: nn.Module, binop: BinOp) -> None:
    for name, w_bin in seen_weights(model, binop).items():
        assert torch.equal(w_bin, binarize(binop.weights[name].detach())), name


@pytest.mark.parametrize("kernels", ["fused", "eager"])
@pytest.mark.parametrize("change", ["fused optimizer step", "step writing through .data", "in-place op",
                                    "load_state_dict", "dtype", "write into W~"])
def test_weights_changed_without_a_projection_are_binarized_afresh(kernels, change, request):
    if kernels == "eager":
        request.getfixturevalue("eager")
    model = net()
    binop = BinOp(model)  # projects and binarizes ahead
    assert_layers_see_current_weights(model, binop)
    weights = list(binop.weights.values())
    for w in weights:
        w.grad = torch.randn_like(w)
    if change == "fused optimizer step":  # changes W without bumping its version counter
        torch.optim.Adam(weights, lr=0.1, fused=True).step()
    elif change == "step writing through .data":
        class DataSGD(torch.optim.Optimizer):
            def __init__(self, params):
                super().__init__(params, {})

            def step(self, closure=None):
                for p in self.param_groups[0]["params"]:
                    p.data.sub_(0.5 * p.grad)
        DataSGD(weights).step()
    elif change == "in-place op":
        with torch.no_grad():
            weights[0].mul_(-3.0)
    elif change == "load_state_dict":
        other = net()
        with torch.no_grad():
            for p in other.parameters():
                p.mul_(2.0)
        model.load_state_dict(other.state_dict())
    elif change == "write into W~":  # the layer's weight is W~; writing into it changes no real weight
        with torch.no_grad():
            binop.targets["2"].weight.mul_(2.0)
    else:
        model.double()
    assert_layers_see_current_weights(model, binop)


def test_binarized_weight_is_computed_at_projection_and_reused_until_w_changes():
    model = net()
    binop = BinOp(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    binop.project_after(optimizer)
    layer = binop.targets["2"]
    first, second = layer.weight, layer.weight  # the one W~ made at projection, not recomputed
    assert first.untyped_storage().data_ptr() == second.untyped_storage().data_ptr()
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    optimizer.step()  # projects and binarizes ahead again
    third = layer.weight
    assert third.untyped_storage().data_ptr() != first.untyped_storage().data_ptr()
    assert torch.equal(third, binarize(binop.weights["2"].detach()))


def test_backward_through_an_old_graph_after_the_weights_changed_is_refused():
    model = net()
    binop = BinOp(model)
    loss = model(torch.randn(2, 3, 8, 8)).sum()
    with torch.no_grad():
        binop.weights["2"].add_(0.1)  # W changes under the graph that saved it
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def sgd_setup():
    """`net()` with BinOp projecting after each step of its SGD optimizer, and a batch."""
    model = net()
    binop = BinOp(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    binop.project_after(optimizer)
    return model, binop, optimizer, torch.randn(4, 3, 8, 8)


@needs_kernels
def test_recycled_gradient_memory_is_never_reused_while_a_tensor_holds_it():
    model, binop, optimizer, x = sgd_setup()
    kept = []
    for _ in range(4):  # gradients kept by the caller (.grad replaced, never zeroed in place)
        optimizer.zero_grad(set_to_none=True)
        model(x).sum().backward()
        kept.append([(w.grad, w.grad.clone()) for w in binop.weights.values()])
        optimizer.step()
    for step in kept:
        for held, values in step:
            assert torch.equal(held, values)

    kept.clear()
    storages = set()
    for _ in range(3):  # a plain loop: each step's gradient is dropped before the next backward
        optimizer.zero_grad(set_to_none=True)
        model(x).sum().backward()
        storages.add(binop.weights["2"].grad.untyped_storage().data_ptr())
        optimizer.step()
    assert len(storages) <= 2  # the memory comes back instead of being allocated afresh


def gradient_memory(model: nn.Module) -> fused.RecycledMemory:
    """The gradient memory of target "2" of `net()`."""
    return model.get_submodule("2").parametrizations.weight[0].grad_memory


@needs_kernels
def test_recycled_binarized_memory_is_never_reused_while_a_tensor_holds_it():
    model, binop, optimizer, x = sgd_setup()
    layer = model.get_submodule("2")
    kept = []
    for _ in range(4):  # W~ of every step kept by the caller
        w_bin = layer.weight
        kept.append((w_bin, w_bin.clone()))
        optimizer.zero_grad(set_to_none=True)
        model(x).sum().backward()
        optimizer.step()
    for held, values in kept:
        assert torch.equal(held, values)
    assert len({held.data_ptr() for held, _ in kept}) == len(kept)

    kept.clear()
    storages = set()
    for _ in range(3):  # a plain loop: each step's W~ is dropped with its graph
        optimizer.zero_grad(set_to_none=True)
        model(x).sum().backward()
        optimizer.step()
        storages.add(layer.weight.untyped_storage().data_ptr())
    assert len(storages) == 1  # W~ of each projection goes into the memory of the one before
    assert torch.equal(layer.weight, binarize(binop.weights["2"]))


@needs_kernels
@pytest.mark.parametrize("let_go", ["detach", "free the model"])
def test_recycled_gradient_memory_goes_with_the_binop(let_go):
    model = net()
    binop = BinOp(model)
    model(torch.randn(4, 3, 8, 8)).sum().backward()
    memory = gradient_memory(model)
    assert memory._buffers  # the gradient rule drew from the weight's memory
    gone = weakref.ref(memory)
    if let_go == "detach":
        binop.detach()
    else:
        del model
    del binop, memory
    gc.collect()
    assert gone() is None


@needs_kernels
def test_a_copied_model_has_gradient_memory_of_its_own():
    model = net()
    BinOp(model)
    model(torch.randn(4, 3, 8, 8)).sum().backward()
    copy = deepcopy(model)
    ours, theirs = gradient_memory(model), gradient_memory(copy)
    assert ours._buffers and theirs._buffers == []  # never writes a gradient into the original's


@needs_kernels
def test_kernels_give_the_same_bits_on_one_thread_and_on_several():
    # large enough for the kernels to spread filters over torch's OpenMP threads where they can
    w = torch.randn(300, 400, generator=torch.Generator().manual_seed(0)) * 0.1
    g = torch.randn(300, 400, generator=torch.Generator().manual_seed(1))
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, max(2, threads)):
            torch.set_num_threads(n)
            projected = w.clone()
            w_bin, alpha = fused.project_binarize_(projected, centre=True)
            results.append((projected, w_bin, alpha, fused.binarized_grad(w_bin, g, alpha, 399.0)))
    finally:
        torch.set_num_threads(threads)
    for one, several in zip(*results):
        assert torch.equal(one, several)
