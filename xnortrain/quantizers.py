"""Weight binarization and its gradient rules: steps 4 and 7 of the XNOR-Net BinOp.

Rastegari et al., "XNOR-Net: ImageNet Classification Using Binary Convolutional
Neural Networks" (ECCV 2016), section 3.1. A target weight W has shape
(C_out, C_in, *kernel) (Linear: (C_out, C_in)); filter o is W[o], with
n = C_in * prod(kernel) entries. Every function here works on the filter-major
view W.flatten(1), shape (C_out, n).

Forward (step 4), with sign(0) = +1 so that W~ takes exactly two values per filter::

    alpha_o = ||W[o]||_1 / n
    W~[o]   = alpha_o * sign(W[o])

Backward (step 7), G = dL/dW~, inside_i = 1{|W_i| <= 1}::

    exact: g_i = alpha_o * inside_i * G_i + sign(W_i) * (1/n) * sum_{j in o} sign(W_j) * G_j
    xnor:  g_i = n * (1 - 1/C_in) * exact_i      (factor n when C_in == 1: no centring)
    ste:   g_i = inside_i * G_i

`exact` is the true derivative of alpha(W) * sign(W) with a clipped straight-through
sign; `xnor` is the scaling of the widely used PyTorch port of XNOR-Net.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import torch

from . import fused

GRAD_MODES = ("xnor", "exact", "ste")


def check_grad_mode(grad: str) -> str:
    if grad not in GRAD_MODES:
        raise ValueError(f"unknown grad mode {grad!r}: choose one of {', '.join(GRAD_MODES)}")
    return grad


@lru_cache
def grad_scale(grad: str, weight_shape: torch.Size) -> float:
    """The constant in front of the gradient bracket: n * (1 - 1/C_in) for `xnor`, else 1."""
    if grad != "xnor":
        return 1.0
    c_in = weight_shape[1]
    n = weight_shape[1:].numel()
    return float(n) if c_in == 1 else n * (1.0 - 1.0 / c_in)


def filter_alpha(magnitude: torch.Tensor) -> torch.Tensor:
    """alpha_o = ||W[o]||_1 / n from |W| in the filter-major view (C_out, n)."""
    return magnitude.sum(1, keepdim=True).div_(magnitude.shape[1])  # (C_out, 1)


def sign_times(magnitude: torch.Tensor, w: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """magnitude * sign(w) with sign(0) = +1, also for w = -0.0: 2 * magnitude * 1{w >= 0} - magnitude.

    The comparison is written straight into a float buffer (no bool tensor, which is slow
    on CPU), and no `w + 0.0` is needed, which a compiler may simplify away (Inductor does,
    turning sign(-0.0) into -1)."""
    ge = torch.ge(w, 0, out=torch.empty_like(w) if out is None else out)  # 1.0 or 0.0
    return ge.mul_(2 * magnitude).sub_(magnitude)


def sign_pm1(x: torch.Tensor) -> torch.Tensor:
    """sign(x) in {-1, +1} with sign(0) = sign(-0.0) = +1."""
    return sign_times(torch.ones((), dtype=x.dtype, device=x.device), x)


def binarize(w: torch.Tensor) -> torch.Tensor:
    """W~ = alpha * sign(W) per output filter, sign(0) = +1 (no autograd rule attached)."""
    return binarize_filters(w).w_bin


class Binarized(NamedTuple):
    """W~ of one weight, with what the backward rule reads."""

    w_bin: torch.Tensor  # alpha * sign(W), in W's shape
    alpha: torch.Tensor  # (C_out, 1)
    clipped: bool  # some |W_i| > 1, so the clip indicator 1{|W_i| <= 1} matters
    fused: bool  # made by the fused kernels, whose backward rule can then take the gradient


@torch.no_grad()
def binarize_filters(w: torch.Tensor, clipped: bool | None = None) -> Binarized:
    """Step 4 on W (C_out, ...), filter o being W[o]. `clipped=False` tells that every
    |W_i| <= 1 (as after the projection), sparing a pass that checks it."""
    w2 = w.flatten(1)  # (C_out, n)
    if fused.usable(w2):
        w_bin, alpha, any_clipped = fused.binarize(w2)
        return Binarized(w_bin.view_as(w), alpha, any_clipped if clipped is None else clipped, True)
    magnitude = w2.abs()  # (C_out, n), becomes W~ below
    alpha = filter_alpha(magnitude)  # (C_out, 1)
    if clipped is None:
        clipped = may_be_true(magnitude.amax() > 1)
    return Binarized(sign_times(alpha, w2, out=magnitude).view_as(w), alpha, clipped, False)


class BinarizeWeight(torch.autograd.Function):
    """W -> W~ = alpha * sign(W) with the gradient rule `grad` (see the module docstring).

    `ahead` is W~ of this very W computed beforehand (BinOp does it right after the
    projection, while W is still in cache from the optimizer step); None computes it here.
    `memory` (`fused.RecycledMemory`) is where the fused gradient rule writes its result.

    Memory: it saves W (the parameter itself), alpha (one float per filter) and its own
    output W~, which the conv/linear layer keeps for its backward pass anyway, so BinOp
    holds no copy of the weights beyond W~.

    Speed: a pass over the weights costs about as much as allocating its output, so the
    backward reads sign(W) out of W~ instead of recomputing it, since
    sign_i * mean_j(sign_j G_j) = W~_i * (W~ . G) / (n alpha^2), and skips the clip
    indicator when every |W_i| <= 1 (always so after the projection). No bool tensor is
    used: on CPU bool masks are several times slower than float arithmetic. The fused
    path does no more in Python than it must: inside a training step every Python line
    runs on cold caches and costs microseconds.
    """

    @staticmethod
    def forward(ctx, w: torch.Tensor, grad: str, scale: float, ahead: Binarized | None = None,
                memory: fused.RecycledMemory | None = None) -> torch.Tensor:
        binarized = binarize_filters(w) if ahead is None else ahead
        ctx.grad, ctx.scale, ctx.clipped, ctx.fused = grad, scale, binarized.clipped, binarized.fused
        ctx.memory = memory
        ctx.save_for_backward(w, binarized.alpha, binarized.w_bin)
        return binarized.w_bin

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        w, alpha, w_bin = ctx.saved_tensors
        if ctx.fused and not ctx.clipped and ctx.grad != "ste" and grad_out.is_contiguous():
            return fused.binarized_grad(w_bin, grad_out, alpha, ctx.scale, ctx.memory), None, None, None, None
        g2 = grad_out.reshape(alpha.shape[0], -1)  # (C_out, n)
        inside_g = w.flatten(1).abs().le_(1).mul_(g2) if ctx.clipped else g2  # 1{|W_i| <= 1} * G_i
        if ctx.grad == "ste":
            return inside_g.view_as(w), None, None, None, None
        w_bin = w_bin.flatten(1)
        n = w_bin.shape[1]
        zero = alpha == 0  # all-zero filters: W~ = 0 there, and sign = +1
        coef = torch.linalg.vecdot(w_bin, g2).unsqueeze(1).mul_(ctx.scale / n).div_(alpha.masked_fill(zero, 1).square())
        grad_w = w_bin * coef  # scale * sign_i * mean_j(sign_j * G_j) where alpha > 0
        grad_w.addcmul_(inside_g, alpha * ctx.scale)  # + scale * alpha * 1{|W_i| <= 1} * G_i
        if may_be_true(zero.any()):
            grad_w.add_(g2.sum(1, keepdim=True).mul_(ctx.scale / n).masked_fill_(~zero, 0))  # sign = +1
        return grad_w.view_as(w), None, None, None, None


def may_be_true(flag: torch.Tensor) -> bool:
    """False only if `flag` is known to be False without cost: read on CPU (no device
    sync, no graph break), assumed True on accelerators and under torch.compile."""
    if flag.device.type != "cpu" or torch.compiler.is_compiling():
        return True
    return bool(flag)


def binarize_weight(w: torch.Tensor, grad: str = "xnor") -> torch.Tensor:
    """Functional form: alpha * sign(w) whose gradient follows `grad` (xnor | exact | ste)."""
    check_grad_mode(grad)
    return BinarizeWeight.apply(w, grad, grad_scale(grad, w.shape))
