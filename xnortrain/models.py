"""Building the model a config names: a zoo model, a torchvision model, or a user's class.

    lenet5 | nin | alexnet            the zoo (xnortrain/zoo.py), num_classes and in_channels set from the data
    torchvision:<name>                torchvision.models.get_model(name, num_classes=...)
    package.module:Class              Class(**model.kwargs), imported from the Python path
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import NamedTuple

from torch import nn

from .config import Config, ModelConfig, build_config
from .errors import ConfigError
from .zoo import ZOO, create_model


class TrainedModel(NamedTuple):
    """A model rebuilt from a checkpoint: its real weights loaded, BinOp attached as it trained."""

    model: nn.Module
    binop: object  # BinOp, or None where the run trained without it
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


def model_from_checkpoint(path: str | Path) -> TrainedModel:
    """The model a training checkpoint holds, built from the config stored in it (on the CPU)."""
    from .checkpoint import check_fits_model, load_checkpoint
    from .data import build_data
    from .train import attach_binop

    state = load_checkpoint(path)
    config = build_config(state["config"])
    shape = state.get("data_shape")
    if shape is None:  # a checkpoint from before data_shape was stored: ask the data
        data = build_data(config.data, seed=config.train.seed)
        shape = {"num_classes": data.num_classes, "input_shape": list(data.input_shape)}
    model = build_model(config.model, shape["num_classes"], shape["input_shape"][0])
    binop = attach_binop(config, model) if config.binop.enabled else None
    check_fits_model(path, state["model"], model)
    model.load_state_dict(state["model"])
    return TrainedModel(model, binop, config, shape["num_classes"], tuple(shape["input_shape"]))


def _torchvision_model(name: str, num_classes: int, kwargs: dict) -> nn.Module:
    import torchvision

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
    except TypeError as err:
        raise ConfigError(f"model.kwargs: {label} rejects {sorted(kwargs)}: {err}") from None
    except ValueError as err:  # a kwarg of the right name with a value the model refuses
        raise ConfigError(f"model.kwargs: {label}: {err}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.name: {label} built a {type(model).__name__}, not an nn.Module")
    return model
