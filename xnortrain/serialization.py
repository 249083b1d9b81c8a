"""Files the package writes and reads: atomic writes, the weights-only loader, and the check
that a state_dict fits a model.

Every file is written to a temporary file beside its path, flushed and fsynced, then moved
into place with `os.replace`, so a kill leaves the old file or the new one, never half of
one. Every file is read with `torch.load(weights_only=True)`, which refuses pickles that
would run code; each way a file can be bad is one `CheckpointError` line.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError


def atomic_write(path: str | Path, write) -> None:
    """Call `write(file_object)` on a temporary file beside `path`, fsync, then os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def safe_load(path: Path, what: str):
    """torch.load with the weights_only loader; a missing, damaged or code-running file is one
    CheckpointError line naming `what` and `path`."""
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist")
    try:
        with warnings.catch_warnings():  # torch warns of any pickle protocol above 2, loadable or not
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{what} {path} was refused by the safe loader (it is damaged, or it holds "
                              f"objects that could run code on load): {_refusal_reason(err)}") from None
    except Exception as err:  # the loader parses any bytes it is given: each failure means a bad file
        raise CheckpointError(f"{what} {path} is damaged or not a PyTorch file ({type(err).__name__})") from None


def _refusal_reason(err: pickle.UnpicklingError) -> str:
    """The safe loader's own reason, the first line after "WeightsUnpickler error:" in torch's
    message (past its advice to load unsafely); the message's first line otherwise."""
    text = str(err)
    _, marker, reason = text.partition("WeightsUnpickler error:")
    lines = [line.strip() for line in (reason if marker else text).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def check_fits_model(path: str | Path, weights: dict, model: nn.Module) -> None:
    """Refuse, naming the first differences, a state_dict written for another architecture."""
    details = state_dict_differences(weights, model.state_dict())
    if details:
        raise CheckpointError(f"checkpoint {path} was written for a different model ({details})")


def state_dict_differences(weights: dict, expected: dict, shown: int = 3) -> str:
    """The keys missing from `weights`, those `expected` lacks and those of another shape
    (the first `shown` of each), as one line; empty where the two fit."""
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    mismatched = [f"{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                  if k in weights and weights[k].shape != v.shape]
    return "; ".join(
        f"{label}: {', '.join(items[:shown])}{' ...' if len(items) > shown else ''}"
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", mismatched)) if items
    )
