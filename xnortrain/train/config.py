"""The run configuration: typed, frozen, strict.

A YAML file with the sections `model`, `data`, `binop`, `optim`, `schedule`, `train`, `distill`,
plus `--set section.key=value` overrides (the value parsed as YAML), becomes a frozen
`Config`. Every key is checked against the dataclass field's type and, where the field
has a fixed set of choices, against those; an unknown key or a bad value raises a
`ConfigError` whose one line names the key path and what would be valid.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..activations import assign_input_quantizers
from ..errors import ConfigError
from ..quantizers import assign_quantizers
from .data import DATA_SETS, DataSpec
from .tensorboard_log import require_tensorboard


@dataclass(frozen=True)
class ModelConfig:
    name: str = "lenet5"  # zoo name | torchvision:<name> | package.module:Class
    kwargs: dict = field(default_factory=dict)
    init_from: str | None = None  # a checkpoint whose real weights the model starts from (not resume)
    init_exclude: list[str] = field(default_factory=list)  # globs of state_dict keys that keep their fresh init


# The data section is the data module's own spec (validated there): one definition of its keys.
DataConfig = DataSpec


@dataclass(frozen=True)
class BinOpConfig:
    enabled: bool = True
    include: list[str] | None = None
    exclude: list[str] | None = None
    skip_first_last: bool = True
    grad: str = "xnor"
    quantizer: str | dict | list = "xnor"  # a name, {name: ..., options}, or rules [{match, quantizer, ...}]
    params: list[str] = field(default_factory=list)
    activations: str | dict | list = "none"  # input quantizer: none, sign, approx_sign, {name, scale}, or rules


@dataclass(frozen=True)
class OptimConfig:
    name: str = "adam"
    lr: float = 0.01
    weight_decay: float = 1e-5
    binary_weight_decay: float | None = None  # of the real weights BinOp binarizes (null: weight_decay)
    momentum: float = 0.9
    nesterov: bool = False
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass(frozen=True)
class ScheduleConfig:
    name: str = "multistep"
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    step_size: int = 30
    warmup_epochs: int = 0
    interval: str = "epoch"  # how often the learning rate changes: each "epoch" or each optimizer "step"


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    amp: str = "none"
    grad_clip: float | None = None
    label_smoothing: float = 0.0
    eval_every: int = 1
    checkpoint_every_steps: int | None = None
    nonfinite: str = "stop"  # a NaN/inf loss: stop with an error, or skip that step
    compile: bool = False  # torch.compile the training forward (BinOp attached first)
    log_every: int = 50  # steps between host reads of the running metrics (progress bar, TensorBoard)
    tensorboard: bool = False  # TensorBoard event files in out_dir (needs the tensorboard extra)
    out_dir: str | None = None  # default: runs/<config file stem>


@dataclass(frozen=True)
class DistillConfig:
    teacher: str | None = None  # a checkpoint this trainer wrote; None: no distillation
    weight: float = 0.5  # w in (1 - w) * CE + w * T^2 * KL(teacher || student)
    temperature: float = 1.0  # T, softening both distributions


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    binop: BinOpConfig = field(default_factory=BinOpConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


CHOICES: dict[str, tuple[str, ...]] = {
    "data.name": DATA_SETS,
    "binop.grad": ("xnor", "exact", "ste"),
    "optim.name": ("adam", "adamw", "sgd"),
    "schedule.name": ("multistep", "step", "cosine", "linear", "none"),
    "schedule.interval": ("epoch", "step"),
    "train.device": ("auto", "cpu", "cuda", "mps"),
    "train.amp": ("none", "bf16", "fp16"),
    "train.nonfinite": ("stop", "skip"),
}

POSITIVE = {"optim.lr", "schedule.step_size", "train.epochs", "train.eval_every", "train.checkpoint_every_steps",
            "train.grad_clip", "train.log_every", "distill.temperature"}
NON_NEGATIVE = {"optim.weight_decay", "optim.binary_weight_decay", "optim.momentum", "schedule.gamma",
                "schedule.warmup_epochs", "train.label_smoothing"}
UNIT_INTERVAL = {"distill.weight"}
RULES = {"binop.quantizer": lambda spec: assign_quantizers([], spec, "xnor"),
         "binop.activations": lambda spec: assign_input_quantizers([], spec)}


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Read a YAML config (or start from the defaults), apply `key.path=value` overrides, validate."""
    raw: dict = {}
    if path is not None:
        raw = _read_yaml(Path(path))
    for override in overrides:
        _apply_override(raw, override)
    config = build_config(raw)
    if config.train.out_dir is None:
        stem = Path(path).stem if path is not None else "default"
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, out_dir=f"runs/{stem}"))
    return config


def build_config(raw: dict) -> Config:
    """A validated Config from nested dicts (unknown keys and bad values raise ConfigError)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(raw).__name__}")
    sections = {f.name: f.type for f in dataclasses.fields(Config)}
    _reject_unknown(raw, sections, "")
    built = {}
    for name, section_cls in typing.get_type_hints(Config).items():
        values = raw.get(name) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"config section {name!r} must be a mapping of keys, got {values!r}")
        built[name] = _build_section(section_cls, values, name)
    return Config(**built)


def dump_config(config: Config, path: Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    from ..serialization import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


class _YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading an exponent without a decimal point (`1e-5`) as the
    number it is in YAML 1.2, not as the string PyYAML's YAML 1.1 makes of it."""


_YamlLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
                                  list("-+0123456789"))


def _parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_YamlLoader)


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = _parse_yaml(path.read_text())
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{line}: {getattr(err, 'problem', err)}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections (model, data, ...)")
    return raw


def _apply_override(raw: dict, override: str) -> None:
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {override!r} must look like section.key=value, e.g. train.epochs=1")
    parts = key.strip().split(".")
    if len(parts) != 2:
        raise ConfigError(f"--set key {key!r} must be section.key, e.g. optim.lr")
    try:
        value = _parse_yaml(text)
    except yaml.YAMLError:
        raise ConfigError(f"--set {key}: value {text!r} is not valid YAML") from None
    section = raw.setdefault(parts[0], {})
    if not isinstance(section, dict):
        raise ConfigError(f"config section {parts[0]!r} must be a mapping of keys")
    section[parts[1]] = value


def _reject_unknown(values: dict, valid: dict, prefix: str) -> None:
    for key in values:
        if key not in valid:
            what = f"key in {prefix[:-1]}" if prefix else "section"
            raise ConfigError(f"unknown config {what}: {prefix}{key} (valid: {', '.join(valid)})")


def _build_section(cls, values: dict, section: str):
    hints = typing.get_type_hints(cls)
    _reject_unknown(values, hints, section + ".")
    checked = {key: _check_value(f"{section}.{key}", hints[key], value) for key, value in values.items()}
    return cls(**checked)


def _check_value(path: str, hint, value: Any) -> Any:
    value = _coerce(path, hint, value)
    if path in CHOICES and value not in CHOICES[path]:
        raise ConfigError(f"{path}: {value!r} is not one of {', '.join(CHOICES[path])}")
    if value is not None and path in POSITIVE and value <= 0:
        raise ConfigError(f"{path}: must be > 0, got {value!r}")
    if value is not None and path in NON_NEGATIVE and value < 0:
        raise ConfigError(f"{path}: must be >= 0, got {value!r}")
    if path == "train.tensorboard" and value:
        require_tensorboard()
    if path in UNIT_INTERVAL and not 0 <= value <= 1:
        raise ConfigError(f"{path}: must be between 0 and 1, got {value!r}")
    if path in RULES:
        try:
            RULES[path](value)  # builds every quantizer and rule: bad options fail here
        except (ValueError, TypeError) as err:
            raise ConfigError(f"{path}: {err}") from None
    return value


def _coerce(path: str, hint, value: Any) -> Any:
    """`value` checked against the type `hint` (int accepted for float; bool never for numbers)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _coerce(path, options[0], value)
        if not isinstance(value, tuple(typing.get_origin(a) or a for a in options)):
            raise ConfigError(f"{path}: expected {' or '.join(_type_name(a) for a in options)}, got {value!r}")
        return value
    origin = typing.get_origin(hint) or hint
    if origin in (list, tuple):  # YAML has lists only; tuple[int, ...] fields take them too
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list of {_type_name(args[0])}, got {value!r}")
        return origin(_coerce(f"{path}[{i}]", args[0], v) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return value
    if origin is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, origin) or (origin is not bool and isinstance(value, bool)):
        raise ConfigError(f"{path}: expected {_type_name(origin)}, got {value!r}")
    return value


def _type_name(t) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a mapping", list: "a list"}
    return names.get(t, getattr(t, "__name__", str(t)))
