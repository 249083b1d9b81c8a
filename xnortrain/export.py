"""Deployable 1-bit models: export a training checkpoint with its binary weights packed
8 per byte, and load it back as an inference nn.Module.

The exported file (`torch.save`, read with `weights_only=True`) holds

- ``format``: ``"xnortrain.packed/1"``
- ``model``: the model config (name, kwargs), ``num_classes`` and ``input_shape``
- ``packed``: per binarized parameter (its state_dict key), the sign bits of W~ packed
  8 per byte, its shape, and alpha (one float per output filter for scale filter, one
  for the tensor for scale layer, 1 for sign)
- ``tensors``: every other tensor of the model's state_dict as is (first and last
  layers, BatchNorm, biases)

Loading rebuilds W~ = alpha * sign exactly, so the loaded model computes the same
logits as the trained model evaluated with BinOp attached. With ``binary_kernels=True``
the layers of the zoo's binary blocks whose input is sign(x) run as XNOR-popcount kernels
(`bits.XnorConv2d`, `bits.XnorLinear`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .bits import XnorConv2d, XnorLinear, pack_bits, pack_signs, unpack_signs
from .checkpoint import atomic_write, check_fits_model, safe_load
from .config import ModelConfig
from .errors import CheckpointError, UserError
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
    tensors = {k: v for k, v in model.state_dict().items() if k not in packed}
    payload = {"format": FORMAT, "model": {"name": config.model.name, "kwargs": dict(config.model.kwargs), **shape},
               "packed": packed, "tensors": tensors}
    atomic_write(out, lambda f: torch.save(payload, f))
    return {"checkpoint_bytes": Path(checkpoint).stat().st_size, "exported_bytes": Path(out).stat().st_size}


def pack_weight(quantizer: Quantizer, w: torch.Tensor) -> dict:
    """The packed form of W~ = alpha * sign(W), as the quantizer gives it (a UserError for
    quantizers without one)."""
    signs, alpha = quantizer.signs_and_alpha(w.detach())
    return {"bits": pack_signs(signs), "shape": list(w.shape), "alpha": alpha.float().clone()}


def load_exported(path: str | Path, binary_kernels: bool = False) -> nn.Module:
    """The inference model (eval mode) of an exported file; `binary_kernels` runs the binary
    blocks' layers as XNOR-popcount kernels."""
    from .models import build_model

    payload = _read(path)
    spec = payload["model"]
    model = build_model(ModelConfig(spec["name"], spec["kwargs"]), spec["num_classes"], spec["input_shape"][0])
    weights = dict(payload["tensors"])
    for key, p in payload["packed"].items():
        weights[key] = unpack_weight(p)
    check_fits_model(path, weights, model)
    model.load_state_dict(weights)
    if binary_kernels:
        use_binary_kernels(model, payload["packed"])
    return model.eval()


def unpack_weight(p: dict) -> torch.Tensor:
    """W~ = alpha * sign from its packed form."""
    signs = unpack_signs(p["bits"], tuple(p["shape"]))
    alpha = p["alpha"].view(-1, *[1] * (len(p["shape"]) - 1)) if p["alpha"].numel() > 1 else p["alpha"]
    return signs * alpha


def use_binary_kernels(model: nn.Module, packed: dict) -> list[str]:
    """Swap each packed layer fed by BinActive (the zoo's BinaryBlock) for its XNOR-popcount
    kernel; returns the swapped layer names."""
    from .activations import BinActive
    from .zoo import BinaryBlock

    swapped = []
    for block_name, block in model.named_modules():
        if not isinstance(block, BinaryBlock) or not isinstance(block.act, BinActive):
            continue
        layer = getattr(block, block.layer_name)
        key = f"{block_name}.{block.layer_name}.weight" if block_name else f"{block.layer_name}.weight"
        if key not in packed or (isinstance(layer, nn.Conv2d) and layer.groups != 1):
            continue
        p, bias = packed[key], None if layer.bias is None else layer.bias.detach()
        bits = pack_rows(p, layer.weight.shape[0])
        kernel = (XnorConv2d(layer, bits, p["alpha"], bias) if isinstance(layer, nn.Conv2d)
                  else XnorLinear(bits, p["alpha"], bias, layer.in_features))
        setattr(block, block.layer_name, kernel)
        swapped.append(key.removesuffix(".weight"))
    return swapped


def pack_rows(p: dict, rows: int) -> torch.Tensor:
    """The sign bits re-packed per output filter (each filter starts on a byte)."""
    signs = unpack_signs(p["bits"], tuple(p["shape"]))
    return pack_bits(signs.reshape(rows, -1) > 0)


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
