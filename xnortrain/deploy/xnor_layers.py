"""XNOR-popcount layers: conv and linear layers whose weights and inputs are both 1 bit.

For a and w in {-1, +1}^n packed as bit vectors A and W (`bitpack.py`),

    dot(a, w) = n - 2 * popcount(A XOR W)

so a layer whose input is sign(x) and whose weight is W~ = alpha * sign(W) computes
alpha_o * dot + bias_o with no multiplication. The layers hold their weights as channel
words: 64 channels a word, channels-last, (C_out, KH, KW, words) for a conv and
(C_out, words) for a linear layer. With `native` they call the native kernels of
`kernels.py` (which the caller loads first: `kernels.load`) on the same words in the
kernels' layout (`kernel_layout`, made once here); otherwise they run the pure-PyTorch path
here, which computes the same integers from the same words. A BatchNorm folded in before the
sign (`fusion.py`) gives a layer an affine map of its input, a * x + b per channel.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..layers import per_channel
from .bitpack import channel_words, xnor_dot


class XnorLinear(nn.Module):
    """linear(sign(x), alpha_o * sign(W[o])) + bias_o with sign(0) = +1, computed as
    alpha_o * (n - 2 * popcount(A XOR W[o])) + bias_o.

    `weight_signs` (C_out, n) bool holds sign(W) >= 0; `native` picks the native kernel
    (loaded by `kernels.load`) or the pure-PyTorch path."""

    def __init__(self, weight_signs: torch.Tensor, alpha: torch.Tensor, bias: torch.Tensor | None,
                 native: bool = False):
        super().__init__()
        self.in_features = weight_signs.shape[1]
        self.native = native
        self.register_buffer("weight_words", channel_words(weight_signs))  # (O, words)
        self.register_buffer("alpha", alpha.reshape(-1).float())
        self.register_buffer("bias", bias)
        register_input_map(self)
        if native:
            self.register_buffer("kernel_words", kernel_layout(self.weight_words[:, None, None], 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha, bias = in_dtype_of(self.alpha, x), in_dtype_of(self.bias, x)
        if self.native:
            return torch.ops.xnortrain.xnor_linear(x, self.kernel_words, alpha, bias, *input_map(self, x))
        a_words = channel_words(mapped(self, x.reshape(-1, self.in_features)) >= 0)  # (rows, words)
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
    channels-last tensor.

    Chained by `fusion.fuse_sign_chains` (native, one group), a layer whose output only the
    next XNOR conv's signs read returns those signs packed instead (`link_output`: the words of
    sign(a * relu(y) + b), which the kernel finds as low_o <= dot <= high_o from `sign_bounds`),
    and the next layer takes them as they are (`signs_in`)."""

    def __init__(self, conv: nn.Conv2d, weight_signs: torch.Tensor, alpha: torch.Tensor, bias: torch.Tensor | None,
                 native: bool = False):
        super().__init__()
        if not isinstance(conv.padding, tuple) or conv.padding_mode != "zeros":
            raise ValueError("XnorConv2d supports numeric zero padding")
        self.in_channels, self.out_channels, self.kernel_size = conv.in_channels, conv.out_channels, conv.kernel_size
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.native = native
        self.register_buffer("weight_words", channel_words(weight_signs.permute(0, 2, 3, 1)))  # (O, KH, KW, words)
        self.register_buffer("alpha", alpha.reshape(-1).float())
        self.register_buffer("bias", bias)
        register_input_map(self)
        self.signs_in = self.sign_output = self.output_relu = False  # plain attributes: read on every call
        self.register_buffer("output_scale", None)
        self.register_buffer("output_bias", None)
        self.register_buffer("sign_bounds", None)
        if native:
            self.register_buffer("kernel_words", kernel_layout(self.weight_words, self.groups), persistent=False)
            self.register_buffer("tap_bits", tap_bits(weight_signs), persistent=False)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """The conv of x, plus `residual` (a tensor of the output's shape and dtype) where given:
        a residual sum that reads the output, which the native kernels add in their epilogue
        (`fusion.fuse_residual_sums`)."""
        float_like = self.alpha if self.signs_in else x  # packed signs carry no float dtype
        alpha, bias = in_dtype_of(self.alpha, float_like), in_dtype_of(self.bias, float_like)
        if self.native:
            args = (x, self.kernel_words, self.tap_bits, alpha, bias, self.stride, self.padding, self.dilation,
                    self.groups, *input_map(self, x))
            if self.signs_in or self.sign_output:
                return torch.ops.xnortrain.xnor_conv2d(*args, self.in_channels if self.signs_in else 0,
                                                       self._bounds_in(float_like.dtype), residual)
            if residual is None:  # the link arguments left to their defaults: a batch-1 call costs less
                return torch.ops.xnortrain.xnor_conv2d(*args)
            return torch.ops.xnortrain.xnor_conv2d(*args, 0, None, residual)
        n = x.shape[0]
        shape = [n, self.out_channels, *conv_output_size(x.shape[2:], self.kernel_size, self.stride, self.padding,
                                                          self.dilation)]
        c_in, c_out = self.in_channels // self.groups, self.out_channels // self.groups
        inside = self._patch_words(torch.ones_like(x[:1, :c_in])) if any(self.padding) else None  # (L, words)
        signs = (mapped(self, x) >= 0).to(x.dtype)  # sign(0) = +1
        dots = []
        for g in range(self.groups):
            a_words = self._patch_words(signs[:, g * c_in:(g + 1) * c_in])  # (N * L, taps * words)
            w_words = self.weight_words[g * c_out:(g + 1) * c_out].flatten(1)  # (O / groups, taps * words)
            mask = None if inside is None else inside.repeat(n, 1)
            dots.append(xnor_dot(a_words, w_words, mask, self.real_bits))
        out = torch.cat(dots, 1).to(x.dtype) * alpha  # (N * L, O)
        out = out if bias is None else out + bias
        out = out.view(n, *shape[2:], self.out_channels).permute(0, 3, 1, 2)
        return out if residual is None else out + residual

    @property
    def real_bits(self) -> int:
        """n, the bits of a patch: |dot| <= n."""
        return self.in_channels // self.groups * math.prod(self.kernel_size)

    def link_output(self, relu: bool, scale: torch.Tensor | None, shift: torch.Tensor | None) -> bool:
        """From now on return the packed bits of sign(a * relu(y) + b) instead of y (relu where
        `relu`; a, b = `scale`, `shift`, the next layer's input map, or none); False, and the
        layer unchanged, where those bits are no interval of dots (`sign_bounds`)."""
        bounds = sign_bounds(self.alpha, self.bias, relu, scale, shift, self.real_bits)
        if bounds is None:
            return False
        self.output_relu, self.output_scale, self.output_bias, self.sign_bounds = relu, scale, shift, bounds
        self.sign_output = True
        return True

    def _bounds_in(self, dtype: torch.dtype) -> torch.Tensor | None:
        """The sign bounds for y computed in `dtype`: those found when linked (alpha's dtype,
        float32), or found again for another dtype (a test's double-precision pass)."""
        if not self.sign_output or dtype == self.alpha.dtype:
            return self.sign_bounds
        terms = (self.alpha, self.bias, self.output_scale, self.output_bias)
        alpha, bias, scale, shift = (None if t is None else t.to(dtype) for t in terms)
        bounds = sign_bounds(alpha, bias, self.output_relu, scale, shift, self.real_bits)
        if bounds is None:
            raise RuntimeError(f"a linked XNOR conv's output bits in {dtype} are no interval of dots; "
                               f"load with fuse_signs=False to run this dtype")
        return bounds

    def _patch_words(self, bits: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) of 0/1 -> (N * L, taps * words): each patch's channel words, tap by tap;
        a padded tap has no bits."""
        cols = nn.functional.unfold(bits, self.kernel_size, self.dilation, self.padding, self.stride)
        n, _, positions = cols.shape
        taps = cols.view(n, bits.shape[1], -1, positions).permute(0, 3, 2, 1)  # (N, L, taps, C)
        return channel_words(taps > 0).reshape(n * positions, -1)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, native={self.native}"
                + (", signs_in=True" if self.signs_in else "") + (", sign_output=True" if self.sign_output else ""))


EVALUATIONS = 1 << 22  # channels x dots that sign_bounds evaluates at once: its memory stays tens of MB


def sign_bounds(alpha: torch.Tensor, bias: torch.Tensor | None, relu: bool, scale: torch.Tensor | None,
                shift: torch.Tensor | None, real_bits: int) -> torch.Tensor | None:
    """Per output channel o of an XNOR conv, the lowest and highest dot at which the next
    layer's input bit is +1, (2, C_out) int64:

        bit_o(dot) = [a_o * relu(alpha_o * dot + bias_o) + b_o >= 0]

    (relu where `relu`; a, b = `scale`, `shift`, or 1 and 0), each product and sum rounded in
    alpha's dtype as the kernels and PyTorch round them. Rounding is monotone, so bit_o is
    monotone in dot and its ones are one interval [low_o, high_o] (low_o > high_o: none),
    found exactly by evaluating bit_o on every dot in [-n, n], n = `real_bits`, a group of
    channels at a time (`EVALUATIONS`). None where a channel's ones are no interval (a NaN, or
    an infinity times 0, breaks the monotony)."""
    dots = torch.arange(-real_bits, real_bits + 1, dtype=alpha.dtype)
    step = max(1, EVALUATIONS // dots.numel())
    intervals = []
    for first in range(0, alpha.numel(), step):
        rows = slice(first, first + step)
        terms = [None if t is None else t[rows, None] for t in (alpha, bias, scale, shift)]
        intervals.append(_run_of_ones(_next_input_bits(dots, relu, *terms)))
    if any(interval is None for interval in intervals):
        return None
    return torch.cat(intervals, 1) - real_bits


def _next_input_bits(dots: torch.Tensor, relu: bool, alpha: torch.Tensor, bias: torch.Tensor | None,
                     scale: torch.Tensor | None, shift: torch.Tensor | None) -> torch.Tensor:
    """[a * relu(alpha * dot + bias) + b >= 0], (channels, dots): the terms are columns of one value a channel."""
    y = alpha * dots
    if bias is not None:
        y = y + bias
    if relu:
        y = torch.relu(y)
    if scale is not None:
        y = y * scale + shift
    return y >= 0


def _run_of_ones(ones: torch.Tensor) -> torch.Tensor | None:
    """Each row's first and last column holding a one, (2, rows), where its ones are one run
    (none: last = first - 1); None where a row's are not."""
    first = ones.to(torch.uint8).argmax(1)  # 0 where there are no ones
    last = first + ones.sum(1) - 1
    position = torch.arange(ones.shape[1])
    if not torch.equal(ones, (position >= first[:, None]) & (position <= last[:, None])):
        return None
    return torch.stack([first, last])


class SignMaxPool2d(nn.Module):
    """max_pool2d between two linked XNOR convs, on the packed bits of sign(a * x + b) (a and b
    the next conv's input map; `fusion.fuse_sign_chains` puts it in place of an nn.MaxPool2d of
    dilation 1). a * x + b rises with x where a >= 0 and falls where a < 0, and rounding keeps
    both monotone, so

        sign(a * max_window(x) + b) = OR_window sign(a * x + b)    (a >= 0)
                                    = AND_window sign(a * x + b)   (a < 0)

    bit for bit, for windows without NaN (max_pool2d's NaN would make the bit 0). `falling`
    holds the a < 0 channels as channel words. Native kernels only."""

    def __init__(self, pool: nn.MaxPool2d, falling: torch.Tensor):
        super().__init__()
        self.kernel_size, self.stride, self.padding = _pair(pool.kernel_size), _pair(pool.stride), _pair(pool.padding)
        self.ceil_mode = pool.ceil_mode
        self.register_buffer("falling", channel_words(falling))

    def forward(self, signs: torch.Tensor) -> torch.Tensor:
        return torch.ops.xnortrain.sign_max_pool2d(signs, self.falling, self.kernel_size, self.stride, self.padding,
                                                   self.ceil_mode)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, ceil_mode={self.ceil_mode}"


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def register_input_map(layer: nn.Module) -> None:
    """`input_scale` and `input_bias` (a and b per input channel, None until a BatchNorm is
    folded in): the layer's input bits are then those of sign(a * x + b)."""
    layer.register_buffer("input_scale", None)
    layer.register_buffer("input_bias", None)


def input_map(layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(a, b) in x's dtype for the native kernels, or (None, None)."""
    scale = layer.input_scale
    if scale is None:
        return None, None
    return in_dtype_of(scale, x), in_dtype_of(layer.input_bias, x)


def in_dtype_of(t: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    """t in x's dtype: t itself where it already is (no call into torch, which a batch-1 pass
    makes a few times per layer), None for None."""
    return t if t is None or t.dtype == x.dtype else t.to(x.dtype)


def mapped(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """a * x + b per input channel (dimension 1), multiplied then added as the kernels do; x without a map."""
    scale, bias = input_map(layer, x)
    if scale is None:
        return x
    return x * per_channel(scale, x) + per_channel(bias, x)


def conv_output_size(sizes, kernel_size, stride, padding, dilation) -> list[int]:
    """(H_out, W_out) of a conv of an input of `sizes` (H, W)."""
    return [(sizes[i] + 2 * padding[i] - dilation[i] * (kernel_size[i] - 1) - 1) // stride[i] + 1 for i in range(2)]


def pooled_size(size: int, kernel: int, stride: int, padding: int, ceil_mode: bool) -> int:
    """Output size of max pooling (dilation 1) along one axis, as PyTorch computes it."""
    out = (size + 2 * padding - kernel + (stride - 1 if ceil_mode else 0)) // stride + 1
    return out - 1 if ceil_mode and (out - 1) * stride >= size + padding else out


def words_for(channels: int) -> int:
    """Channel words of `channels` channels, 64 a word."""
    return -(-channels // 64)


LANES = 8  # filters interleaved a word apart in the kernels' layout


def tap_bits(weight_signs: torch.Tensor) -> torch.Tensor:
    """(KH, KW, C_out) int32: each filter's +1 weights (set bits) at each tap, from
    `weight_signs` (C_out, C_in / groups, KH, KW) bool. A patch tap in the zero padding is a zero
    word, which differs from each of the filter's set bits there; the native kernels take these
    counts back out of such patches' popcounts. The counts depend on the weights alone, so a
    layer makes them once; each call builds only the border terms of its input's size."""
    return weight_signs.sum(1, dtype=torch.int32).permute(1, 2, 0).contiguous()


def kernel_layout(words: torch.Tensor, groups: int) -> torch.Tensor:
    """Packed weights (C_out, KH, KW, words) in the native kernels' layout: each group's
    filters interleaved eight at a time, (groups, blocks, KH, KW, words, 8), zero filters
    filling the last block, so that one load gives eight filters' words of one position."""
    c_out, kh, kw, n_words = words.shape
    per_group = c_out // groups
    blocks = -(-per_group // LANES)
    padded = words.new_zeros(groups, blocks * LANES, kh, kw, n_words)
    padded[:, :per_group] = words.view(groups, per_group, kh, kw, n_words)
    return padded.view(groups, blocks, LANES, kh, kw, n_words).permute(0, 1, 3, 4, 5, 2).contiguous()
