"""Binary activations of XNOR-Net (Rastegari et al., ECCV 2016, section 3.2).

    forward:  sign(x), with sign(0) = +1
    backward: G * 1{|x| <= 1}          (straight-through estimator, clipped)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .quantizers import sign_pm1


class _BinActive(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return sign_pm1(x)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return x.abs().le_(1).mul_(grad_out)  # 1{|x| <= 1} * G


def bin_active(x: torch.Tensor) -> torch.Tensor:
    """sign(x) with sign(0) = +1; gradient G * 1{|x| <= 1}."""
    return _BinActive.apply(x)


class BinActive(nn.Module):
    """Module form of :func:`bin_active`, for use inside `nn.Sequential` blocks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bin_active(x)


ACTIVATION_SCALES = ("none", "channel_mean", "K")


def activation_scale(x: torch.Tensor, mode: str, layer: nn.Module) -> torch.Tensor | None:
    """The scale of XNOR-Net section 3.2 for the output of `layer` fed with sign(x).

    With A = mean over channels of |x|, shape (N, 1, H, W):

        K:            K = A * k, k a box filter of the layer's kernel size (k_ij = 1 / (h * w)),
                      with the layer's stride, padding and dilation: one factor per output
                      position, shape (N, 1, H', W')
        channel_mean: beta = mean of |x| over channels and positions, one factor per
                      sample, shape (N, 1, 1, 1): K's cheap form, no convolution
        none:         None

    For a Linear layer both are the mean of |x| over the features, shape (N, 1).
    The layer's output is then (sign(x) (*) W~) * K, with alpha inside W~.
    """
    if mode == "none":
        return None
    if x.dim() == 2:  # the input of a Linear layer
        return x.abs().mean(1, keepdim=True)
    a = x.abs().mean(1, keepdim=True)  # A: (N, 1, H, W)
    if mode == "channel_mean":
        return a.mean((2, 3), keepdim=True)
    box = torch.full((1, 1, *layer.kernel_size), 1.0 / math.prod(layer.kernel_size), dtype=x.dtype, device=x.device)
    return nn.functional.conv2d(a, box, stride=layer.stride, padding=layer.padding, dilation=layer.dilation)
