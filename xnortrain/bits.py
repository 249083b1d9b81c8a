"""Bits: sign packing, popcount, and XNOR-popcount layers for binary inputs and weights.

Signs are packed 8 per byte, little-endian within the byte: bit i of byte b holds
element 8b + i, 1 for +1 (sign(0) = +1, so x >= 0) and 0 for -1. For a and w in
{-1, +1}^n packed as bit vectors A and W::

    dot(a, w) = n - 2 * popcount(A XOR W)

With zero padding (a conv's padded border is 0, neither +1 nor -1) a mask M of the real
positions gives dot = popcount(M) - 2 * popcount((A XOR W) AND M).

The layers hold their weights as channel words (`channel_words`): 64 channels a word,
channels-last, (C_out, KH, KW, words) for a conv and (C_out, words) for a linear layer.
They run the native kernels of `kernels.py` where those load, and otherwise the
pure-PyTorch path here, which computes the same integers from the same words.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import kernels

_BIT_WEIGHTS = tuple(1 << i for i in range(8))


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Pack a bool/0-1 tensor along its last dim, 8 per byte (uint8), zero-padded to whole bytes."""
    n = bits.shape[-1]
    padded = nn.functional.pad(bits.to(torch.uint8), (0, -n % 8))
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=bits.device)
    return (padded.view(*padded.shape[:-1], -1, 8) * weights).sum(-1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, n: int) -> torch.Tensor:
    """The first `n` bits of each row of `packed` (uint8, last dim bytes), as bool."""
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=packed.device)
    bits = (packed.unsqueeze(-1) & weights) != 0
    return bits.flatten(-2)[..., :n]


def pack_signs(x: torch.Tensor) -> torch.Tensor:
    """sign bits (1 for x >= 0, so sign(0) = +1) of a flat tensor, packed 8 per byte."""
    return pack_bits(x.reshape(-1) >= 0)


def unpack_signs(packed: torch.Tensor, shape: tuple[int, ...], dtype=torch.float32) -> torch.Tensor:
    """The +-1 tensor of `shape` whose signs `pack_signs` packed."""
    bits = unpack_bits(packed, math.prod(shape))
    return (bits.to(dtype) * 2 - 1).view(shape)


def channel_words(signs: torch.Tensor) -> torch.Tensor:
    """Sign bits (bool, last dim C) -> int64 words (..., ceil(C / 64)): bit c % 64 of word
    c // 64 holds channel c; the bits past C are 0."""
    return to_words(pack_bits(signs))


def to_words(packed: torch.Tensor) -> torch.Tensor:
    """uint8 rows -> int64 words (zero-padded to a multiple of 8 bytes), for 64-bit popcounts."""
    padded = nn.functional.pad(packed, (0, -packed.shape[-1] % 8))
    return padded.contiguous().view(torch.int64)


def popcount64(x: torch.Tensor) -> torch.Tensor:
    """Set bits of each int64 (SWAR; the masks also clear what an arithmetic shift drags in)."""
    x = x - ((x >> 1) & 0x5555555555555555)
    x = (x & 0x3333333333333333) + ((x >> 2) & 0x3333333333333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0F
    return (x * 0x0101010101010101) >> 56


def xnor_dot(a_words: torch.Tensor, w_words: torch.Tensor, mask_words: torch.Tensor | None, n: int,
             chunk: int = 1 << 22) -> torch.Tensor:
    """dot(a, w) for every row pair: a_words (R, W), w_words (O, W) -> (R, O) int64.

    `mask_words` (R, W) marks the real positions of each row (None: all n are real).
    Rows go in chunks of about `chunk` words of the (rows, O, W) XOR at a time."""
    rows = max(1, chunk // max(1, w_words.numel()))
    out = []
    for start in range(0, a_words.shape[0], rows):
        xor = a_words[start:start + rows, None, :] ^ w_words[None]
        if mask_words is None:
            out.append(n - 2 * popcount64(xor).sum(-1))
        else:
            mask = mask_words[start:start + rows, None, :]
            valid = popcount64(mask).sum(-1)
            out.append(valid - 2 * popcount64(xor & mask).sum(-1))
    return torch.cat(out)


class XnorLinear(nn.Module):
    """linear(sign(x), alpha_o * sign(W[o])) + bias_o with sign(0) = +1, computed as
    alpha_o * (n - 2 * popcount(A XOR W[o])) + bias_o.

    `weight_signs` (C_out, n) bool holds sign(W) >= 0; `native` picks the native kernel
    (default: whenever it loads) or the pure-PyTorch path."""

    def __init__(self, weight_signs: torch.Tensor, alpha: torch.Tensor, bias: torch.Tensor | None,
                 native: bool | None = None):
        super().__init__()
        self.in_features = weight_signs.shape[1]
        self.native = kernels.native() if native is None else native
        self.register_buffer("weight_words", channel_words(weight_signs))  # (O, words)
        self.register_buffer("alpha", alpha.reshape(-1).float())
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha, bias = self.alpha.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype)
        if self.native:
            return torch.ops.xnortrain.xnor_linear(x, self.weight_words, alpha, bias)
        a_words = channel_words(x.reshape(-1, self.in_features) >= 0)  # (rows, words)
        out = xnor_dot(a_words, self.weight_words, None, self.in_features).to(x.dtype) * alpha
        out = out if bias is None else out + bias
        return out.view(*x.shape[:-1], -1)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.weight_words.shape[0]}, native={self.native}"


class XnorConv2d(nn.Module):
    """conv2d(sign(x), alpha_o * sign(W[o])) + bias_o with sign(0) = +1, any stride,
    padding, dilation and groups: input patches packed tap-major into channel words,
    dot = popcount(M) - 2 * popcount((A XOR W[o]) AND M), M the patch's real channel bits
    at the taps inside the image (zero padding is neither +1 nor -1), then alpha_o * dot + bias_o.

    `weight_signs` (C_out, C_in / groups, KH, KW) bool holds sign(W) >= 0; the geometry
    comes from `conv`; `native` as in `XnorLinear`. The native kernel returns a
    channels-last tensor."""

    def __init__(self, conv: nn.Conv2d, weight_signs: torch.Tensor, alpha: torch.Tensor, bias: torch.Tensor | None,
                 native: bool | None = None):
        super().__init__()
        if not isinstance(conv.padding, tuple) or conv.padding_mode != "zeros":
            raise ValueError("XnorConv2d supports numeric zero padding")
        self.in_channels, self.out_channels, self.kernel_size = conv.in_channels, conv.out_channels, conv.kernel_size
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.native = kernels.native() if native is None else native
        self.register_buffer("weight_words", channel_words(weight_signs.permute(0, 2, 3, 1)))  # (O, KH, KW, words)
        self.register_buffer("alpha", alpha.reshape(-1).float())
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha, bias = self.alpha.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype)
        if self.native:
            return torch.ops.xnortrain.xnor_conv2d(x, self.weight_words, alpha, bias, self.stride, self.padding,
                                                   self.dilation, self.groups)
        n = x.shape[0]
        shape = kernels.conv_output_shape(x, self.weight_words, self.stride, self.padding, self.dilation)
        c_in, c_out = self.in_channels // self.groups, self.out_channels // self.groups
        inside = self._patch_words(torch.ones_like(x[:1, :c_in])) if any(self.padding) else None  # (L, words)
        signs = (x >= 0).to(x.dtype)  # sign(0) = +1
        dots = []
        for g in range(self.groups):
            a_words = self._patch_words(signs[:, g * c_in:(g + 1) * c_in])  # (N * L, taps * words)
            w_words = self.weight_words[g * c_out:(g + 1) * c_out].flatten(1)  # (O / groups, taps * words)
            mask = None if inside is None else inside.repeat(n, 1)
            dots.append(xnor_dot(a_words, w_words, mask, c_in * math.prod(self.kernel_size)))
        out = torch.cat(dots, 1).to(x.dtype) * alpha  # (N * L, O)
        out = out if bias is None else out + bias
        return out.view(n, *shape[2:], self.out_channels).permute(0, 3, 1, 2)

    def _patch_words(self, bits: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) of 0/1 -> (N * L, taps * words): each patch's channel words, tap by tap;
        a padded tap has no bits."""
        cols = nn.functional.unfold(bits, self.kernel_size, self.dilation, self.padding, self.stride)
        n, _, positions = cols.shape
        taps = cols.view(n, bits.shape[1], -1, positions).permute(0, 3, 2, 1)  # (N, L, taps, C)
        return channel_words(taps > 0).reshape(n * positions, -1)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, native={self.native}")
