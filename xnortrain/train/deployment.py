"""A training run handed to deployment: export a checkpoint, summarize a configured model.

    python -m xnortrain export --checkpoint runs/x/best.pt --out model.xnor.pt [--check-data]
    python -m xnortrain export --checkpoint runs/x/best.pt --out model.onnx --format onnx
    python -m xnortrain summary --config FILE | --checkpoint runs/x/best.pt

Both are pure functions of the checkpoint or config and their flags: the data set is read
only where `--check-data` asks for it (to store the float tensors as float16 where the
predictions on the first `CHECK_SAMPLES` evaluation inputs stay those of float32), and the
summary takes its input shape from the checkpoint, or from the config's data set as it is
declared (`data.declared_shape`). The ONNX file is written from the packed file's float
path (`deploy.onnx_export`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from ..deploy import export_model
from ..deploy.onnx_export import export_onnx
from ..deploy.summary import Summary, summary
from ..errors import UserError
from ..rules import check_choice
from .config import Config
from .configured_model import attach_binop, configured_model, model_from_checkpoint
from .data import build_data, declared_shape

CHECK_SAMPLES = 1000
FORMATS = ("packed", "onnx")


def export_checkpoint(checkpoint: str | Path, out: str | Path, check_data: bool = False,
                      format: str = "packed") -> dict:
    """Write the exported model of a training checkpoint to `out`, as the packed file (`format`
    "packed") or as the ONNX file of that file's float path ("onnx"); returns both file sizes."""
    check_choice("export", "format", format, FORMATS)
    if format == "packed":
        exported = export_packed(checkpoint, out, check_data)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            packed = Path(tmp) / "model.xnor.pt"
            export_packed(checkpoint, packed, check_data)
            exported = export_onnx(packed, out)
    return {"checkpoint_bytes": Path(checkpoint).stat().st_size, "exported_bytes": exported}


def export_packed(checkpoint: str | Path, out: str | Path, check_data: bool) -> int:
    """Write the packed model of a training checkpoint to `out`; returns its size in bytes."""
    trained = model_from_checkpoint(checkpoint)
    if trained.binop is None:
        raise UserError(f"{checkpoint}: this run trained without BinOp (binop.enabled: false); nothing to pack")
    model = trained.config.model
    return export_model(trained.binop, out, name=model.name, kwargs=model.kwargs, num_classes=trained.num_classes,
                        input_shape=trained.input_shape,
                        check_inputs=evaluation_inputs(trained.config) if check_data else None)


def evaluation_inputs(config: Config) -> torch.Tensor:
    """The first CHECK_SAMPLES inputs of the run's evaluation data (a DataError where it is missing)."""
    data = build_data(config.data, seed=config.train.seed)
    batches, count = [], 0
    for x, _ in data.eval.batches(0):
        batches.append(x)
        count += len(x)
        if count >= CHECK_SAMPLES:
            break
    return torch.cat(batches)[:CHECK_SAMPLES]


def summary_of_config(config: Config) -> Summary:
    """The summary of a config's model (BinOp attached as the config says), for its data set's
    declared input shape."""
    num_classes, input_shape = declared_shape(config.data)
    model = configured_model(config, num_classes, input_shape)
    if config.binop.enabled:
        attach_binop(config, model, input_shape)
    return summary(model, _sample(input_shape))


def summary_of_checkpoint(path: str | Path) -> Summary:
    """The summary of the trained model a checkpoint holds, for the input shape it records."""
    trained = model_from_checkpoint(path)
    return summary(trained.model, _sample(trained.input_shape))


def _sample(input_shape: tuple[int, ...]) -> torch.Tensor:
    return torch.zeros(1, *input_shape).normal_(generator=torch.Generator().manual_seed(0))
