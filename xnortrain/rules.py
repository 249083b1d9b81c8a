"""Choosing by name: registries of small frozen-dataclass classes, their options, and rules
that give each layer its choice by a glob over its fully qualified name.

The weight quantizers (`quantizers.py`) and the input quantizers (`activations.py`) are
both chosen this way, from a name (``"xnor"``), a mapping with options
(``{"name": "xnor", "scale": "layer"}``) or a list of rules
(``[{"match": "layer4.*", "quantizer": "sign"}, {"match": "*", "quantizer": "xnor"}]``,
first match wins). Each bad choice is one ValueError naming what would be valid.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from fnmatch import fnmatchcase
from typing import TypeVar

T = TypeVar("T")


def from_mapping(spec: Mapping, registry: Mapping[str, type[T]], kind: str) -> T:
    """``registry[spec["name"]](**options)``; an unknown name or option names the valid ones."""
    options = dict(spec)
    name = options.pop("name", None)
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}: choose one of {', '.join(registry)}")
    cls = registry[name]
    valid = [f.name for f in fields(cls)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"{kind} {name}: unknown option(s) {', '.join(unknown)}; valid: {', '.join(valid) or 'none'}")
    return cls(**options)


def assign_by_rules(names: Sequence[str], spec, make: Callable[[object], T], key: str) -> dict[str, T]:
    """The choice of each name. `spec` is one choice for all (passed to `make`), or a list of
    rules ``{"match": glob, key: name, **options}`` where the first matching rule wins."""
    if not isinstance(spec, Sequence) or isinstance(spec, str):
        choice = make(spec)
        return {name: choice for name in names}
    rules = [(_rule_pattern(rule, key), make(_rule_spec(rule, key))) for rule in spec]
    chosen, unmatched = {}, []
    for name in names:
        match = next((i for i, (pattern, _) in enumerate(rules) if fnmatchcase(name, pattern)), None)
        if match is None:
            unmatched.append(name)
        else:
            chosen[name] = rules[match][1]
    if unmatched:
        raise ValueError(f"{key} rules match no rule for {', '.join(unmatched)}; "
                         f"add a last rule such as {{match: '*', {key}: <name>}}")
    return chosen


def check_type(kind: str, option: str, value, types: tuple[type, ...]) -> None:
    wrong_bool = isinstance(value, bool) and bool not in types
    if wrong_bool or not isinstance(value, types):
        expected = "true or false" if types == (bool,) else "a number"
        raise ValueError(f"{kind}: {option} must be {expected}, got {value!r}")


def check_choice(kind: str, option: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{kind}: {option} {value!r} is not one of {', '.join(choices)}")


def _rule_pattern(rule, key: str) -> str:
    if not isinstance(rule, Mapping) or not isinstance(rule.get("match"), str):
        raise ValueError(f"{key} rule {rule!r}: needs `match: <glob>` and `{key}: <name>`")
    return rule["match"]


def _rule_spec(rule: Mapping, key: str) -> dict:
    if key not in rule:
        raise ValueError(f"{key} rule {dict(rule)!r}: needs `{key}: <name>`")
    return {"name": rule[key], **{k: v for k, v in rule.items() if k not in ("match", key)}}
