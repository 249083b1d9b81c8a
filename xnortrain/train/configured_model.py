"""The model and BinOp a config describes, and the trained model a checkpoint holds.

The model comes from `model_factory.build_model` (`model.name`, `model.kwargs`); BinOp is
attached as the config's `binop` section says, its first and last layers found by a
forward pass of a sample of the data's shape (execution order). The trainer, the
distillation teacher, export and summary all build their model here.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from ..binop import BinOp
from ..errors import CheckpointError, ConfigError
from ..model_factory import build_model
from ..serialization import check_fits_model
from .checkpoint import load_checkpoint
from .config import Config, build_config


class TrainedModel(NamedTuple):
    """A model rebuilt from a checkpoint: its real weights loaded, BinOp attached as it trained."""

    model: nn.Module
    binop: BinOp | None  # None where the run trained without it
    config: Config
    num_classes: int
    input_shape: tuple[int, ...]


def configured_model(config: Config, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """The model of `config.model` for data of `num_classes` classes and inputs of `input_shape`."""
    return build_model(config.model.name, config.model.kwargs, num_classes, input_shape[0])


def attach_binop(config: Config, model: nn.Module, input_shape: tuple[int, ...]) -> BinOp:
    """BinOp on `model` as the config's `binop` section says, the first and last layers by the
    order a forward pass of one sample of `input_shape` runs them; a bad selection is one
    ConfigError line."""
    b = config.binop
    device = next(model.parameters(), torch.empty(0)).device
    try:
        return BinOp(model, include=b.include, exclude=b.exclude, skip_first_last=b.skip_first_last, grad=b.grad,
                     quantizer=b.quantizer, params=b.params, activations=b.activations,
                     example_input=torch.zeros(1, *input_shape, device=device))
    except ValueError as err:  # a selection that matches nothing names the candidates
        raise ConfigError(f"binop ({config.model.name}): {err}") from None


def model_from_checkpoint(path: str | Path) -> TrainedModel:
    """The model a training checkpoint holds, built from the config stored in it (on the CPU)."""
    state = load_checkpoint(path)
    config = build_config(state["config"])
    shape = state.get("data_shape")
    if shape is None:
        raise CheckpointError(f"{path} does not record its number of classes and input shape (data_shape); "
                              f"re-save it by resuming it for one more epoch: python -m xnortrain --config "
                              f"{Path(path).parent / 'config.yaml'} --resume {path} "
                              f"--set train.epochs={state['epoch'] + 1}")
    num_classes, input_shape = shape["num_classes"], tuple(shape["input_shape"])
    model = configured_model(config, num_classes, input_shape)
    binop = attach_binop(config, model, input_shape) if config.binop.enabled else None
    check_fits_model(path, state["model"], model)
    model.load_state_dict(state["model"])
    return TrainedModel(model, binop, config, num_classes, input_shape)
