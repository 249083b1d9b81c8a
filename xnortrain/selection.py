"""Which layers BinOp binarizes: selection by fully qualified name.

Candidates are every nn.Conv1d/2d/3d and nn.Linear of the model (`model.named_modules()`).
By default all of them except the first and the last, which stay full precision as in the
XNOR-Net paper. First and last are by execution order where an example input is given (a
forward pass in eval mode, without gradients, records the order the layers run in; the
trainer always gives one), by registration order otherwise. `include` / `exclude` take
glob patterns (`fnmatch`) over the fully qualified names.
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

import torch
from torch import nn

TARGET_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def candidate_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every conv/linear layer of `model`, by fully qualified name, in registration order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, TARGET_TYPES)}


def select_targets(
    model: nn.Module,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
    skip_first_last: bool = True,
    example_input: torch.Tensor | None = None,
) -> dict[str, nn.Module]:
    """The layers to binarize, in registration order; with `skip_first_last`, the first and
    last layer that a forward pass of `example_input` runs stay out (by registration order
    without one).

    Raises ValueError, listing the candidate names, when a pattern matches no conv/linear
    layer or when the selection comes out empty.
    """
    candidates = candidate_layers(model)
    if not candidates:
        raise ValueError(
            f"{type(model).__name__} has no Conv1d/Conv2d/Conv3d/Linear layer for BinOp to binarize"
        )
    include, exclude = as_patterns("include", include), as_patterns("exclude", exclude)
    for kind, patterns in (("include", include), ("exclude", exclude)):
        for pattern in patterns or ():
            _check_pattern_matches(model, candidates, kind, pattern)

    names = list(candidates)
    if include is not None:
        names = [n for n in names if _matches_any(n, include)]
    if skip_first_last:
        order = list(candidates) if example_input is None else execution_order(model, candidates, example_input)
        ends = {order[0], order[-1]}
        names = [n for n in names if n not in ends]
    if exclude:
        names = [n for n in names if not _matches_any(n, exclude)]
    if not names:
        hint = " (skip_first_last=True keeps the first and last layers in full precision)" if skip_first_last else ""
        raise ValueError(
            f"BinOp selection include={include} exclude={exclude} selects no layer{hint}; "
            f"candidates: {_listing(candidates)}"
        )
    return {n: candidates[n] for n in names}


@torch.no_grad()
def execution_order(model: nn.Module, candidates: dict[str, nn.Module], example_input: torch.Tensor) -> list[str]:
    """The candidates in the order a forward pass of `example_input` first runs them (eval
    mode, no gradients: no running statistic or weight changes); registration order where the
    pass runs none of them."""
    order: dict[str, None] = {}
    handles = [m.register_forward_pre_hook(lambda *_, name=name: order.setdefault(name)) for name, m in candidates.items()]
    was_training = model.training
    try:
        model.eval()
        model(example_input)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return list(order) or list(candidates)


def as_patterns(kind: str, patterns: Iterable[str] | None) -> list[str] | None:
    """The patterns as a list (read once: a generator is consumed here), None left as None."""
    if patterns is None:
        return None
    if isinstance(patterns, str):
        return [patterns]
    patterns = list(patterns)
    for p in patterns:
        if not isinstance(p, str):
            raise TypeError(f"BinOp {kind} patterns must be strings, got {p!r}")
    return patterns


def _matches_any(name: str, patterns: list[str]) -> bool:
    return any(fnmatchcase(name, p) for p in patterns)


def _check_pattern_matches(model: nn.Module, candidates: dict, kind: str, pattern: str) -> None:
    if any(fnmatchcase(n, pattern) for n in candidates):
        return
    others = [
        f"{n} ({type(m).__name__})"
        for n, m in model.named_modules()
        if n and fnmatchcase(n, pattern)
    ]
    what = f"matches only layers that are not conv/linear: {', '.join(others)}" if others else "matches no layer"
    raise ValueError(f"BinOp {kind} pattern {pattern!r} {what}; candidates: {_listing(candidates)}")


def _listing(candidates: dict[str, nn.Module]) -> str:
    return ", ".join(f"{n} ({type(m).__name__})" for n, m in candidates.items())
