"""A reference BinOp written from the formulas of docs/maths.md, in the step-by-step swap style.

It is deliberately the naive procedure (centre, clamp, save, binarize by overwriting the
weights, forward/backward, restore, rescale the gradient, step), with the formulas typed
out as they are stated, sharing no code with xnortrain. The tests train the same model
with it and with `xnortrain.BinOp` and compare weights and gradients step by step.
"""

from __future__ import annotations

import torch
from torch import nn


def sign(w: torch.Tensor) -> torch.Tensor:
    """sign(w) with sign(0) = +1 (also for -0.0, which compares equal to 0)."""
    return torch.where(w >= 0, torch.ones_like(w), -torch.ones_like(w))


def per_filter(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast one value per output filter over the filter's entries."""
    return values.reshape(-1, *([1] * (like.dim() - 1)))


def centre_and_clamp_(w: torch.Tensor) -> None:
    """Steps 1-2: W[o,:,k] -= mean_c W[o,c,k] (skipped when C_in == 1); W = clip(W, -1, 1)."""
    c_in = w.shape[1]
    if c_in > 1:
        w -= w.mean(dim=1, keepdim=True)
    w.clamp_(-1.0, 1.0)


def alpha_of(w: torch.Tensor) -> torch.Tensor:
    """alpha_o = mean |W[o]|, one value per filter."""
    return torch.stack([w[o].abs().mean() for o in range(w.shape[0])])


def rescaled_gradient(w: torch.Tensor, g: torch.Tensor, mode: str) -> torch.Tensor:
    """Step 7, typed out from the formula for W (real) and G = dL/dW~."""
    n = w[0].numel()
    c_in = w.shape[1]
    s = sign(w)
    inside = (w.abs() <= 1).to(w.dtype)
    if mode == "ste":
        return g * inside
    alpha = per_filter(alpha_of(w), w)
    mean_sign_g = per_filter(torch.stack([(s[o] * g[o]).sum() / n for o in range(w.shape[0])]), w)
    bracket = alpha * inside * g + s * mean_sign_g
    if mode == "exact":
        return bracket
    factor = n * (1 - 1 / c_in) if c_in > 1 else n
    return factor * bracket


class SwapBinOp:
    """The procedure with the weights swapped in and out of `layer.weight.data`."""

    def __init__(self, model: nn.Module, target_names: list[str], mode: str):
        modules = dict(model.named_modules())
        self.layers = [modules[name] for name in target_names]
        self.mode = mode
        self.saved: list[torch.Tensor] = []

    def binarize(self) -> None:
        """Steps 1-4."""
        self.saved = []
        for layer in self.layers:
            w = layer.weight.data
            centre_and_clamp_(w)
            self.saved.append(w.clone())
            w.copy_(per_filter(alpha_of(w), w) * sign(w))

    def restore(self) -> None:
        """Step 6."""
        for layer, real in zip(self.layers, self.saved):
            layer.weight.data.copy_(real)

    def update_binary_grad_weight(self) -> None:
        """Step 7 (after restore: the formulas read the real weights)."""
        for layer in self.layers:
            layer.weight.grad = rescaled_gradient(layer.weight.data, layer.weight.grad, self.mode)

    def projected_weights(self) -> list[torch.Tensor]:
        """What steps 1-2 of the next training step will make of the current weights."""
        out = []
        for layer in self.layers:
            w = layer.weight.data.clone()
            centre_and_clamp_(w)
            out.append(w)
        return out


class SignWithClippedGradient(torch.autograd.Function):
    """Binary activation: sign(x) with sign(0) = +1; backward G * 1{|x| <= 1}."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return sign(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x.abs() <= 1).to(g.dtype)


class SignWithApproxGradient(SignWithClippedGradient):
    """Bi-Real Net's ApproxSign: sign(x) forward; backward G * (2 + 2x) for -1 <= x < 0,
    G * (2 - 2x) for 0 <= x < 1, 0 elsewhere."""

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        left = ((x >= -1) & (x < 0)).to(g.dtype) * (2 + 2 * x)
        right = ((x >= 0) & (x < 1)).to(g.dtype) * (2 - 2 * x)
        return g * (left + right)


INPUT_SIGNS = {"ste_sign": SignWithClippedGradient, "approx_sign": SignWithApproxGradient}
