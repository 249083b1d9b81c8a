"""The ONNX file: an exported model's float path as a standard ONNX graph, for the runtimes
of the ecosystem (onnxruntime, OpenVINO, ...).

It holds what `load_exported(path)` computes: each binary weight as W~ = alpha * sign(W) in
float32, and each binary input as sign(x) with sign(0) = sign(-0.0) = +1, traced from the
forward pre-hooks that binarize it (`activations.BinaryInputs`; `quantizers.sign_pm1` traces
as 1 - 2 * 1{x < 0}, a compare, a cast and arithmetic), with XNOR-Net's scale K (its forward
hook) where the file records one. The batch dimension is dynamic. The graph is written by
`torch.onnx.export` (the torch.export-based exporter, which needs onnxscript), checked with
`onnx.checker.check_model`, and written atomically.

The packed file (`export.py`) stays the small and fast one: the ONNX file holds 32 bits per
binary weight, and standard runtimes compute float convolutions where the XNOR-popcount
kernels compute integer ones. onnx and onnxscript are optional (the ``bench`` extra).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..optional import require
from ..serialization import atomic_write
from .export import exported_spec, load_exported

FEATURE = "ONNX export"


def export_onnx(packed: str | Path, out: str | Path) -> int:
    """Write the ONNX file of the packed file `packed` (its float path, `load_exported(packed)`)
    to `out`; returns its size in bytes."""
    proto = onnx_model(load_exported(packed), exported_spec(packed)["input_shape"])
    atomic_write(out, lambda f: f.write(proto.SerializeToString()))
    return Path(out).stat().st_size


def onnx_model(model: nn.Module, input_shape: tuple[int, ...] | list[int]):
    """The checked ONNX graph (an `onnx.ModelProto`) of `model` in eval mode, for an input
    ``input`` of shape (batch, *input_shape) with a dynamic batch, and one output ``logits``."""
    onnx = require("onnx", "bench", FEATURE)
    require("onnxscript", "bench", FEATURE)  # torch.onnx's exporter translates with it
    example = torch.zeros(2, *input_shape)  # batch 2: a batch of 1 would be specialized to 1
    program = torch.onnx.export(model.eval(), (example,), dynamo=True, external_data=False, verbose=False,
                                dynamic_shapes=({0: torch.export.Dim("batch")},),
                                input_names=["input"], output_names=["logits"])
    proto = program.model_proto
    onnx.checker.check_model(proto, full_check=True)
    return proto
