"""The model a name stands for, built with the number of classes and input channels of its data.

    lenet5 | nin | alexnet | ...      the zoo (`zoo.py`), num_classes and in_channels set
    torchvision:<name>                torchvision.models.get_model(name, num_classes=...)
    package.module:Class              Class(**kwargs), imported from the Python path

The trainer builds its model here from `model.name` and `model.kwargs`; an exported file
records the same name and keyword arguments, and `deploy.load_exported` rebuilds it here.
"""

from __future__ import annotations

import importlib

from torch import nn

from .errors import ConfigError
from .optional import require
from .zoo import ZOO, create_model


def build_model(name: str, kwargs: dict, num_classes: int, in_channels: int) -> nn.Module:
    """The model `name` with `kwargs`; a bad name or keyword is one ConfigError line."""
    kwargs = dict(kwargs)
    if name in ZOO:
        return _construct(name, create_model, name, **{"num_classes": num_classes, "in_channels": in_channels, **kwargs})
    if name.startswith("torchvision:"):
        return _torchvision_model(name.removeprefix("torchvision:"), num_classes, kwargs)
    if ":" in name:
        return _construct(name, _import_class(name), **kwargs)
    raise ConfigError(f"model.name: {name!r} is not a zoo model ({', '.join(sorted(ZOO))}), "
                      f"nor torchvision:<name>, nor package.module:Class")


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
