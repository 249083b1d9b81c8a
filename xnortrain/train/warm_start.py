"""Starting a run from the real weights of an earlier one (`model.init_from`).

Two-stage training for binary networks (Martinez et al., "Training binary neural networks
with real-to-binary convolutions", ICLR 2020) trains binary activations with real weights
first, then binary weights starting from that model. Only the weights carry over: the
optimizer, the schedule and the position start fresh, unlike `--resume`. Loading is
strict; the keys `model.init_exclude` matches (shell-style globs) keep their fresh init.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from pathlib import Path

from torch import nn

from ..errors import CheckpointError, ConfigError
from ..serialization import state_dict_differences
from .checkpoint import load_checkpoint


def init_from_checkpoint_(model: nn.Module, path: str | Path, exclude: list[str] = ()) -> list[str]:
    """Load the real weights of checkpoint `path` into `model`, in place, except the keys that
    match a glob of `exclude`; returns the keys loaded. With BinOp attached (the plain model's
    keys, and the input thresholds of `rsign` among the parameters), then `binop.project_()`
    projects the loaded weights as BinOp does a fresh init."""
    try:
        weights = load_checkpoint(path)["model"]
    except CheckpointError as err:
        raise CheckpointError(f"model.init_from: {err}") from None
    expected = model.state_dict()
    unused = [g for g in exclude if not any(fnmatchcase(k, g) for k in (*expected, *weights))]
    if unused:
        raise ConfigError(f"model.init_exclude: {', '.join(map(repr, unused))} matches no key of the model "
                          f"or of {path} (keys look like {next(iter(expected))})")
    kept = {k: v for k, v in weights.items() if not _excluded(k, exclude)}
    differences = state_dict_differences(kept, {k: v for k, v in expected.items() if not _excluded(k, exclude)},
                                         shown=8)
    if differences:
        raise CheckpointError(f"model.init_from: {path} does not fit the model ({differences}); "
                              f"leave such keys out with model.init_exclude")
    model.load_state_dict(kept, strict=False)
    return list(kept)


def _excluded(key: str, exclude: list[str]) -> bool:
    return any(fnmatchcase(key, g) for g in exclude)
