"""Building the model a config names, and attaching the BinOp its `binop` section asks for.

    lenet5 | nin | alexnet            the zoo (xnortrain/zoo.py), num_classes and in_channels set from the data
    torchvision:<name>                torchvision.models.get_model(name, num_classes=...)
    package.module:Class              Class(**model.kwargs), imported from the Python path

The trainer, export and summary all build their model here.
"""

from __future__ import annotations

import importlib

from torch import nn

from .binop import BinOp
from .config import Config, ModelConfig
from .errors import ConfigError
from .optional import require
from .zoo import ZOO, create_model


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
    except TypeError as err:
        raise ConfigError(f"model.kwargs: {label} rejects {sorted(kwargs)}: {err}") from None
    except ValueError as err:  # a kwarg of the right name with a value the model refuses
        raise ConfigError(f"model.kwargs: {label}: {err}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.name: {label} built a {type(model).__name__}, not an nn.Module")
    return model
