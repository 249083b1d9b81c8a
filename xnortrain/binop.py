"""BinOp: the XNOR-Net training procedure attached to any nn.Module.

Rastegari et al., "XNOR-Net" (ECCV 2016); the procedure per training step is

    1-2. project the real weights: mean-centre across C_in, clamp to [-1, 1]
    3.   keep the real weights W (the optimizer owns them)
    4.   binarize: W~ = alpha * sign(W), alpha per output filter
    5.   forward and backward with W~
    6.   restore W
    7.   rescale the gradient that reaches W (grad mode xnor | exact | ste)
    8.   optimizer.step() on the real weights

Steps 3-7 are a `torch.nn.utils.parametrize` parametrization whose autograd Function
is step 4 forward and step 7 backward (`quantizers.py`): the parameter always is the real
weight and layers see W~ only inside their forward, so no exception, evaluation or
checkpoint can find binarized weights in the model. Steps 1-2 (`projection.py`) run
once at attach time and after every optimizer step, which is equivalent to running
them before each forward.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.utils import parametrize

from .quantizers import BinarizeWeight, binarize, check_grad_mode, grad_scale
from .projection import project_
from .selection import select_targets

_ORIGINAL = "parametrizations.weight.original"


class Binarized(nn.Module):
    """The parametrization weight -> alpha * sign(weight) with gradient rule `grad`."""

    def __init__(self, grad: str, scale: float):
        super().__init__()
        self.grad, self.scale = grad, scale

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return BinarizeWeight.apply(w, self.grad, self.scale)

    def extra_repr(self) -> str:
        return f"grad={self.grad!r}"


class BinOp:
    """Binarize the conv/linear weights of `model` the XNOR-Net way.

    Args:
        model: any nn.Module; BinOp changes it in place and stays attached until
            :meth:`detach`.
        include, exclude: glob patterns over fully qualified module names.
        skip_first_last: keep the first and last conv/linear layer (registration order)
            in full precision, as the paper does.
        grad: gradient rule, ``"xnor"`` (default), ``"exact"`` or ``"ste"``.
        optimizer: if given, :meth:`project_` runs after each of its steps.

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
        optimizer: torch.optim.Optimizer | None = None,
    ):
        self.grad = check_grad_mode(grad)
        self.model = model
        self.targets: dict[str, nn.Module] = select_targets(model, include, exclude, skip_first_last)
        for name, layer in self.targets.items():
            if parametrize.is_parametrized(layer, "weight"):
                raise ValueError(f"layer {name!r} already has a weight parametrization (is BinOp attached twice?)")
        self._handles = []
        for layer in self.targets.values():
            self._attach(layer)
        self.project_()
        if optimizer is not None:
            self.project_after(optimizer)

    def _attach(self, layer: nn.Module) -> None:
        scale = grad_scale(self.grad, layer.weight.shape)
        parametrize.register_parametrization(layer, "weight", Binarized(self.grad, scale), unsafe=True)
        self._handles.append(layer.register_state_dict_post_hook(_plain_weight_key))
        self._handles.append(layer.register_load_state_dict_pre_hook(_parametrized_weight_key))

    def project_after(self, optimizer: torch.optim.Optimizer) -> BinOp:
        """Run :meth:`project_` after every ``optimizer.step()`` (a step post-hook)."""
        self._handles.append(optimizer.register_step_post_hook(lambda *_: self.project_()))
        return self

    @property
    def weights(self) -> dict[str, nn.Parameter]:
        """The real weights of the targets (the parameters the optimizer updates)."""
        return {name: layer.parametrizations.weight.original for name, layer in self.targets.items()}

    def project_(self) -> None:
        """Steps 1-2 in place: mean-centre each filter across C_in (where C_in > 1), clamp to [-1, 1]."""
        for w in self.weights.values():
            project_(w)

    def binarized(self) -> dict[str, torch.Tensor]:
        """W~ of every target, computed from the current real weights (a copy)."""
        with torch.no_grad():
            return {name: binarize(w) for name, w in self.weights.items()}

    def detach(self, bake: bool = False) -> nn.Module:
        """Take BinOp off: plain layers holding the real weights, or W~ with ``bake=True``."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for layer in self.targets.values():
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=bake)
        self.targets = {}
        return self.model

    def __repr__(self) -> str:
        total = sum(w.numel() for w in self.weights.values())
        lines = [f"BinOp(grad={self.grad!r}, {len(self.targets)} layers, {total:,} binarized weights)"]
        width = max((len(n) for n in self.targets), default=0)
        for (name, layer), w in zip(self.targets.items(), self.weights.values()):
            kind = parametrize.type_before_parametrizations(layer).__name__
            lines.append(f"  {name:<{width}}  {kind:<6}  {str(tuple(w.shape)):<18} {w.numel():>12,}")
        return "\n".join(lines)


def _plain_weight_key(module, state_dict, prefix, local_metadata) -> None:
    """state_dict hook: store the real weight under the plain model's key `<prefix>weight`."""
    state_dict[prefix + "weight"] = state_dict.pop(prefix + _ORIGINAL)


def _parametrized_weight_key(module, state_dict, prefix, *args) -> None:
    """load_state_dict pre-hook: route `<prefix>weight` to the real weight of the parametrization."""
    if prefix + "weight" in state_dict:
        state_dict[prefix + _ORIGINAL] = state_dict.pop(prefix + "weight")
