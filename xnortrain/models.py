"""Building the model a config names, and attaching the BinOp its `binop` section asks for.

    lenet5 | nin | alexnet            the zoo (xnortrain/zoo.py), num_classes and in_channels set from the data
    torchvision:<name>                torchvision.models.get_model(name, num_classes=...)
    package.module:Class              Class(**model.kwargs), imported from the Python path

The trainer, export and summary all build their model here.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import NamedTuple

from torch import nn

from .binop import BinOp
from .config import Config, ModelConfig, build_config
from .errors import CheckpointError, ConfigError
from .optional import require
from .zoo import ZOO, create_model


class TrainedModel(NamedTuple):
    """A model rebuilt from a checkpoint: its real weights loaded, BinOp attached as it trained."""

    model: nn.Module
    binop: BinOp | None  # None where the run trained without it
    config: Config
    num_classes: int
    input_shape: tuple[int, ...]


def build_model(config: ModelConfig, num_classes: int, in_channels: int) -> nn.Module:
    name, kwargs = config.name, dict(config.kwargs)
    if name in ZOO:
        return _construct(name, create_model, name, **{"num_classes": num_classes, "in_channels": in_channels, **kwargs})
    if name.startswith("torchvision:"):
        return _torchvision_model(name.removeprefix("torchvision:"), num_classes, kwargs)
    if ":" in name:
        return _construct(name, _import_class(name), **kwargs)
    raise ConfigError(f"model.name: {name!r} is not a zoo model ({', '.join(sorted(ZOO))}), "
                      f"nor torchvision:<name>, nor package.module:Class")


def attach_binop(config: Config, model: nn.Module) -> BinOp:
    """BinOp on `model` as the config's `binop` section says; a bad selection is one ConfigError."""
    b = config.binop
    try:
        return BinOp(model, include=b.include, exclude=b.exclude, skip_first_last=b.skip_first_last, grad=b.grad,
                     quantizer=b.quantizer, params=b.params)
    except ValueError as err:  # a selection that matches nothing names the candidates
        raise ConfigError(f"binop ({config.model.name}): {err}") from None


def model_from_checkpoint(path: str | Path) -> TrainedModel:
    """The model a training checkpoint holds, built from the config stored in it (on the CPU)."""
    from .checkpoint import check_fits_model, load_checkpoint

    state = load_checkpoint(path)
    config = build_config(state["config"])
    shape = state.get("data_shape")
    if shape is None:
        raise CheckpointError(f"{path} does not record its number of classes and input shape (data_shape); "
                              f"re-save it by resuming it for one more epoch: python -m xnortrain --config "
                              f"{Path(path).parent / 'config.yaml'} --resume {path} "
                              f"--set train.epochs={state['epoch'] + 1}")
    model = build_model(config.model, shape["num_classes"], shape["input_shape"][0])
    binop = attach_binop(config, model) if config.binop.enabled else None
    check_fits_model(path, state["model"], model)
    model.load_state_dict(state["model"])
    return TrainedModel(model, binop, config, shape["num_classes"], tuple(shape["input_shape"]))


def _torchvision_model(name: str, num_classes: int, kwargs: dict) -> nn.Module:
    torchvision = require("torchvision", "vision", f"model.name torchvision:{name}")
    available = torchvision.models.list_models()
    if name not in available:
        raise ConfigError(f"model.name: torchvision has no model {name!r} (e.g. {', '.join(available[:6])}, ...)")
    return _construct(f"torchvision:{name}", torchvision.models.get_model, name, **{"num_classes": num_classes, **kwargs})


def _import_class(spec: str):
    module_name, _, class_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"model.name: cannot import module {module_name!r} ({err})") from None
    if not hasattr(module, class_name):
        raise ConfigError(f"model.name: module {module_name!r} has no attribute {class_name!r}")
    return getattr(module, class_name)


def _construct(label: str, factory, *args, **kwargs) -> nn.Module:
    try:
        model = factory(*args, **kwargs)
    except (TypeError, ValueError) as err:  # a kwarg the model does not take, or a value it refuses
        raise ConfigError(f"model.kwargs: {label}: {err}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.name: {label} built a {type(model).__name__}, not an nn.Module")
    return model
