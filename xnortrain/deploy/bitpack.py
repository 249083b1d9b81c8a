"""Bit packing and the XNOR-popcount dot product of sign vectors.

Signs are packed 8 per byte, little-endian within the byte: bit i of byte b holds
element 8b + i, 1 for +1 (sign(0) = +1, so x >= 0) and 0 for -1. For a and w in
{-1, +1}^n packed as bit vectors A and W::

    dot(a, w) = n - 2 * popcount(A XOR W)

With zero padding (a conv's padded border is 0, neither +1 nor -1) a mask M of the real
positions gives dot = popcount(M) - 2 * popcount((A XOR W) AND M).

Channel words (`channel_words`) hold 64 channels a word: the form in which the
XNOR-popcount layers keep their weights and pack their inputs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

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
