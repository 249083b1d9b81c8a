"""BatchNorm folded into the XNOR-popcount layer before it, for inference.

In eval mode a BatchNorm is an affine map per channel,

    BN(y)_o = a_o * y_o + b_o,   a_o = gamma_o / sqrt(var_o + eps),   b_o = beta_o - mean_o * a_o,

and an XNOR-popcount layer ends with the epilogue y_o = alpha_o * dot_o + bias_o, so a
BatchNorm that reads nothing but that layer's output folds into it:

    BN(y)_o = (a_o * alpha_o) * dot_o + (a_o * bias_o + b_o).

The layer takes the new alpha and bias and the BatchNorm becomes an identity: one pass over
the activations less, with the same values up to float rounding. The pairs are found on the
model's graph (`torch.fx.symbolic_trace`, the XNOR-popcount layers kept as leaves): a
BatchNorm whose only input is such a layer's output, which nothing else reads. A model that
fx cannot trace keeps its BatchNorms.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import fx, nn

from .xnor_layers import XnorConv2d, XnorLinear

XNOR_LAYERS = (XnorConv2d, XnorLinear)
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


class _XnorLeaves(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, XNOR_LAYERS) or super().is_leaf_module(m, qualname)


def batchnorms_after_xnor_layers(model: nn.Module) -> list[tuple[str, str]]:
    """(XNOR-popcount layer, BatchNorm) names where the BatchNorm reads only the layer's
    output, which nothing else reads, each module called once; [] where fx cannot trace."""
    try:
        graph = _XnorLeaves().trace(model)
    except Exception:  # whatever stops fx, the model keeps its BatchNorms
        return []
    calls = [node for node in graph.nodes if node.op == "call_module"]
    once = {name for name in (n.target for n in calls) if sum(n.target == name for n in calls) == 1}
    modules = dict(model.named_modules())
    pairs = []
    for node in calls:
        if node.target in once and isinstance(modules[node.target], BATCHNORMS) and len(node.args) == 1 \
                and not node.kwargs:
            source = node.args[0]
            if isinstance(source, fx.Node) and source.op == "call_module" and source.target in once \
                    and isinstance(modules[source.target], XNOR_LAYERS) and len(source.users) == 1:
                pairs.append((source.target, node.target))
    return pairs


@torch.no_grad()
def fold_batchnorms(model: nn.Module, rescaled: Collection[str] = ()) -> list[str]:
    """Fold each BatchNorm (eval mode, with running statistics) that reads only an
    XNOR-popcount layer's output into that layer, and put an identity in its place; returns
    the folded BatchNorms' names. The layers named in `rescaled` (whose output a hook scales
    by XNOR-Net's K after the epilogue) keep theirs."""
    folded = []
    for layer_name, norm_name in batchnorms_after_xnor_layers(model):
        layer, norm = model.get_submodule(layer_name), model.get_submodule(norm_name)
        if layer_name in rescaled or norm.training or norm.running_var is None:
            continue
        scale, shift = affine_of(norm)
        bias = layer.bias if layer.bias is not None else torch.zeros_like(layer.alpha)
        layer.alpha = (scale * layer.alpha.double()).float()
        layer.bias = (scale * bias.double() + shift).to(bias.dtype)
        parent, _, child = norm_name.rpartition(".")
        setattr(model.get_submodule(parent), child, nn.Identity())
        folded.append(norm_name)
    return folded


def affine_of(norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) of a BatchNorm in eval mode, in float64: a = gamma / sqrt(var + eps), b = beta - mean * a."""
    scale = 1.0 / torch.sqrt(norm.running_var.double() + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight.double()
    shift = -norm.running_mean.double() * scale
    if norm.bias is not None:
        shift = shift + norm.bias.double()
    return scale, shift
