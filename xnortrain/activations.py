"""Input quantizers: binary inputs for any layer, the XNOR half of XNOR-Net.

An input quantizer maps a layer's input x to what the layer sees, sign(x) in {-1, +1} with
sign(0) = +1, and declares the gradient that reaches x (one `torch.autograd.Function` per
rule). `INPUT_QUANTIZERS` maps names to classes; adding one is a new `InputQuantizer`
subclass here, decorated with `@registered`.

===========  =======  ==============================================================
name         forward  gradient dL/dx, G = dL/d sign(x)
===========  =======  ==============================================================
ste_sign     sign(x)  G * 1{|x| <= 1}: the clipped straight-through estimator
                      (XNOR-Net, Rastegari et al. 2016; Hubara et al. 2016)
approx_sign  sign(x)  G * (2 + 2x) on [-1, 0), G * (2 - 2x) on [0, 1), 0 elsewhere:
                      the derivative of Bi-Real Net's piecewise quadratic
                      approximation of sign (Liu et al., ECCV 2018)
===========  =======  ==============================================================

`sign` is another name of `ste_sign`; `rsign` is `approx_sign` with `shift: true`. Every
input quantizer takes

- `scale`: ``"none"`` (default), or XNOR-Net's activation scale (section 3.2), which
  multiplies the layer's output by K computed from x (`activation_scale`): ``"K"`` one
  factor per output position, ``"channel_mean"`` one per sample;
- `shift`: a learnable threshold beta_c per input channel, so that the layer sees
  sign(x - beta_c) (ReActNet's RSign, Liu et al. 2020); dL/dbeta_c = -sum of dL/dx over
  channel c. beta is a parameter of the layer, ``<layer>.input_shift``, starting at 0.

`BinaryInputs` attaches input quantizers to layers with public module hooks: a forward
pre-hook replaces the input by its quantized value (and computes K), a forward hook
multiplies the output by K. The layers and the model's state_dict stay as they were.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import torch
from torch import nn

from .layers import per_channel
from .quantizers import ClippedStraightThrough, sign_pm1
from .rules import assign_by_rules, check_choice, check_type, from_mapping

SCALES = ("none", "channel_mean", "K")
SHIFT = "input_shift"  # the name of the learnable threshold on a layer with `shift`


# --- the gradient rules -------------------------------------------------------------------


class ApproxSignGradient(torch.autograd.Function):
    """sign(x) with sign(0) = +1; gradient G * (2 - 2|x|) on (-1, 1), 0 elsewhere, which is
    2 + 2x on [-1, 0) and 2 - 2x on [0, 1): the derivative of Bi-Real Net's ApproxSign
    (x^2 + 2x on [-1, 0), 2x - x^2 on [0, 1), -1 below, +1 above)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return sign_pm1(x)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return (2 - 2 * x.abs()).clamp_(min=0).mul_(grad_out)  # 0 where |x| >= 1


def bin_active(x: torch.Tensor) -> torch.Tensor:
    """sign(x) with sign(0) = +1; gradient G * 1{|x| <= 1}: the clipped straight-through
    estimator, the rule of `ste_sign`."""
    return ClippedStraightThrough.apply(x, sign_pm1, -1.0, 1.0)


# --- the activation scale -------------------------------------------------------------------


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


# --- the input quantizers ---------------------------------------------------------------------


@dataclass(frozen=True)
class InputQuantizer(ABC):
    """What a layer's binary input is: its value and gradient (`quantize`), the scale of the
    layer's output (`scale`, one of SCALES) and whether a learnable threshold per channel is
    subtracted first (`shift`). Subclasses are frozen dataclasses whose fields are their options."""

    scale: str = "none"
    shift: bool = False

    name: ClassVar[str]

    def __post_init__(self):
        check_choice(f"input quantizer {self.name}", "scale", self.scale, SCALES)
        check_type(f"input quantizer {self.name}", "shift", self.shift, (bool,))

    @property
    def sign_alone(self) -> bool:
        """True when the layer's input is just sign(x): no scale and no shift (an XNOR-popcount
        layer, which takes the signs of its own input, then needs no hook)."""
        return self.scale == "none" and not self.shift

    @abstractmethod
    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """sign(x), with this quantizer's gradient rule attached."""


INPUT_QUANTIZERS: dict[str, type[InputQuantizer]] = {}


def registered(*names: str):
    """Class decorator: make the class available to BinOp and the config by each of `names`."""
    def register(cls: type[InputQuantizer]) -> type[InputQuantizer]:
        for name in names:
            INPUT_QUANTIZERS[name] = cls
        return cls
    return register


@registered("ste_sign", "sign")
@dataclass(frozen=True)
class SteSign(InputQuantizer):
    """sign(x); gradient G * 1{|x| <= 1} (XNOR-Net's binary activation)."""

    name = "ste_sign"

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return bin_active(x)


@registered("approx_sign")
@dataclass(frozen=True)
class ApproxSign(InputQuantizer):
    """sign(x); gradient G * (2 - 2|x|) on (-1, 1), 0 elsewhere (Bi-Real Net)."""

    name = "approx_sign"

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return ApproxSignGradient.apply(x)


@registered("rsign")
@dataclass(frozen=True)
class RSign(ApproxSign):
    """sign(x - beta_c) with a learnable beta per input channel (ReActNet's RSign); gradient of
    `approx_sign` for x - beta."""

    shift: bool = True

    name = "rsign"


def make_input_quantizer(spec) -> InputQuantizer | None:
    """An input quantizer from a name (``"ste_sign"``), a mapping (``{"name": "ste_sign",
    "scale": "K"}``) or an input quantizer; None or ``"none"``: the input stays real."""
    if spec is None or spec == "none" or (isinstance(spec, Mapping) and spec.get("name") == "none"):
        return None
    if isinstance(spec, str):
        spec = {"name": spec}
    if isinstance(spec, Mapping):
        spec = from_mapping(spec, INPUT_QUANTIZERS, "input quantizer")
    if not isinstance(spec, InputQuantizer):
        raise TypeError(f"activations: expected a name, a mapping or an input quantizer, got {type(spec).__name__}")
    return spec


def assign_input_quantizers(names: Sequence[str], spec) -> dict[str, InputQuantizer]:
    """The input quantizer of each name that gets one. `spec` is one for all (None: none), or a
    list of rules ``{"match": glob, "activation": name, **options}``, first match wins
    (``activation: none`` keeps those inputs real)."""
    chosen = assign_by_rules(names, spec, make_input_quantizer, "activation")
    return {name: q for name, q in chosen.items() if q is not None}


# --- attaching them to layers -------------------------------------------------------------------


class BinaryInputs:
    """Input quantizers attached to layers of `model` by forward hooks.

    The quantizer's pre-hook runs before the layer's own pre-hooks: it binarizes the input
    the layer is called with, and the layer's hooks (the zoo's input dropout) see sign(x).

    A quantizer with `shift` gets its threshold as a new parameter of the layer (`SHIFT`,
    zeros, one per input channel) unless the layer has one; `remove` takes off the hooks and
    the parameters it added. `watch`: on the first forward pass in training mode (eager),
    warn once, naming them, of the layers whose input was non-negative everywhere: sign(x) is
    then +1 everywhere and the layer sees a constant (a binary input straight after a ReLU)."""

    def __init__(self, model: nn.Module, layers: Mapping[str, nn.Module], quantizers: Mapping[str, InputQuantizer],
                 watch: bool = False):
        self.quantizers = dict(quantizers)
        self._scales: dict[str, torch.Tensor] = {}
        self._watching, self._constant = watch, []
        self.handles, self._added = [], []
        for name, q in self.quantizers.items():
            layer = layers[name]
            if q.shift and not hasattr(layer, SHIFT):
                layer.register_parameter(SHIFT, nn.Parameter(torch.zeros(_input_channels(layer), **_float_like(layer))))
                self._added.append(layer)
            self.handles.append(layer.register_forward_pre_hook(partial(self._quantize_input, name), prepend=True))
            if q.scale != "none":
                self.handles.append(layer.register_forward_hook(partial(self._scale_output, name)))
        if watch:
            self.handles.append(model.register_forward_hook(self._warn_of_constant_inputs))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        for layer in self._added:
            delattr(layer, SHIFT)
        self.handles, self._added = [], []

    def _quantize_input(self, name: str, layer: nn.Module, args: tuple):
        x, q = args[0], self.quantizers[name]
        if q.shift:
            x = x - per_channel(getattr(layer, SHIFT), x)  # beta_c over channel c
        if q.scale != "none":
            self._scales[name] = activation_scale(x, q.scale, layer)
        if self._watching and layer.training and not torch.compiler.is_compiling() and bool((x >= 0).all()):
            self._constant.append(name)
        return (q.quantize(x), *args[1:])

    def _scale_output(self, name: str, layer: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output * self._scales.pop(name)

    def _warn_of_constant_inputs(self, model: nn.Module, args: tuple, output) -> None:
        if not self._watching or not model.training or torch.compiler.is_compiling():
            return
        self._watching = False
        if self._constant:
            warnings.warn(f"binary inputs of {', '.join(self._constant)} are non-negative everywhere (after a ReLU?): "
                          f"sign(x) is +1 everywhere and these layers see a constant; put a BatchNorm before the "
                          f"sign, as XNOR-Net and Bi-Real Net order a block (docs/quantizers.md)", stacklevel=2)


def _input_channels(layer: nn.Module) -> int:
    return layer.in_channels if hasattr(layer, "in_channels") else layer.in_features


def _float_like(layer: nn.Module) -> dict:
    """The device and float dtype of the layer's own tensors."""
    ref = next(t for t in (*layer.parameters(), *layer.buffers()) if t.is_floating_point())
    return {"device": ref.device, "dtype": ref.dtype}
