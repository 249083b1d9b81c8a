"""Every weight quantizer BinOp can apply: its value, gradient rule, projection and bit width.

A quantizer maps the real weight W, which the optimizer owns, to the value W~ that the
layer sees in its forward pass. It declares the gradient that reaches W (one
`torch.autograd.Function` per rule, the formula in its docstring), the projection applied
to W after each optimizer step, and, for export and summary, the bits a weight takes and
its packed form alpha * signs. `QUANTIZERS` maps names to classes; adding a quantizer is a
new `Quantizer` subclass here, decorated with `@registered`.

=============  ==========================================  ========================  ====================  ====
name           W~                                          gradient dL/dW            projection            bits
=============  ==========================================  ========================  ====================  ====
xnor           alpha * sign(W); alpha = mean |W| per       grad mode xnor|exact|ste  centre across C_in,   1
               filter (scale filter), over the tensor      (layer: exact|ste;        clamp to [-1, 1]
               (layer), 1 (none)                           none: clipped STE)        (layer, none: clamp)
sign           sign(W)                                     G * 1{|W| <= 1}           clamp to [-1, 1]      1
binary01       1{W >= threshold}                           G * 1{0 <= W <= 1}        clamp to [0, 1]       1
binaryconnect  sign(W); stochastic: +1 with probability    G                         clamp to [-1, 1]      1
               hard_sigmoid(W) = clip((W + 1) / 2, 0, 1)
codebook       nearest entry of `values` (ties: the        G                         clamp to [min, max]   32
               larger); scale filter: alpha * nearest(W /                            (scale none only)
               alpha)
none           W: real weights (with binary inputs, the    G                         none                  32
               first stage of two-stage training)
=============  ==========================================  ========================  ====================  ====

sign(0) = +1 throughout, also for -0.0. Sources: Rastegari et al., "XNOR-Net: ImageNet
Classification Using Binary Convolutional Neural Networks" (ECCV 2016), section 3.1, for
xnor; Courbariaux et al., "BinaryConnect" (NeurIPS 2015) for binaryconnect, whose gradient
passes straight through while the real weights are clipped; the clipped straight-through
estimator of Hubara et al., "Binarized Neural Networks" (NeurIPS 2016) for sign and binary01.

The xnor quantizer with scale filter is the XNOR-Net procedure. A weight W has shape
(C_out, C_in, *kernel) (Linear: (C_out, C_in)); filter o is W[o], with n = C_in * prod(kernel)
entries, seen as row o of the filter-major view W.flatten(1), shape (C_out, n).

    projection (steps 1-2):  W[o, :, k] -= mean_c W[o, c, k]   (skipped where C_in == 1)
                             W = clip(W, -1, 1)
    value (step 4):          alpha_o = ||W[o]||_1 / n,  W~[o] = alpha_o * sign(W[o])
    gradient (step 7), G = dL/dW~, inside_i = 1{|W_i| <= 1}:
        exact: g_i = alpha_o * inside_i * G_i + sign(W_i) * (1/n) * sum_{j in o} sign(W_j) * G_j
        xnor:  g_i = n * (1 - 1/C_in) * exact_i      (factor n where C_in == 1)
        ste:   g_i = inside_i * G_i

`exact` is the true derivative of alpha(W) * sign(W) with a clipped straight-through sign;
`xnor` is the scaling of the widely used PyTorch port of XNOR-Net.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from .errors import UserError
from .rules import assign_by_rules, check_choice, check_type, from_mapping

GRAD_MODES = ("xnor", "exact", "ste")


def check_grad_mode(grad: str) -> str:
    if grad not in GRAD_MODES:
        raise ValueError(f"unknown grad mode {grad!r}: choose one of {', '.join(GRAD_MODES)}")
    return grad


# --- the maths ------------------------------------------------------------------------------


def sign_pm1(w: torch.Tensor) -> torch.Tensor:
    """sign(W) in {-1, +1} with sign(0) = sign(-0.0) = +1 (and NaN -> +1), in W's dtype.

    Two spellings of the same values, each the faster one where it runs. Eager:
    sign(sign(W) + 1/2), where sign(W) is -1, 0 or +1 and adding 1/2 moves the zeros to the +
    side; float arithmetic, since a bool tensor costs about four times as much on CPU. Under
    torch.compile: 1 - 2 * 1{W < 0}, one compare that inductor fuses into the consumer's loop
    and that the backward pass recomputes from W instead of keeping a copy of sign(W)."""
    if torch.compiler.is_compiling():
        return 1 - 2 * (w < 0).to(w.dtype)
    return torch.sign(w).add_(0.5).sign_()


def filter_alpha(w2: torch.Tensor) -> torch.Tensor:
    """alpha_o = ||W[o]||_1 / n of the filter-major view W (C_out, n)."""
    return w2.abs().mean(1, keepdim=True)  # (C_out, 1)


def binarize(w: torch.Tensor) -> torch.Tensor:
    """W~ = alpha * sign(W) per output filter W[o], sign(0) = +1 (autograd differentiates it as
    written; `binarize_weight` attaches a gradient rule)."""
    w2 = w.flatten(1)  # (C_out, n)
    return (filter_alpha(w2) * sign_pm1(w2)).view_as(w)


def exact_gradient(w: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """exact_i = alpha_o * inside_i * G_i + sign(W_i) * (1/n) * sum_{j in o} sign(W_j) * G_j,
    with inside_i = 1{|W_i| <= 1}, for W (C_out, ...) and G = dL/dW~ of its shape."""
    w2, g2 = w.flatten(1), grad_out.reshape(w.shape[0], -1)  # (C_out, n)
    signs = sign_pm1(w2)  # (C_out, n)
    mean_sign_g = (signs * g2).mean(1, keepdim=True)  # (C_out, 1)
    inside_g = w2.abs().le_(1).mul_(g2)  # (C_out, n); le_ writes 1.0 or 0.0, no bool tensor
    return inside_g.mul_(filter_alpha(w2)).addcmul_(signs, mean_sign_g).view_as(w)


def xnor_factor(shape: torch.Size) -> float:
    """n * (1 - 1/C_in) for filters of `shape` (C_out, C_in, *kernel); n where C_in == 1."""
    c_in, n = shape[1], shape[1:].numel()
    return float(n) if c_in == 1 else n * (1.0 - 1.0 / c_in)


def centre_and_clamp_(w: torch.Tensor) -> None:
    """Steps 1-2 in place: W[o, :, k] -= mean_c W[o, c, k] where C_in > 1 (centring a single
    input channel would zero the filter), then W = clip(W, -1, 1)."""
    if w.shape[1] > 1:
        w.sub_(w.mean(1, keepdim=True))  # mean over C_in: (C_out, 1, *kernel)
    w.clamp_(-1.0, 1.0)


# --- the gradient rules -----------------------------------------------------------------------


class ExactRule(torch.autograd.Function):
    """W~ = alpha * sign(W) per filter, with the true derivative under a clipped
    straight-through sign:

        g_i = alpha_o * 1{|W_i| <= 1} * G_i + sign(W_i) * (1/n) * sum_{j in o} sign(W_j) * G_j

    It saves W and no copy of W~ (the layer keeps W~ for its own backward pass)."""

    @staticmethod
    def forward(ctx, w: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(w)
        return binarize(w)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> torch.Tensor:
        (w,) = ctx.saved_tensors
        return exact_gradient(w, grad_out)


class XnorRule(ExactRule):
    """W~ = alpha * sign(W) per filter (as `ExactRule`), with the gradient of the widely used
    PyTorch port of XNOR-Net, the exact rule scaled by the filter's size:

        g_i = n * (1 - 1/C_in) * exact_i        (n * exact_i where C_in == 1)"""

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> torch.Tensor:
        (w,) = ctx.saved_tensors
        return exact_gradient(w, grad_out).mul_(xnor_factor(w.shape))


class ClippedStraightThrough(torch.autograd.Function):
    """value(W), with the clipped straight-through estimator (the ste grad mode):

        g_i = G_i * 1{lo <= W_i <= hi}"""

    @staticmethod
    def forward(ctx, w: torch.Tensor, value: Callable[[torch.Tensor], torch.Tensor], lo: float,
                hi: float) -> torch.Tensor:
        ctx.save_for_backward(w)
        ctx.lo, ctx.hi = lo, hi
        return value(w)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (w,) = ctx.saved_tensors
        return torch.where((w >= ctx.lo) & (w <= ctx.hi), grad_out, 0), None, None, None


class StraightThrough(torch.autograd.Function):
    """value(W), with the gradient passed straight through: g_i = G_i."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, value: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        return value(w)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        return grad_out, None


def binarize_weight(w: torch.Tensor, grad: str = "xnor") -> torch.Tensor:
    """Functional form: alpha * sign(w) per filter whose gradient follows `grad` (xnor | exact | ste)."""
    return Xnor(grad=grad).quantize(w)


# --- the quantizers -------------------------------------------------------------------------


class Quantizer(ABC):
    """What BinOp, export and summary need of a quantizer. Subclasses are frozen dataclasses
    whose fields are their options (checked in ``__post_init__``)."""

    name: ClassVar[str]
    bits: ClassVar[int] = 1  # bits a weight takes once deployed (summary)

    @property
    def needs_filters(self) -> bool:
        """Whether W must have filters (2 or more dims): a per-filter scale."""
        return False

    @abstractmethod
    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        """W~, with this quantizer's gradient rule attached."""

    @abstractmethod
    def project_(self, w: torch.Tensor) -> None:
        """The projection of the real weights, in place, after each optimizer step."""

    def signs_and_alpha(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """W~ as (sign(W) in {-1, +1}, alpha) with W~ = alpha * sign(W), alpha one float per
        output filter or one for the tensor: the form export packs 1 bit per weight."""
        raise UserError(f"export packs 1-bit +-alpha weights (W~ = alpha * sign(W)); {self!r} has no such form")

    def scale_count(self, w: torch.Tensor) -> int:
        """The floats stored beside the bits of W (summary): one alpha."""
        return 1

    def with_default_grad(self, grad: str) -> Quantizer:
        """This quantizer with BinOp's grad mode where it has a grad option left unset."""
        return self


QUANTIZERS: dict[str, type[Quantizer]] = {}


def registered(cls: type[Quantizer]) -> type[Quantizer]:
    """Class decorator: make `cls` available by its name to BinOp and the config."""
    QUANTIZERS[cls.name] = cls
    return cls


@registered
@dataclass(frozen=True)
class Xnor(Quantizer):
    """alpha * sign(W) with the XNOR-Net gradient rule; `scale` filter | layer | none."""

    scale: str = "filter"
    grad: str | None = None  # None: BinOp's grad for scale filter, "exact" otherwise

    name = "xnor"

    def __post_init__(self):
        check_choice("quantizer xnor", "scale", self.scale, ("filter", "layer", "none"))
        if self.grad is not None:
            check_grad_mode(self.grad)
            if self.grad == "xnor" and self.scale != "filter":
                raise ValueError(f"quantizer xnor: grad 'xnor' (n * (1 - 1/C_in)) is defined per filter; "
                                 f"with scale {self.scale!r} use grad 'exact' or 'ste'")

    @property
    def needs_filters(self) -> bool:
        return self.scale == "filter"

    def with_default_grad(self, grad: str) -> Xnor:
        default = grad if self.scale == "filter" else "exact"
        return self if self.grad is not None else Xnor(self.scale, default)

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        if self.scale == "none":
            return ClippedStraightThrough.apply(w, sign_pm1, -1.0, 1.0)
        filters = w.reshape(1, -1) if self.scale == "layer" else w  # scale layer: one filter
        if self.grad == "ste":
            return ClippedStraightThrough.apply(filters, binarize, -1.0, 1.0).view_as(w)
        rule = XnorRule if self.grad == "xnor" else ExactRule
        return rule.apply(filters).view_as(w)

    def project_(self, w: torch.Tensor) -> None:
        if self.scale == "filter":
            centre_and_clamp_(w)
        else:
            w.clamp_(-1.0, 1.0)

    def signs_and_alpha(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.scale == "filter":
            alpha = filter_alpha(w.flatten(1)).flatten()  # (C_out,)
        else:
            alpha = w.abs().mean().reshape(1) if self.scale == "layer" else w.new_ones(1)
        return sign_pm1(w), alpha

    def scale_count(self, w: torch.Tensor) -> int:
        return w.shape[0] if self.scale == "filter" else 1


@registered
@dataclass(frozen=True)
class Sign(Quantizer):
    """sign(W), no scale; clipped straight-through gradient."""

    name = "sign"

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        return ClippedStraightThrough.apply(w, sign_pm1, -1.0, 1.0)

    def project_(self, w: torch.Tensor) -> None:
        w.clamp_(-1.0, 1.0)

    def signs_and_alpha(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return sign_pm1(w), w.new_ones(1)


@registered
@dataclass(frozen=True)
class Binary01(Quantizer):
    """1{W >= threshold} in {0, 1}; straight-through gradient clipped to [0, 1]."""

    threshold: float = 0.5

    name = "binary01"

    def __post_init__(self):
        check_type("quantizer binary01", "threshold", self.threshold, (int, float))

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        return ClippedStraightThrough.apply(w, self.binarize, 0.0, 1.0)

    def binarize(self, w: torch.Tensor) -> torch.Tensor:
        return (w >= self.threshold).to(w.dtype)

    def project_(self, w: torch.Tensor) -> None:
        w.clamp_(0.0, 1.0)


@registered
@dataclass(frozen=True)
class BinaryConnect(Quantizer):
    """BinaryConnect: sign(W), or with `stochastic` +1 with probability hard_sigmoid(W),
    drawn afresh each time the weight is used (once per batch); gradient straight through."""

    stochastic: bool = False

    name = "binaryconnect"

    def __post_init__(self):
        check_type("quantizer binaryconnect", "stochastic", self.stochastic, (bool,))

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        return StraightThrough.apply(w, self.sample if self.stochastic else sign_pm1)

    @staticmethod
    def sample(w: torch.Tensor) -> torch.Tensor:
        """+1 with probability hard_sigmoid(W) = clip((W + 1) / 2, 0, 1), else -1."""
        p_plus = ((w + 1) / 2).clamp_(0, 1)
        draw = torch.rand(w.shape, dtype=w.dtype, device=w.device)
        return torch.where(draw < p_plus, 1.0, -1.0).to(w.dtype)

    def project_(self, w: torch.Tensor) -> None:
        w.clamp_(-1.0, 1.0)

    def signs_and_alpha(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.stochastic:  # a fresh draw per use: no fixed signs to pack
            return super().signs_and_alpha(w)
        return sign_pm1(w), w.new_ones(1)


@registered
@dataclass(frozen=True)
class Codebook(Quantizer):
    """Each weight becomes the nearest entry of `values` (ties go to the larger entry);
    with scale filter, alpha * nearest(W / alpha), alpha = mean |W| per filter. Stored as
    floats (32 bits): export packs only +-alpha weights."""

    values: tuple[float, ...] = (1.0, -1.0)
    scale: str = "none"

    name = "codebook"
    bits = 32

    def __post_init__(self):
        check_choice("quantizer codebook", "scale", self.scale, ("none", "filter"))
        for v in self.values:
            check_type("quantizer codebook", "values", v, (int, float))
        values = tuple(sorted({float(v) for v in self.values}))
        if not values:
            raise ValueError("quantizer codebook: `values` is empty; give a list such as [1, -1, 0.5, -0.5]")
        object.__setattr__(self, "values", values)

    @property
    def needs_filters(self) -> bool:
        return self.scale == "filter"

    def nearest(self, w: torch.Tensor) -> torch.Tensor:
        table = torch.tensor(self.values, dtype=w.dtype, device=w.device)
        midpoints = (table[1:] + table[:-1]) / 2
        return table[torch.bucketize(w, midpoints, right=True)]

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        return StraightThrough.apply(w, self.scaled_nearest if self.scale == "filter" else self.nearest)

    def scaled_nearest(self, w: torch.Tensor) -> torch.Tensor:
        alpha = w.abs().flatten(1).mean(1).view(-1, *[1] * (w.dim() - 1))  # (C_out, 1, ...)
        return alpha * self.nearest(w / alpha.clamp_min(torch.finfo(w.dtype).tiny))

    def project_(self, w: torch.Tensor) -> None:
        if self.scale == "none":
            w.clamp_(self.values[0], self.values[-1])


@registered
@dataclass(frozen=True)
class Real(Quantizer):
    """The real weight itself, W~ = W: BinOp keeps the weight real (and may still binarize
    the layer's input), as the first stage of two-stage training does."""

    name = "none"
    bits = 32

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        return w

    def project_(self, w: torch.Tensor) -> None:
        pass


# --- choosing quantizers by name and by rule ------------------------------------------------------


def make_quantizer(spec, grad: str = "xnor") -> Quantizer:
    """A quantizer from a name (``"sign"``), a mapping (``{"name": "codebook", "values": [...]}``)
    or a quantizer object; `grad` is the default grad mode of `xnor`."""
    if isinstance(spec, str):
        spec = {"name": spec}
    if isinstance(spec, Mapping):
        spec = _from_mapping(spec)
    if not isinstance(spec, Quantizer):
        raise TypeError(f"quantizer: expected a name, a mapping or a quantizer, got {type(spec).__name__}")
    return spec.with_default_grad(grad)


def _from_mapping(spec: Mapping) -> Quantizer:
    if "values" in spec and not isinstance(spec["values"], (list, tuple)):
        raise ValueError(f"quantizer {spec.get('name')}: values must be a list such as [1, -1, 0.5, -0.5], "
                         f"got {spec['values']!r}")
    return from_mapping({**spec, **({"values": tuple(spec["values"])} if "values" in spec else {})}, QUANTIZERS,
                        "quantizer")


def assign_quantizers(names: Sequence[str], spec, grad: str) -> dict[str, Quantizer]:
    """The quantizer of each target name. `spec` is one quantizer for all, or a list of rules
    ``{"match": glob, "quantizer": name, **options}`` where the first matching rule wins."""
    return assign_by_rules(names, spec, lambda s: make_quantizer(s, grad), "quantizer")
