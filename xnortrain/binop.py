"""BinOp: the XNOR-Net training procedure attached to any nn.Module.

Rastegari et al., "XNOR-Net" (ECCV 2016); the procedure per training step is

    1-2. project the real weights: mean-centre across C_in, clamp to [-1, 1]
    3.   keep the real weights W (the optimizer owns them)
    4.   binarize: W~ = alpha * sign(W), alpha per output filter
    5.   forward and backward with W~
    6.   restore W
    7.   rescale the gradient that reaches W (grad mode xnor | exact | ste)
    8.   optimizer.step() on the real weights

Steps 3-7 are a `torch.nn.utils.parametrize` parametrization (`Quantized`) whose autograd
Function is step 4 forward and step 7 backward (`quantizers.py`): the parameter always is
the real weight and layers see W~ only inside their forward, so no exception, evaluation or
checkpoint can find binarized weights in the model. Steps 1-2 (the quantizer's `project_`)
run once at attach time and after every optimizer step, which is equivalent to running
them before each forward.

With `activations`, the selected layers' inputs are binary too (XNOR-Net, as opposed to a
binary-weight network): an input quantizer (`activations.py`) replaces each layer's input
x by sign(x) in a forward pre-hook, with its gradient rule for x.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial

import torch
from torch import nn
from torch.nn.utils import parametrize

from .activations import BinaryInputs, InputQuantizer, assign_input_quantizers
from .quantizers import Quantizer, assign_quantizers, check_grad_mode
from .selection import as_patterns, select_targets


class Quantized(nn.Module):
    """The parametrization W -> W~ of one target, by its quantizer (default: XNOR's alpha * sign(W))."""

    def __init__(self, quantizer: Quantizer):
        super().__init__()
        self.quantizer = quantizer

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.quantizer.quantize(w)

    def extra_repr(self) -> str:
        return repr(self.quantizer)


class BinOp:
    """Binarize the conv/linear weights of `model` the XNOR-Net way.

    Args:
        model: any nn.Module; BinOp changes it in place and stays attached until
            :meth:`detach`.
        include, exclude: glob patterns (any iterable, or one string) over fully qualified
            module names.
        skip_first_last: keep the first and last conv/linear layer in full precision, as
            the paper does: the first and last that a forward pass of `example_input` runs,
            or the first and last registered without one.
        grad: gradient rule of the ``xnor`` quantizer, ``"xnor"`` (default), ``"exact"``
            or ``"ste"``.
        quantizer: ``"xnor"`` (default), another quantizer of `quantizers.QUANTIZERS`
            by name or as a mapping with its options (``{"name": "codebook", "values": [1, -1]}``),
            or a list of rules ``{"match": glob, "quantizer": name, **options}`` over the
            target names, first match wins.
        params: fully qualified names of further parameters to quantize (a learnable
            vector, a 0/1 matrix): any shape, with a quantizer that needs no filters.
            With `params`, an empty layer selection (``include=[]``) is allowed.
        activations: the input quantizer of the selected layers: None (default: inputs stay
            real, a binary-weight network), ``"sign"`` (= ``"ste_sign"``, XNOR-Net's),
            ``"approx_sign"`` (Bi-Real Net's gradient), a mapping with options
            (``{"name": "sign", "scale": "K"}``), or a list of rules
            ``{"match": glob, "activation": name, **options}`` over the target names, first
            match wins (``activation: none`` keeps an input real). On the first training
            forward pass BinOp warns, naming them, of layers whose binary input was
            non-negative everywhere (sign(x) = +1: a constant).
        optimizer: if given, :meth:`project_` runs after each of its steps.
        example_input: a batch the model takes (one sample is enough), for
            `skip_first_last` by execution order; the pass runs in eval mode without
            gradients and changes nothing in the model.

    The model's ``state_dict()`` keeps the plain model's keys and holds the real
    weights, so checkpoints load into the model with or without BinOp attached.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        include: Iterable[str] | None = None,
        exclude: Iterable[str] | None = None,
        skip_first_last: bool = True,
        grad: str = "xnor",
        quantizer="xnor",
        params: Iterable[str] = (),
        activations=None,
        optimizer: torch.optim.Optimizer | None = None,
        example_input: torch.Tensor | None = None,
    ):
        self.grad = check_grad_mode(grad)
        self.model = model
        self.params: dict[str, nn.Module] = _owners(model, params)
        include, exclude = as_patterns("include", include), as_patterns("exclude", exclude)
        self.targets: dict[str, nn.Module] = (
            {} if self.params and include == []
            else select_targets(model, include, exclude, skip_first_last, example_input))
        self._slots = {**{n: (m, "weight") for n, m in self.targets.items()},
                       **{n: (self.params[n], n.rpartition(".")[2]) for n in self.params}}
        self.quantizers: dict[str, Quantizer] = assign_quantizers(list(self._slots), quantizer, self.grad)
        for name, (module, attr) in self._slots.items():
            _check_attachable(name, module, attr, self.quantizers[name])
        self.activations: dict[str, InputQuantizer] = assign_input_quantizers(list(self.targets), activations)
        self._handles = []
        for name, (module, attr) in self._slots.items():
            self._attach(module, attr, self.quantizers[name])
        self._inputs = BinaryInputs(model, self.targets, self.activations, watch=True)
        self.project_()
        if optimizer is not None:
            self.project_after(optimizer)

    def _attach(self, module: nn.Module, attr: str, quantizer: Quantizer) -> None:
        parametrize.register_parametrization(module, attr, Quantized(quantizer), unsafe=True)
        self._handles.append(module.register_state_dict_post_hook(partial(_plain_key, attr)))
        self._handles.append(module.register_load_state_dict_pre_hook(partial(_parametrized_key, attr)))

    def project_after(self, optimizer: torch.optim.Optimizer) -> BinOp:
        """Run :meth:`project_` after every ``optimizer.step()`` (a step post-hook)."""
        self._handles.append(optimizer.register_step_post_hook(lambda *_: self.project_()))
        return self

    @property
    def weights(self) -> dict[str, nn.Parameter]:
        """The real weights of the targets and params (the parameters the optimizer updates)."""
        return {name: getattr(module.parametrizations, attr).original for name, (module, attr) in self._slots.items()}

    @torch.no_grad()
    def project_(self) -> None:
        """Steps 1-2 in place, each target by its quantizer's projection (xnor: mean-centre each
        filter across C_in where C_in > 1, clamp to [-1, 1])."""
        for name, w in self.weights.items():
            self.quantizers[name].project_(w)

    @torch.no_grad()
    def binarized(self) -> dict[str, torch.Tensor]:
        """W~ of every target, computed from the current real weights (a copy; a fresh draw
        for stochastic quantizers)."""
        return {name: self.quantizers[name].quantize(w) for name, w in self.weights.items()}

    def detach(self, bake: bool = False) -> nn.Module:
        """Take BinOp off: plain layers holding the real weights, or W~ with ``bake=True``."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._inputs.remove()
        for module, attr in self._slots.values():
            parametrize.remove_parametrizations(module, attr, leave_parametrized=bake)
        self.targets, self.params, self._slots, self.activations = {}, {}, {}, {}
        return self.model

    def __repr__(self) -> str:
        weights = self.weights
        total = sum(w.numel() for w in weights.values())
        lines = [(f"BinOp(grad={self.grad!r}, {len(self.targets)} layers, {len(self.params)} params, "
                  f"{total:,} binarized weights, {len(self.activations)} binary inputs)")]
        width = max((len(n) for n in weights), default=0)
        for name, w in weights.items():
            module = self._slots[name][0]
            kind = parametrize.type_before_parametrizations(module).__name__ if name in self.targets else "param"
            inputs = f"  inputs: {self.activations[name]!r}" if name in self.activations else ""
            lines.append(f"  {name:<{width}}  {kind:<6}  {tuple(w.shape)!s:<18} {w.numel():>12,}  "
                         f"{self.quantizers[name]!r}{inputs}")
        return "\n".join(lines)


def _owners(model: nn.Module, names: Iterable[str]) -> dict[str, nn.Module]:
    """The module that owns each named parameter; the error lists the model's parameters."""
    if isinstance(names, str):
        names = [names]
    available = dict(model.named_parameters())
    owners = {}
    for name in names:
        if name not in available:
            listing = ", ".join(list(available)[:20]) + (", ..." if len(available) > 20 else "")
            raise ValueError(f"BinOp params: {type(model).__name__} has no parameter {name!r}; parameters: {listing}")
        owner_name, _, _ = name.rpartition(".")
        owners[name] = model.get_submodule(owner_name)
    return owners


def _check_attachable(name: str, module: nn.Module, attr: str, quantizer: Quantizer) -> None:
    if parametrize.is_parametrized(module, attr):
        raise ValueError(f"{name!r} already has a parametrization of {attr!r} (is BinOp attached twice, "
                         f"or is a layer's weight also listed in params?)")
    if quantizer.needs_filters and getattr(module, attr).dim() < 2:
        raise ValueError(f"{name!r} has shape {tuple(getattr(module, attr).shape)}: quantizer {quantizer!r} "
                         f"needs filters (2 or more dims); use scale 'layer' or 'none', or another quantizer")


def _plain_key(attr: str, module, state_dict, prefix, local_metadata) -> None:
    """state_dict hook: store the real weight under the plain model's key `<prefix><attr>`."""
    state_dict[prefix + attr] = state_dict.pop(f"{prefix}parametrizations.{attr}.original")


def _parametrized_key(attr: str, module, state_dict, prefix, *args) -> None:
    """load_state_dict pre-hook: route `<prefix><attr>` to the real weight of the parametrization."""
    if prefix + attr in state_dict:
        state_dict[f"{prefix}parametrizations.{attr}.original"] = state_dict.pop(prefix + attr)
