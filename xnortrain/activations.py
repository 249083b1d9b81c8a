"""Binary activations of XNOR-Net (Rastegari et al., ECCV 2016, section 3.2).

    forward:  sign(x), with sign(0) = +1
    backward: G * 1{|x| <= 1}          (straight-through estimator, clipped)
"""

from __future__ import annotations

import torch
from torch import nn


class _BinActive(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        # copysign keeps to float arithmetic (bool masks are slow on CPU); + 0.0 maps -0.0 to +0.0
        return torch.copysign(torch.ones((), dtype=x.dtype, device=x.device), x + 0.0)

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
