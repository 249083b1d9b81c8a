"""BatchNorm folded into the XNOR-popcount layers next to it, and into the float convs before
it, for inference.

In eval mode a BatchNorm is an affine map per channel,

    BN(y)_c = a_c * y_c + b_c,   a_c = gamma_c / sqrt(var_c + eps),   b_c = beta_c - mean_c * a_c,

and folds into an XNOR-popcount layer on either side of it:

- after the layer, whose epilogue is y_o = alpha_o * dot_o + bias_o:
  BN(y)_o = (a_o * alpha_o) * dot_o + (a_o * bias_o + b_o), a new alpha and bias;
- before it, where the layer binarizes its input: sign(BN(x))_c = sign(a_c * x_c + b_c),
  which the layer computes while it packs the input bits (`xnor_layers.input_map`).

A BatchNorm after a float Conv2d (a stem, a real-valued downsampling conv) folds into its
weights, W'_o = a_o * W_o and bias'_o = a_o * bias_o + b_o (`torch.nn.utils.fusion`), as
onnxruntime and OpenVINO fold it.

Between two XNOR convs the float work folds away altogether: where a conv's output y reaches
the next XNOR conv through nothing but ReLUs and identities (folded BatchNorms), the next
layer reads only the bits sign(a * relu(y) + b), a and b its input map. The first conv then
packs those bits in its epilogue and the second takes them as they are (`fuse_sign_chains`):
no float output written and read back, no second packing, the same bits. A max pool between
them pools the packed bits (`xnor_layers.SignMaxPool2d`).

A residual sum that reads an XNOR conv's output, s = y + r (a Bi-Real or ResNet shortcut,
after the folded BatchNorm), goes into the conv's epilogue too: y_o = alpha_o * dot_o + bias_o,
then y_o + r_o, rounded in that order as PyTorch rounds them (`fuse_residual_sums`), with no
separate pass over the activations. The module whose forward holds the sum (a residual block)
becomes an `fx.GraphModule` of the same submodules that calls the conv with the residual.

The BatchNorm becomes an identity: one pass over the activations less, with the same values
up to float rounding (a and b are computed as PyTorch's BatchNorm computes them, in the
BatchNorm's dtype). The pairs are found on the model's graph (`torch.fx` symbolic tracing,
the XNOR-popcount layers and the package's RPReLU and LearnedScale kept whole): a BatchNorm
and a layer each called once, the one reading the other's output alone, which nothing else
reads. A model that fx cannot trace keeps its BatchNorms.
"""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Collection

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.utils.fusion import fuse_conv_bn_weights

from ..layers import LearnedScale, RPReLU
from .xnor_layers import SignMaxPool2d, XnorConv2d, XnorLinear

XNOR_LAYERS = (XnorConv2d, XnorLinear)
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
# kept whole on the graph: the XNOR-popcount layers and the pool on their packed signs, and the
# package's layers, whose forward depends on the input's rank, which fx does not know
LEAVES = (*XNOR_LAYERS, SignMaxPool2d, RPReLU, LearnedScale)


class _Leaves(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, LEAVES) or super().is_leaf_module(m, qualname)


def traced(model: nn.Module) -> fx.Graph | None:
    """The model's fx graph, the package's layers kept whole (`LEAVES`); None where fx cannot trace."""
    try:
        return _Leaves().trace(model)
    except Exception:  # whatever stops fx, the model is left as it is
        return None


def module_calls(model: nn.Module, graph: fx.Graph | None = None) -> tuple[list[fx.Node], set[str]] | None:
    """The model's module calls on its fx graph (`graph`, or traced here), in order, and the
    names of the modules called once; None where fx cannot trace."""
    if graph is None and (graph := traced(model)) is None:
        return None
    calls = [node for node in graph.nodes if node.op == "call_module"]
    return calls, {name for name, count in Counter(node.target for node in calls).items() if count == 1}


def called_once_on_one_value(node: fx.Node, once: set[str]) -> bool:
    """A call of a module called once, with one argument and no keywords."""
    return node.op == "call_module" and node.target in once and len(node.args) == 1 and not node.kwargs


def adjacent_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(first, second) module names, each module called once, where `second` is called on
    `first`'s output alone and nothing else reads that output; [] where fx cannot trace."""
    if (traced := module_calls(model)) is None:
        return []
    calls, once = traced
    return [(node.args[0].target, node.target) for node in calls
            if called_once_on_one_value(node, once) and isinstance(node.args[0], fx.Node)
            and node.args[0].op == "call_module" and node.args[0].target in once and len(node.args[0].users) == 1]


@torch.no_grad()
def fold_batchnorms(model: nn.Module, input_hooked: Collection[str] = (),
                    output_hooked: Collection[str] = ()) -> list[str]:
    """Fold each BatchNorm (eval mode, running statistics) that reads only an XNOR-popcount
    layer's output into the layer's epilogue, each that alone feeds such a layer into the
    layer's input map, and each that reads only a float Conv2d's output into its weights, and
    put identities in their place; returns the folded BatchNorms' names. Layers whose input
    (`input_hooked`: a threshold or XNOR-Net's K reads it) or output (`output_hooked`: K
    rescales it) a hook changes keep their BatchNorms on that side."""
    modules = dict(model.named_modules())
    foldable = {name for name, m in modules.items()
                if isinstance(m, BATCHNORMS) and not m.training and m.running_var is not None}
    folded = []
    for first, second in adjacent_pairs(model):
        if isinstance(modules[first], XNOR_LAYERS) and second in foldable and first not in output_hooked:
            fold_into_epilogue(modules[first], modules[second])
        elif first in foldable and isinstance(modules[second], XNOR_LAYERS) and second not in input_hooked:
            fold_into_input(modules[second], modules[first])
        elif type(modules[first]) is nn.Conv2d and second in foldable and first not in output_hooked:
            fold_into_conv(modules[first], modules[second])
        else:
            continue
        norm = first if first in foldable else second
        foldable.discard(norm)  # folded once: a BatchNorm between two layers goes into the first
        model.set_submodule(norm, nn.Identity())
        folded.append(norm)
    return folded


def fold_into_epilogue(layer: nn.Module, norm: nn.Module) -> None:
    """alpha' = a * alpha, bias' = a * bias + b."""
    scale, shift = affine_of(norm)
    bias = layer.bias if layer.bias is not None else torch.zeros_like(layer.alpha)
    layer.alpha = scale * layer.alpha
    layer.bias = (scale * bias + shift).to(bias.dtype)


def fold_into_conv(conv: nn.Conv2d, norm: nn.Module) -> None:
    """W' = a * W per output channel, bias' = a * bias + b, in the conv's dtype."""
    conv.weight, conv.bias = fuse_conv_bn_weights(conv.weight, conv.bias, norm.running_mean, norm.running_var,
                                                  norm.eps, norm.weight, norm.bias)


def fold_into_input(layer: nn.Module, norm: nn.Module) -> None:
    """The layer's input bits become those of sign(a * x + b)."""
    layer.input_scale, layer.input_bias = affine_of(norm)


def affine_of(norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) of a BatchNorm in eval mode as PyTorch's CPU BatchNorm computes them, in the
    BatchNorm's dtype: a = gamma * (1 / sqrt(var + eps)), b = beta - mean * a."""
    inverse_std = 1.0 / torch.sqrt(norm.running_var + norm.eps)
    scale = inverse_std * norm.weight if norm.weight is not None else inverse_std
    shift = -norm.running_mean * scale if norm.bias is None else norm.bias - norm.running_mean * scale
    return scale, shift


def passes_signs(m: nn.Module) -> bool:
    """What may lie between two linked convs: identities, ReLUs (their zeros go into the
    first conv's epilogue) and max pooling of dilation 1 (done on the packed bits,
    `xnor_layers.SignMaxPool2d`, which a linked model holds in its place)."""
    if isinstance(m, nn.MaxPool2d):
        return m.dilation in (1, (1, 1)) and not m.return_indices
    return isinstance(m, (nn.Identity, nn.ReLU, SignMaxPool2d))


def sign_chains(model: nn.Module, input_hooked: Collection[str] = (),
                output_hooked: Collection[str] = ()) -> list[list[str]]:
    """Links of native one-group XNOR convs whose output reaches the next such conv through
    nothing but ReLUs, identities and max pooling (`passes_signs`), each module called once and
    its output read by the next alone: [first conv, the modules between, next conv] by name;
    [] where fx cannot trace. Convs whose output (`output_hooked`) or input (`input_hooked`) a
    hook changes are left out."""
    if (traced := module_calls(model)) is None:
        return []
    calls, once = traced
    modules = dict(model.named_modules())

    def linkable(node: fx.Node, accepts) -> bool:
        return called_once_on_one_value(node, once) and accepts(modules[node.target])

    def chainable_conv(m: nn.Module) -> bool:
        return isinstance(m, XnorConv2d) and m.native and m.groups == 1

    links = []
    for node in calls:
        if not linkable(node, chainable_conv) or node.target in output_hooked:
            continue
        link = [node]
        while len(link[-1].users) == 1 and linkable(next(iter(link[-1].users)), passes_signs):
            link.append(next(iter(link[-1].users)))
        last = link[-1]
        if len(last.users) == 1 and linkable(consumer := next(iter(last.users)), chainable_conv) and \
                consumer.target not in input_hooked:
            links.append([n.target for n in (*link, consumer)])
    return links


def fuse_sign_chains(model: nn.Module, input_hooked: Collection[str] = (),
                     output_hooked: Collection[str] = ()) -> list[list[str]]:
    """Link the convs of each of `sign_chains`: the first packs the signs the next reads
    (its input map and any ReLU between move into the first's epilogue; the ReLUs become
    identities, the max pools `SignMaxPool2d`), the next takes them packed; returns the links
    made (all but those whose bits are no interval of dots, `XnorConv2d.link_output`)."""
    links = []
    for first, *between, second in sign_chains(model, input_hooked, output_hooked):
        producer, consumer = model.get_submodule(first), model.get_submodule(second)
        relu = any(isinstance(model.get_submodule(name), nn.ReLU) for name in between)
        if not producer.link_output(relu, consumer.input_scale, consumer.input_bias):
            continue
        links.append([first, *between, second])
        consumer.signs_in = True
        falling = (consumer.input_scale < 0 if consumer.input_scale is not None
                   else torch.zeros(consumer.in_channels, dtype=torch.bool))
        consumer.input_scale = consumer.input_bias = None
        for name in between:
            m = model.get_submodule(name)
            if isinstance(m, (nn.ReLU, nn.MaxPool2d)):
                model.set_submodule(name, SignMaxPool2d(m, falling) if isinstance(m, nn.MaxPool2d) else nn.Identity())
    return links


SUMS = (operator.add, torch.add)  # x + y and x += y (torchvision's blocks; fx traces both as add), torch.add(x, y)


def residual_sums(model: nn.Module, sample: torch.Tensor, output_hooked: Collection[str] = ()) -> list[tuple[str, str]]:
    """The sums s = y + r (either order) where y is the output of a native XNOR conv called once
    on one value, which the sum alone reads (through identities: folded BatchNorms), and r a
    tensor of y's shape and dtype on `sample` (a batch of inputs, run once through the model
    to find the shapes, `ShapeProp`), as (block, conv): the module whose forward holds the sum
    ("" for the model itself) and the conv, by name; [] where fx cannot trace. Convs whose
    output a hook changes (`output_hooked`) or that pack signs (`fuse_sign_chains`) are left out,
    and so are sums after an operation that may change a tensor in place between the conv and
    the sum (`changes_in_place`): the fused conv runs at the sum's place."""
    if (graph := traced(model)) is None:
        return []
    try:
        with torch.no_grad():
            ShapeProp(fx.GraphModule(model, graph)).propagate(sample)
    except Exception:  # a graph that runs only as the model's own code: the model is left as it is
        return []
    calls, once = module_calls(model, graph)
    modules = dict(model.named_modules())

    def fusable(node: fx.Node) -> bool:
        m = modules[node.target]
        return (called_once_on_one_value(node, once) and isinstance(m, XnorConv2d) and m.native
                and not m.sign_output and node.target not in output_hooked)

    sums, taken = [], set()
    for conv in filter(fusable, calls):
        *chain, total = _single_user_chain(conv, modules)
        residual = _other_operand(total, chain[-1]) if chain else None
        if residual is not None and _same_tensor_type(conv, residual) and total not in taken and \
                not any(changes_in_place(node, modules) for node in _between(conv, total)):
            taken.add(total)  # a sum of two such convs goes into the first one's epilogue
            stack = total.meta.get("nn_module_stack", {})
            sums.append((list(stack.values())[-1][0] if stack else "", conv.target))
    return sums


def fuse_residual_sums(model: nn.Module, sample: torch.Tensor,
                       output_hooked: Collection[str] = ()) -> tuple[nn.Module, list[str]]:
    """Have each conv of `residual_sums` add its residual in its epilogue: the module holding
    the sum becomes an `fx.GraphModule` of its submodules in which the conv is called with
    ``residual=r`` in the sum's place and the sum and the identities before it are gone
    (deepest modules first, so that a module holding another traces the other's new code).
    Returns the model (a new one where the model itself held a sum) and the fused convs' names."""
    sums = residual_sums(model, sample, output_hooked)
    by_block: dict[str, set[str]] = {}  # the convs by their names within the block
    for block, conv in sums:
        by_block.setdefault(block, set()).add(conv.removeprefix(f"{block}.") if block else conv)
    for block in sorted(by_block, key=lambda name: -1 if not name else name.count("."), reverse=True):
        fused = _with_residuals_in_epilogue(model.get_submodule(block), by_block[block])
        if block:
            model.set_submodule(block, fused)
        else:
            model = fused
    return model, [conv for _, conv in sums]


def _with_residuals_in_epilogue(block: nn.Module, convs: set[str]) -> fx.GraphModule:
    """`block` as an fx.GraphModule in which each of `convs` (called once, its output read by a
    residual sum alone, `residual_sums`) is called at the sum's place with ``residual=r``."""
    graph, modules = _Leaves().trace(block), dict(block.named_modules())
    for conv in [node for node in graph.nodes if node.op == "call_module" and node.target in convs]:
        *chain, total = _single_user_chain(conv, modules)
        with graph.inserting_before(total):
            fused = graph.call_module(conv.target, conv.args, {"residual": _other_operand(total, chain[-1])})
        total.replace_all_uses_with(fused)
        for node in [total, *reversed(chain)]:
            graph.erase_node(node)
    return fx.GraphModule(block, graph)


def changes_in_place(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether the node may change a tensor in place: a module with ``inplace=True`` (a ReLU), a
    method or function whose name ends in an underscore (``x.relu_()``), or a call with an
    ``inplace=True`` keyword."""
    if node.op == "call_module":
        return bool(getattr(modules[node.target], "inplace", False))
    if node.op not in ("call_method", "call_function"):
        return False
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    return name.endswith("_") or bool(node.kwargs.get("inplace", False))


def _between(first: fx.Node, last: fx.Node) -> list[fx.Node]:
    """The nodes after `first` and before `last` in the graph's order."""
    nodes, node = [], first.next
    while node is not last:
        nodes.append(node)
        node = node.next
    return nodes


def _single_user_chain(node: fx.Node, modules: dict[str, nn.Module]) -> list[fx.Node]:
    """`node`, then each identity call that alone reads the value before it, then the first
    other node that alone reads it (none where the value has no or several readers)."""
    chain = [node]
    while len(chain[-1].users) == 1:
        chain.append(next(iter(chain[-1].users)))
        if not (chain[-1].op == "call_module" and isinstance(modules[chain[-1].target], nn.Identity)):
            break
    return chain


def _other_operand(total: fx.Node, value: fx.Node) -> fx.Node | None:
    """The other operand of a sum of `value` and a tensor node, `total`; None where `total` is
    no such sum (three operands, keywords such as torch.add's alpha, `value` twice)."""
    if total.op != "call_function" or total.target not in SUMS or len(total.args) != 2 or total.kwargs:
        return None
    first, second = total.args
    other = second if first is value else first
    return other if isinstance(other, fx.Node) and other is not value else None


def _same_tensor_type(a: fx.Node, b: fx.Node) -> bool:
    """Both nodes gave tensors of one shape and dtype in `ShapeProp`'s run."""
    meta_a, meta_b = a.meta.get("tensor_meta"), b.meta.get("tensor_meta")
    return (hasattr(meta_a, "shape") and hasattr(meta_b, "shape") and meta_a.shape == meta_b.shape
            and meta_a.dtype == meta_b.dtype)
