"""A per-layer size-and-operations summary of a model, binary or not (in the spirit of larq's).

One forward pass on a sample input records, for every layer: its output shape, the
precision of its weights (the bit width of BinOp's quantizer, 32 without one) and of
its input (1 bit when every input value is +-1), its parameters, its multiply-accumulates

    conv:   outputs per sample * (C_in / groups) * prod(kernel)
    linear: outputs per sample * in_features

split into binary (1-bit weights and 1-bit inputs: XNOR-popcount work) and float, and its
memory as float32 and packed (1 bit per binarized weight plus one float alpha per filter).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..quantizers import Quantizer


@dataclass
class LayerRow:
    name: str
    kind: str
    output_shape: tuple[int, ...]
    weight_bits: int | None  # None: no weights
    input_bits: int | None
    params: int
    binary_macs: int
    float_macs: int
    float_bytes: int
    packed_bytes: int


@dataclass
class Summary:
    rows: list[LayerRow]

    @property
    def params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def binary_macs(self) -> int:
        return sum(r.binary_macs for r in self.rows)

    @property
    def float_macs(self) -> int:
        return sum(r.float_macs for r in self.rows)

    @property
    def float_bytes(self) -> int:
        return sum(r.float_bytes for r in self.rows)

    @property
    def packed_bytes(self) -> int:
        return sum(r.packed_bytes for r in self.rows)

    @property
    def compression(self) -> float:
        return self.float_bytes / self.packed_bytes

    @property
    def binary_mac_share(self) -> float:
        total = self.binary_macs + self.float_macs
        return self.binary_macs / total if total else 0.0

    def __str__(self) -> str:
        header = ("layer", "output", "weights", "input", "params", "binary MACs", "float MACs", "float32 B", "packed B")
        lines = [header] + [
            (f"{r.name} ({r.kind})", str(r.output_shape), _bits(r.weight_bits), _bits(r.input_bits), f"{r.params:,}",
             f"{r.binary_macs:,}", f"{r.float_macs:,}", f"{r.float_bytes:,}", f"{r.packed_bytes:,}")
            for r in self.rows
        ] + [("total", "", "", "", f"{self.params:,}", f"{self.binary_macs:,}", f"{self.float_macs:,}",
              f"{self.float_bytes:,}", f"{self.packed_bytes:,}")]
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        text = ["  ".join(cell.ljust(w) if i < 4 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))
                for line in lines]
        text.insert(1, "-" * len(text[0]))
        text.insert(-1, "-" * len(text[0]))
        text.append(f"compression (float32 / packed): {self.compression:.2f}x; "
                    f"binary MACs: {self.binary_mac_share:.1%} of {self.binary_macs + self.float_macs:,}")
        return "\n".join(text)


def summary(model: nn.Module, sample: torch.Tensor) -> Summary:
    """Summarize `model` (BinOp attached or not) by one forward pass on `sample` (a batch)."""
    layers = {name: m for name, m in model.named_modules()
              if name and _is_layer(m) and ".parametrizations." not in name}
    rows: dict[str, LayerRow] = {}

    def record(name):
        def hook(module, inputs, output):
            if name not in rows and isinstance(output, torch.Tensor):
                rows[name] = _row(name, module, inputs[0] if inputs else None, output)
        return hook

    handles = [m.register_forward_hook(record(name)) for name, m in layers.items()]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(sample)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return Summary([rows[name] for name in layers if name in rows])


def _is_layer(module: nn.Module) -> bool:
    """A leaf module, or a parametrized one (whose only children are its parametrizations)."""
    children = [n for n, _ in module.named_children() if n != "parametrizations"]
    return not children


def _row(name: str, module: nn.Module, x: torch.Tensor | None, output: torch.Tensor) -> LayerRow:
    params = sum(p.numel() for p in module.parameters())
    has_weight = isinstance(getattr(module, "weight", None), torch.Tensor) and params > 0
    quantizer = _quantizer(module)
    weight_bits = (32 if quantizer is None else quantizer.bits) if has_weight else None
    input_bits = None
    if has_weight and isinstance(x, torch.Tensor) and x.is_floating_point():
        input_bits = 1 if bool(x.abs().eq(1).all()) else 32
    macs = _macs(module, output)
    binary = weight_bits == 1 and input_bits == 1
    packed = params * 4
    if weight_bits == 1:
        w = module.weight
        packed += -(-w.numel() // 8) + 4 * quantizer.scale_count(w) - 4 * w.numel()
    return LayerRow(name, parametrize.type_before_parametrizations(module).__name__, tuple(output.shape[1:]), weight_bits, input_bits, params,
                    macs if binary else 0, 0 if binary else macs, params * 4, packed)


def _quantizer(module: nn.Module) -> Quantizer | None:
    """The quantizer BinOp applies to the module's weight, if any."""
    if not parametrize.is_parametrized(module, "weight"):
        return None
    return getattr(module.parametrizations.weight[0], "quantizer", None)


def _macs(module: nn.Module, output: torch.Tensor) -> int:
    per_sample = output[0].numel() if output.dim() > 1 else output.numel()
    if isinstance(module, nn.modules.conv._ConvNd):
        return per_sample * (module.in_channels // module.groups) * math.prod(module.kernel_size)
    if isinstance(module, nn.Linear):
        return per_sample * module.in_features
    return 0


def _bits(bits: int | None) -> str:
    return "" if bits is None else f"{bits}-bit"
