"""The packed model file: a trained binary model with its binary weights packed 8 per byte,
written from a model with BinOp attached and loaded back as an inference nn.Module.

The file (`torch.save`, read with `weights_only=True`) holds

- ``format``: ``"xnortrain.packed/2"``
- ``model``: the model's name and keyword arguments (`model_factory.build_model`),
  ``num_classes`` and ``input_shape``
- ``packed``: per binarized parameter (its state_dict key), the sign bits of W~ packed
  8 per byte, its shape, alpha (one float per output filter for scale filter, one for
  the tensor for scale layer, 1 for sign), and ``input``: the layer's input quantizer
  (its name and scale) where its input is binary, else None
- ``tensors``: every other tensor of the model's state_dict (first and last layers,
  BatchNorm, biases), as float32; or, where the export was given inputs to check on,
  each float32 one stored as float16 where the predictions on those inputs stay the
  same (`float16_where_predictions_hold`)

The file is a pure function of the model's weights and the export's arguments: the same
checkpoint exports to the same bytes on any machine. Loading rebuilds W~ = alpha * sign
exactly and binarizes the recorded layers' inputs with the same hooks as BinOp
(`activations.BinaryInputs`), so the loaded model computes the logits of the trained model
evaluated with BinOp attached (up to float16 storage where it was checked). With
``binary_kernels=True`` every Conv2d and Linear layer whose weights and inputs are both
1 bit, in any model, runs as an XNOR-popcount layer (`xnor_layers.XnorConv2d`,
`xnor_layers.XnorLinear`, native kernels from `kernels.py` where they build).
docs/deploy.md describes the file and the kernels.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
from torch import nn

from ..activations import SHIFT, BinaryInputs, make_input_quantizer
from ..binop import BinOp
from ..errors import CheckpointError
from ..model_factory import build_model
from ..quantizers import Quantizer
from ..serialization import atomic_write, check_fits_model, safe_load
from . import fusion, kernels
from .bitpack import pack_signs, unpack_bits, unpack_signs
from .xnor_layers import XnorConv2d, XnorLinear

FORMAT = "xnortrain.packed/2"


def export_model(binop: BinOp, out: str | Path, *, name: str, kwargs: dict, num_classes: int,
                 input_shape: tuple[int, ...], check_inputs: torch.Tensor | None = None) -> int:
    """Write the packed file of `binop.model` to `out`, rebuilt on load as `name` with `kwargs`;
    returns its size in bytes. With `check_inputs` (a batch of the model's inputs) the float
    tensors are stored as float16 where the predictions on them stay those of float32."""
    model = binop.model
    packed = {key: {**pack_weight(binop.quantizers[target], w), "input": _input_record(binop.activations.get(target))}
              for target, w, key in _keyed_weights(binop)}
    tensors = {k: v for k, v in model.state_dict().items() if k not in packed}
    if check_inputs is not None:
        tensors = float16_where_predictions_hold(model, tensors, check_inputs)
    spec = {"name": name, "kwargs": dict(kwargs), "num_classes": num_classes, "input_shape": list(input_shape)}
    payload = {"format": FORMAT, "model": spec, "packed": packed, "tensors": tensors}
    atomic_write(out, lambda f: torch.save(payload, f))
    return Path(out).stat().st_size


def pack_weight(quantizer: Quantizer, w: torch.Tensor) -> dict:
    """The packed form of W~ = alpha * sign(W), as the quantizer gives it (a UserError for
    quantizers without one)."""
    signs, alpha = quantizer.signs_and_alpha(w.detach())
    return {"bits": pack_signs(signs), "shape": list(w.shape), "alpha": alpha.float().clone()}


@torch.no_grad()
def float16_where_predictions_hold(model: nn.Module, tensors: dict, inputs: torch.Tensor) -> dict:
    """`tensors` (of `model`, which has BinOp attached) with float32 tensors stored as float16
    where the model's predictions on `inputs` stay those of float32: all of them when that
    holds, else tensor by tensor, largest first, among those holding at least 1% of the
    float numbers (the rest stay float32). The model holds its own tensors again on return."""
    floats = sorted((k for k, v in tensors.items() if v.dtype == torch.float32), key=lambda k: -tensors[k].numel())
    if not floats:
        return tensors
    model.eval()
    reference = _predictions(model, inputs)
    own = {k: tensors[k].clone() for k in floats}  # state_dict tensors share the model's storage

    def predictions_hold(halved: list[str]) -> bool:
        model.load_state_dict({k: own[k].half().float() if k in halved else own[k] for k in floats}, strict=False)
        return torch.equal(_predictions(model, inputs), reference)

    halved = floats
    if not predictions_hold(floats):
        total = sum(own[k].numel() for k in floats)
        halved = []
        for key in (k for k in floats if own[k].numel() * 100 >= total):
            if predictions_hold([*halved, key]):
                halved.append(key)
    predictions_hold([])  # the model's own tensors again
    return {k: own[k].half() if k in halved else v for k, v in tensors.items()}


def _predictions(model: nn.Module, inputs: torch.Tensor, batch: int = 100) -> torch.Tensor:
    return torch.cat([model(inputs[i:i + batch]).argmax(1) for i in range(0, len(inputs), batch)])


def load_exported(path: str | Path, binary_kernels: bool = False, fold_batchnorms: bool = True,
                  fuse_signs: bool = True, fuse_residuals: bool = True) -> nn.Module:
    """The inference model (eval mode) of an exported file.

    Every packed weight is unpacked to W~ = alpha * sign, and the inputs the file records as
    binary are binarized as in training. With `binary_kernels`, each Conv2d (zero padding)
    and Linear layer whose weights and inputs are both 1 bit runs as an XNOR-popcount layer
    (`xnor_layers.XnorConv2d`, `xnor_layers.XnorLinear`) holding its weights as packed words,
    with no float copy, on the native kernels where they load (`kernels.load`, which builds
    them on a machine's first use), and with `fold_batchnorms` each BatchNorm that alone reads
    or feeds such a layer is folded into it, and each that alone reads a float Conv2d into its
    weights (`fusion.fold_batchnorms`); on the native kernels the float Conv2d layers are
    channels-last (`use_channels_last`), and with `fuse_signs` an XNOR conv whose output the
    next XNOR conv alone reads, through ReLUs, folded BatchNorms and max pools, hands it the
    packed signs it reads (`fusion.fuse_sign_chains`), and with `fuse_residuals` a residual sum
    that alone reads an XNOR conv's output is added in the conv's epilogue, its block becoming an
    `fx.GraphModule` (`fusion.fuse_residual_sums`). It prints one line saying how many layers
    run which path."""
    payload = _read(path)
    spec = payload["model"]
    model = build_model(spec["name"], spec["kwargs"], spec["num_classes"], spec["input_shape"][0])
    packed, tensors = payload["packed"], payload["tensors"]
    inputs = {key.removesuffix(".weight"): make_input_quantizer(p["input"]) for key, p in packed.items()
              if p["input"] is not None}
    native = binary_kernels and kernels.load() is None
    swapped = use_binary_kernels(model, packed, tensors, inputs, native) if binary_kernels else []
    # an XNOR-popcount layer takes the signs of its own input; a scale or a shift still needs
    # the hooks, which give the layer its shift's parameter before the weights are loaded
    hooked = {name: q for name, q in inputs.items() if name not in swapped or not q.sign_alone}
    BinaryInputs(model, {name: model.get_submodule(name) for name in hooked}, hooked)

    def from_file(key: str) -> bool:  # a swapped layer holds its packed weight and bias already
        return key.rpartition(".")[0] not in swapped or key.endswith(f".{SHIFT}")

    weights = {k: v for k, v in model.state_dict().items() if not from_file(k)}
    weights.update({k: v for k, v in tensors.items() if from_file(k)})
    weights.update({k: unpack_weight(p) for k, p in packed.items() if from_file(k)})
    check_fits_model(path, weights, model)
    model.load_state_dict(weights)  # float16-stored tensors are copied into the model's float32
    model.eval()
    if binary_kernels:
        rescaled = {name for name, q in hooked.items() if q.scale != "none"}
        folded = fusion.fold_batchnorms(model, input_hooked=hooked, output_hooked=rescaled) if fold_batchnorms else []
        links = fusion.fuse_sign_chains(model, hooked, rescaled) if native and fuse_signs else []
        sums = []
        if native:
            use_channels_last(model)
            if fuse_residuals:
                model, sums = fusion.fuse_residual_sums(model, torch.zeros(2, *spec["input_shape"]), rescaled)
        layers = sum(isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) for m in model.modules())
        print(f"{path}: {len(swapped)} binary layers on the {kernels.path_in_use()}, {len(folded)} BatchNorms folded "
              f"into the layers next to them, {len(links)} passing their signs packed to the next, {len(sums)} "
              f"adding a residual in their epilogue; {layers} conv/linear layers on the float path", file=sys.stderr)
    return model


def use_channels_last(model: nn.Module) -> None:
    """Put the float Conv2d layers' weights in channels-last memory format, so that their
    outputs are channels-last, as the native kernels' are: the tensors between layers then keep
    one format (an add or a BatchNorm of a channels-last and a contiguous tensor takes PyTorch's
    slow strided path) and a kernel packs its input's signs from contiguous channels."""
    for layer in model.modules():
        if isinstance(layer, nn.Conv2d):
            layer.to(memory_format=torch.channels_last)


def exported_spec(path: str | Path) -> dict:
    """The model an exported file rebuilds: ``name``, ``kwargs``, ``num_classes``, ``input_shape``."""
    return _read(path)["model"]


def unpack_weight(p: dict) -> torch.Tensor:
    """W~ = alpha * sign from its packed form."""
    signs = unpack_signs(p["bits"], tuple(p["shape"]))
    alpha = p["alpha"].view(-1, *[1] * (len(p["shape"]) - 1)) if p["alpha"].numel() > 1 else p["alpha"]
    return signs * alpha


def use_binary_kernels(model: nn.Module, packed: dict, tensors: dict, inputs: dict, native: bool) -> list[str]:
    """Swap each Conv2d (zero padding) and Linear layer whose weight is packed and whose input
    is binary (`inputs`: layer name -> input quantizer) for its XNOR-popcount layer; returns
    the swapped layer names. `native`: the layers call the native kernels."""
    swapped = []
    for name in inputs:
        layer, p = model.get_submodule(name), packed[f"{name}.weight"]
        if not _runs_on_kernels(layer, p):
            continue
        signs = unpack_bits(p["bits"], math.prod(p["shape"])).view(p["shape"])  # bool, sign(W~) >= 0
        alpha = p["alpha"].expand(layer.weight.shape[0])
        bias = None if layer.bias is None else tensors[f"{name}.bias"].float()
        kernel = (XnorConv2d(layer, signs, alpha, bias, native) if isinstance(layer, nn.Conv2d)
                  else XnorLinear(signs, alpha, bias, native))
        model.set_submodule(name, kernel)
        swapped.append(name)
    return swapped


def _runs_on_kernels(layer: nn.Module, p: dict) -> bool:
    if p["alpha"].numel() not in (1, layer.weight.shape[0]):
        return False
    if isinstance(layer, nn.Conv2d):
        return isinstance(layer.padding, tuple) and layer.padding_mode == "zeros"
    return isinstance(layer, nn.Linear)


def _input_record(quantizer) -> dict | None:
    """What the file records of a layer's input quantizer: its name and scale (None: real input)."""
    return None if quantizer is None else {"name": quantizer.name, "scale": quantizer.scale}


def _read(path: str | Path) -> dict:
    path = Path(path)
    payload = safe_load(path, "exported model")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an xnortrain exported model (format {FORMAT}); "
                              f"write one with `python -m xnortrain export`")
    return payload


def _keyed_weights(binop):
    """(target name, real weight, state_dict key) of every target and param."""
    for name, w in binop.weights.items():
        yield name, w, name if name in binop.params else f"{name}.weight"
