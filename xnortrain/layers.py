"""Layers that binary networks place around their binary convolutions.

- `RPReLU` (ReActNet, Liu et al., ECCV 2020): a PReLU whose kink and output are shifted by
  learnable per-channel amounts, so that the distribution a sign reads next can move:

      y_c = PReLU_c(x_c - gamma_c) + zeta_c,   PReLU_c(v) = v for v > 0, beta_c * v otherwise

  gamma and zeta start at 0, the slope beta at 0.25 (PyTorch's PReLU).
- `LearnedScale` (XNOR-Net++, Bulat and Tzimiropoulos 2019; Real-to-Binary, Martinez et
  al. 2020): a learned per-output-channel factor on a binary layer's output, y_c = s_c * x_c,
  in place of (with weight quantizer ``{name: xnor, scale: none}``) or on top of
  alpha = mean |W|. A BatchNorm right after the layer has such a factor already (its
  weight), which is why the zoo's Bi-Real and ReActNet blocks need no LearnedScale.

Both act on dimension 1 (channels) of (N, C, ...) inputs.
"""

from __future__ import annotations

import torch
from torch import nn


def per_channel(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """v (one value per channel) shaped to broadcast over x (N, C, ...): (1, C, 1, ...)."""
    return v.view(1, -1, *[1] * (x.dim() - 2))


class RPReLU(nn.Module):
    """y_c = PReLU_c(x_c - gamma_c) + zeta_c with learnable gamma, beta (the slope) and zeta per channel."""

    def __init__(self, channels: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(channels))
        self.prelu = nn.PReLU(channels)
        self.zeta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prelu(x - per_channel(self.gamma, x)) + per_channel(self.zeta, x)


class LearnedScale(nn.Module):
    """y_c = s_c * x_c with a learnable s per channel, starting at 1."""

    def __init__(self, channels: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * per_channel(self.scale, x)
