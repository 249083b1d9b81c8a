"""The weight quantizers BinOp can apply, each with its own forward, gradient and projection.

Every quantizer maps the real weight W (which the optimizer owns) to the value the layer
sees, W~, and declares the gradient that reaches W and the projection applied to W after
each optimizer step:

=============  ==============================================  =========================  ==================
name           W~                                              gradient dL/dW             projection
=============  ==============================================  =========================  ==================
xnor           alpha * sign(W); alpha = mean |W| per filter    grad mode xnor|exact|ste   centre, [-1, 1]
               (scale filter), over the tensor (layer), 1      (layer, none: exact|ste)   ([-1, 1] only for
               (none)                                                                     layer, none)
sign           sign(W)                                         G * 1{|W| <= 1}            [-1, 1]
binary01       1{W >= threshold}                               G * 1{0 <= W <= 1}         [0, 1]
binaryconnect  sign(W); stochastic: +1 with probability        G                          [-1, 1]
               hard_sigmoid(W) = clip((W + 1) / 2, 0, 1)
codebook       nearest value of `values` (ties: the larger);   G                          [min, max] of values
               scale filter: alpha * nearest(W / alpha)                                   (none with scale)
=============  ==============================================  =========================  ==================

sign(0) = +1 throughout. Sources: XNOR-Net (Rastegari et al. 2016) for xnor; BinaryConnect
(Courbariaux et al. 2015) for binaryconnect, whose gradient passes straight through while the
real weights are clipped; the clipped straight-through estimator of BinaryNet (Hubara et al.
2016) for sign and binary01.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from fnmatch import fnmatchcase

import torch

from . import fused
from .projection import centres
from .projection import project_ as centre_and_clamp_
from .quantizers import (
    Binarized,
    BinarizeWeight,
    binarize_filters,
    check_grad_mode,
    grad_scale,
    sign_pm1,
)


class StraightThrough(torch.autograd.Function):
    """Forward value(W); backward G * 1{lo <= W <= hi}, or G unchanged when `clip` is None."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, value: Callable[[torch.Tensor], torch.Tensor],
                clip: tuple[float, float] | None) -> torch.Tensor:
        ctx.clip = clip
        if clip is not None:
            ctx.save_for_backward(w)
        return value(w)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        if ctx.clip is None:
            return grad_out, None, None
        (w,) = ctx.saved_tensors
        lo, hi = ctx.clip
        return grad_out * ((w >= lo) & (w <= hi)), None, None


def straight_through(w: torch.Tensor, value: Callable[[torch.Tensor], torch.Tensor],
                     clip: tuple[float, float] | None) -> torch.Tensor:
    return StraightThrough.apply(w, value, clip)


@dataclass(frozen=True)
class Xnor:
    """alpha * sign(W) with the XNOR-Net gradient rule; `scale` filter | layer | none."""

    scale: str = "filter"
    grad: str | None = None  # None: BinOp's grad for scale filter, "exact" otherwise

    name = "xnor"
    needs_filters = property(lambda self: self.scale == "filter")

    def __post_init__(self):
        _check_choice("xnor", "scale", self.scale, ("filter", "layer", "none"))
        if self.grad is not None:
            check_grad_mode(self.grad)
            if self.grad == "xnor" and self.scale != "filter":
                raise ValueError(f"quantizer xnor: grad 'xnor' (n * (1 - 1/C_in)) is defined per filter; "
                                 f"with scale {self.scale!r} use grad 'exact' or 'ste'")

    def with_default_grad(self, grad: str) -> Xnor:
        default = grad if self.scale == "filter" else "exact"
        return self if self.grad is not None else Xnor(self.scale, default)

    def quantize(self, w: torch.Tensor, ahead: Binarized | None = None,
                 memory: fused.RecycledMemory | None = None) -> torch.Tensor:
        """W~ with the gradient rule; `ahead`: W~ of this very W from :meth:`project_and_binarize_`,
        `memory`: W's own memory for its gradients (see `BinarizeWeight`)."""
        if self.scale == "none":  # d sign(W)/dW with the clipped straight-through estimator
            return straight_through(w, sign_pm1, (-1.0, 1.0))
        if self.scale == "filter":
            return BinarizeWeight.apply(w, self.grad, grad_scale(self.grad, w.shape), ahead, memory)
        return BinarizeWeight.apply(self.filters(w), self.grad, 1.0, ahead, memory).view_as(w)

    def filters(self, w: torch.Tensor) -> torch.Tensor:
        """W with one filter per row of its first dimension: W itself, or for scale layer one
        filter holding the whole tensor."""
        return w.reshape(1, -1) if self.scale == "layer" else w

    def project_and_binarize_(self, w: torch.Tensor, memory: fused.RecycledMemory | None = None) -> Binarized | None:
        """:meth:`project_`, then W~ of the projected W (every |W_i| <= 1) for :meth:`quantize`
        to reuse; both in one fused pass where the kernels serve W, which write W~ into `memory`."""
        if self.scale == "none":
            self.project_(w)
            return None
        filters = self.filters(w)
        if fused.usable(w):
            centre = self.scale == "filter" and centres(w)
            return Binarized(*fused.project_binarize_(filters, centre, memory), clipped=False, fused=True)
        self.project_(w)
        return binarize_filters(filters, clipped=False)

    def project_(self, w: torch.Tensor) -> None:
        if self.scale == "filter":
            centre_and_clamp_(w)
        else:
            w.clamp_(-1.0, 1.0)


@dataclass(frozen=True)
class Sign:
    """sign(W), no scale; clipped straight-through gradient."""

    name = "sign"
    needs_filters = False

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        return straight_through(w, sign_pm1, (-1.0, 1.0))

    def project_(self, w: torch.Tensor) -> None:
        w.clamp_(-1.0, 1.0)


@dataclass(frozen=True)
class Binary01:
    """1{W >= threshold} in {0, 1}; straight-through gradient clipped to [0, 1]."""

    threshold: float = 0.5

    name = "binary01"
    needs_filters = False

    def __post_init__(self):
        _check_type("binary01", "threshold", self.threshold, (int, float))

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        return straight_through(w, self.binarize, (0.0, 1.0))

    def binarize(self, w: torch.Tensor) -> torch.Tensor:
        return (w >= self.threshold).to(w.dtype)

    def project_(self, w: torch.Tensor) -> None:
        w.clamp_(0.0, 1.0)


@dataclass(frozen=True)
class BinaryConnect:
    """BinaryConnect: sign(W), or with `stochastic` +1 with probability hard_sigmoid(W),
    drawn afresh each time the weight is used (once per batch); gradient straight through."""

    stochastic: bool = False

    name = "binaryconnect"
    needs_filters = False

    def __post_init__(self):
        _check_type("binaryconnect", "stochastic", self.stochastic, (bool,))

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        return straight_through(w, self.sample if self.stochastic else sign_pm1, None)

    @staticmethod
    def sample(w: torch.Tensor) -> torch.Tensor:
        """+1 with probability hard_sigmoid(W) = clip((W + 1) / 2, 0, 1), else -1."""
        p_plus = ((w + 1) / 2).clamp_(0, 1)
        draw = torch.rand(w.shape, dtype=w.dtype, device=w.device)
        return torch.where(draw < p_plus, 1.0, -1.0).to(w.dtype)

    def project_(self, w: torch.Tensor) -> None:
        w.clamp_(-1.0, 1.0)


@dataclass(frozen=True)
class Codebook:
    """Each weight becomes the nearest entry of `values` (ties go to the larger entry);
    with scale filter, alpha * nearest(W / alpha), alpha = mean |W| per filter."""

    values: tuple[float, ...] = (1.0, -1.0)
    scale: str = "none"

    name = "codebook"
    needs_filters = property(lambda self: self.scale == "filter")

    def __post_init__(self):
        _check_choice("codebook", "scale", self.scale, ("none", "filter"))
        for v in self.values:
            _check_type("codebook", "values", v, (int, float))
        values = tuple(sorted({float(v) for v in self.values}))
        if not values:
            raise ValueError("quantizer codebook: `values` is empty; give a list such as [1, -1, 0.5, -0.5]")
        object.__setattr__(self, "values", values)

    def nearest(self, w: torch.Tensor) -> torch.Tensor:
        table = torch.tensor(self.values, dtype=w.dtype, device=w.device)
        midpoints = (table[1:] + table[:-1]) / 2
        return table[torch.bucketize(w, midpoints, right=True)]

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        return straight_through(w, self.scaled_nearest if self.scale == "filter" else self.nearest, None)

    def scaled_nearest(self, w: torch.Tensor) -> torch.Tensor:
        alpha = w.abs().flatten(1).mean(1).view(-1, *[1] * (w.dim() - 1))
        return alpha * self.nearest(w / alpha.clamp_min(torch.finfo(w.dtype).tiny))

    def project_(self, w: torch.Tensor) -> None:
        if self.scale == "none":
            w.clamp_(self.values[0], self.values[-1])


QUANTIZERS = {q.name: q for q in (Xnor, Sign, Binary01, BinaryConnect, Codebook)}
Quantizer = Xnor | Sign | Binary01 | BinaryConnect | Codebook


def make_quantizer(spec, grad: str = "xnor") -> Quantizer:
    """A quantizer from a name (``"sign"``), a mapping (``{"name": "codebook", "values": [...]}``)
    or a quantizer object; `grad` is the default grad mode of `xnor`."""
    if isinstance(spec, str):
        spec = {"name": spec}
    if isinstance(spec, Mapping):
        options = dict(spec)
        name = options.pop("name", None)
        if name not in QUANTIZERS:
            raise ValueError(f"unknown quantizer {name!r}: choose one of {', '.join(QUANTIZERS)}")
        cls = QUANTIZERS[name]
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ValueError(f"quantizer {name}: unknown option(s) {', '.join(unknown)}; "
                             f"valid: {', '.join(valid) or 'none'}")
        if "values" in options:
            if not isinstance(options["values"], (list, tuple)):
                raise ValueError(f"quantizer {name}: values must be a list such as [1, -1, 0.5, -0.5], "
                                 f"got {options['values']!r}")
            options["values"] = tuple(options["values"])
        spec = cls(**options)
    if not isinstance(spec, (Xnor, Sign, Binary01, BinaryConnect, Codebook)):
        raise TypeError(f"quantizer: expected a name, a mapping or a quantizer, got {type(spec).__name__}")
    return spec.with_default_grad(grad) if isinstance(spec, Xnor) else spec


def assign_quantizers(names: Sequence[str], spec, grad: str) -> dict[str, Quantizer]:
    """The quantizer of each target name. `spec` is one quantizer for all, or a list of rules
    ``{"match": glob, "quantizer": name, **options}`` where the first matching rule wins."""
    if not isinstance(spec, Sequence) or isinstance(spec, str):
        quantizer = make_quantizer(spec, grad)
        return {name: quantizer for name in names}
    rules = [(_rule_pattern(rule), make_quantizer(_rule_spec(rule), grad)) for rule in spec]
    chosen, unmatched = {}, []
    for name in names:
        match = next((q for pattern, q in rules if fnmatchcase(name, pattern)), None)
        if match is None:
            unmatched.append(name)
        chosen[name] = match
    if unmatched:
        raise ValueError(f"quantizer rules match no rule for {', '.join(unmatched)}; "
                         f"add a last rule such as {{match: '*', quantizer: xnor}}")
    return chosen


def _rule_pattern(rule) -> str:
    if not isinstance(rule, Mapping) or not isinstance(rule.get("match"), str):
        raise ValueError(f"quantizer rule {rule!r}: needs `match: <glob>` and `quantizer: <name>`")
    return rule["match"]


def _rule_spec(rule: Mapping) -> dict:
    options = {k: v for k, v in rule.items() if k not in ("match", "quantizer")}
    if "quantizer" not in rule:
        raise ValueError(f"quantizer rule {dict(rule)!r}: needs `quantizer: <name>`")
    return {"name": rule["quantizer"], **options}


def _check_type(quantizer: str, option: str, value, types: tuple[type, ...]) -> None:
    wrong_bool = isinstance(value, bool) and bool not in types
    if wrong_bool or not isinstance(value, types):
        expected = "true or false" if types == (bool,) else "a number"
        raise ValueError(f"quantizer {quantizer}: {option} must be {expected}, got {value!r}")


def _check_choice(quantizer: str, option: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"quantizer {quantizer}: {option} {value!r} is not one of {', '.join(choices)}")

