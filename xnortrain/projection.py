"""Steps 1-2 of the XNOR-Net BinOp: the projection of the real weights.

Mean-centre each filter across its input channels, then clamp to [-1, 1]::

    W[o, :, k] -= mean_c W[o, c, k]        (Linear: each row minus its mean)
    W = clip(W, -1, 1)

Centring is skipped where C_in == 1 (depthwise or one-channel filters): it would zero
the filter. Doing this right after every optimizer step (and once at attach time) is
equivalent to doing it before every forward pass, as the paper's procedure does.
"""

from __future__ import annotations

import torch


def centres(w: torch.Tensor) -> bool:
    """Whether the projection mean-centres `w`: where its filters have C_in > 1."""
    return w.shape[1] > 1


@torch.no_grad()
def project_(w: torch.Tensor) -> torch.Tensor:
    """Mean-centre (where C_in > 1) and clamp `w` in place; returns `w`."""
    if centres(w):
        w.sub_(w.mean(1, keepdim=True))  # mean over C_in: (C_out, 1, *kernel)
    return w.clamp_(-1.0, 1.0)
