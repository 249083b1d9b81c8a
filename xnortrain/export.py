"""Deployable 1-bit models: export a training checkpoint with its binary weights packed
8 per byte, and load it back as an inference nn.Module.

The exported file (`torch.save`, read with `weights_only=True`) holds

- ``format``: ``"xnortrain.packed/1"``
- ``model``: the model config (name, kwargs), ``num_classes`` and ``input_shape``
- ``packed``: per binarized parameter (its state_dict key), the sign bits of W~ packed
  8 per byte, its shape, and alpha (one float per output filter for scale filter, one
  for the tensor for scale layer, 1 for sign)
- ``tensors``: every other tensor of the model's state_dict (first and last layers,
  BatchNorm, biases), each float32 one stored as float16 where the predictions on the
  run's first 1000 evaluation inputs stay the same (`float16_where_predictions_hold`)

Loading rebuilds W~ = alpha * sign exactly, so the loaded model computes the logits of
the trained model evaluated with BinOp attached, up to the float16 storage, and predicts
as it does on the inputs the export checked. With ``binary_kernels=True`` the layers of
the zoo's binary blocks whose input is sign(x) run as XNOR-popcount layers
(`bits.XnorConv2d`, `bits.XnorLinear`, native kernels from `kernels.py` where they build).
docs/deploy.md describes the file and the kernels.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from .bits import XnorConv2d, XnorLinear, pack_signs, unpack_bits, unpack_signs
from .checkpoint import atomic_write, check_fits_model, safe_load
from .config import ModelConfig
from .errors import CheckpointError, UserError
from .kernels import path_in_use
from .quantizers import Quantizer

FORMAT = "xnortrain.packed/1"


def export_checkpoint(checkpoint: str | Path, out: str | Path) -> dict:
    """Write the packed model of a training checkpoint to `out`; returns both file sizes."""
    from .models import model_from_checkpoint

    model, binop, config, num_classes, input_shape = model_from_checkpoint(checkpoint)
    if binop is None:
        raise UserError(f"{checkpoint}: this run trained without BinOp (binop.enabled: false); nothing to pack")
    shape = {"num_classes": num_classes, "input_shape": list(input_shape)}
    packed = {key: pack_weight(binop.quantizers[name], w) for name, w, key in _keyed_weights(binop)}
    tensors = float16_where_predictions_hold(model, {k: v for k, v in model.state_dict().items() if k not in packed},
                                             evaluation_inputs(config))
    payload = {"format": FORMAT, "model": {"name": config.model.name, "kwargs": dict(config.model.kwargs), **shape},
               "packed": packed, "tensors": tensors}
    atomic_write(out, lambda f: torch.save(payload, f))
    return {"checkpoint_bytes": Path(checkpoint).stat().st_size, "exported_bytes": Path(out).stat().st_size}


def pack_weight(quantizer: Quantizer, w: torch.Tensor) -> dict:
    """The packed form of W~ = alpha * sign(W), as the quantizer gives it (a UserError for
    quantizers without one)."""
    signs, alpha = quantizer.signs_and_alpha(w.detach())
    return {"bits": pack_signs(signs), "shape": list(w.shape), "alpha": alpha.float().clone()}


TEST_SAMPLES = 1000


@torch.no_grad()
def float16_where_predictions_hold(model: nn.Module, tensors: dict, inputs: torch.Tensor | None) -> dict:
    """`tensors` (of `model`, which has BinOp attached) with float32 tensors stored as float16
    where the model's predictions on `inputs` stay those of float32: all of them when that
    holds, else tensor by tensor, largest first, among those holding at least 1% of the
    float numbers (the rest stay float32). Without inputs, all stay float32. The model holds
    its own tensors again on return."""
    floats = sorted((k for k, v in tensors.items() if v.dtype == torch.float32), key=lambda k: -tensors[k].numel())
    if inputs is None or not floats:
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


def evaluation_inputs(config) -> torch.Tensor | None:
    """Up to TEST_SAMPLES inputs of the run's evaluation data; None where it is not on this machine."""
    from .data import build_data

    try:
        data = build_data(config.data, seed=config.train.seed)
    except UserError:
        return None
    batches, count = [], 0
    for x, _ in data.eval.batches(0):
        batches.append(x)
        count += len(x)
        if count >= TEST_SAMPLES:
            break
    return torch.cat(batches)[:TEST_SAMPLES]


def load_exported(path: str | Path, binary_kernels: bool = False) -> nn.Module:
    """The inference model (eval mode) of an exported file.

    With `binary_kernels` the binary blocks' layers run as XNOR-popcount layers
    (`bits.XnorConv2d`, `bits.XnorLinear`) holding their weights as packed words, with no
    float copy; the other packed weights are unpacked to W~ = alpha * sign. It prints one
    line naming the path the binary layers run (`kernels.path_in_use`)."""
    from .models import build_model

    payload = _read(path)
    spec = payload["model"]
    model = build_model(ModelConfig(spec["name"], spec["kwargs"]), spec["num_classes"], spec["input_shape"][0])
    tensors = payload["tensors"]
    swapped = use_binary_kernels(model, payload["packed"], tensors) if binary_kernels else []
    weights = {k: v for k, v in model.state_dict().items() if k.rpartition(".")[0] in swapped}  # the swapped layers'
    weights.update({k: v for k, v in tensors.items() if k.rpartition(".")[0] not in swapped})
    weights.update({k: unpack_weight(p) for k, p in payload["packed"].items() if k.rpartition(".")[0] not in swapped})
    check_fits_model(path, weights, model)
    model.load_state_dict(weights)  # float16-stored tensors are copied into the model's float32
    if binary_kernels:
        print(f"{path}: {path_in_use()}")
    return model.eval()


def unpack_weight(p: dict) -> torch.Tensor:
    """W~ = alpha * sign from its packed form."""
    signs = unpack_signs(p["bits"], tuple(p["shape"]))
    alpha = p["alpha"].view(-1, *[1] * (len(p["shape"]) - 1)) if p["alpha"].numel() > 1 else p["alpha"]
    return signs * alpha


def use_binary_kernels(model: nn.Module, packed: dict, tensors: dict) -> list[str]:
    """Swap each packed layer fed by BinActive (the zoo's BinaryBlock) for its XNOR-popcount
    layer, which binarizes its own input (so the block's BinActive becomes the identity);
    returns the swapped layer names."""
    from .activations import BinActive
    from .zoo import BinaryBlock

    swapped = []
    for block_name, block in model.named_modules():
        if not isinstance(block, BinaryBlock) or not isinstance(block.act, BinActive):
            continue
        layer = getattr(block, block.layer_name)
        name = f"{block_name}.{block.layer_name}" if block_name else block.layer_name
        p = packed.get(f"{name}.weight")
        if p is None or p["alpha"].numel() not in (1, layer.weight.shape[0]) or (
                isinstance(layer, nn.Conv2d) and (not isinstance(layer.padding, tuple) or layer.padding_mode != "zeros")):
            continue
        signs = unpack_bits(p["bits"], math.prod(p["shape"])).view(p["shape"])  # bool, sign(W~) >= 0
        alpha = p["alpha"].expand(layer.weight.shape[0])
        bias = None if layer.bias is None else tensors[f"{name}.bias"].float()
        kernel = XnorConv2d(layer, signs, alpha, bias) if isinstance(layer, nn.Conv2d) else XnorLinear(signs, alpha, bias)
        setattr(block, block.layer_name, kernel)
        block.act = nn.Identity()
        swapped.append(name)
    return swapped


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
