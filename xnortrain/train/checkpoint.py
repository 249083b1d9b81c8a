"""Training checkpoints: plain dicts of state_dicts plus a format version, written atomically.

A checkpoint holds the model's real weights (BinOp keeps the plain model's keys and
never exposes W~), the optimizer, scheduler and grad-scaler states, where the run stands
(epoch, batches done in it, global step, the running sums of the epoch's training
metrics), the RNG states, the best metric and the resolved config. Loading uses
`torch.load(weights_only=True)`, which refuses pickles that would run code.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..serialization import atomic_write, safe_load

FORMAT_VERSION = 2  # 2: binop.activations says which layer inputs are binary
REQUIRED_KEYS = ("model", "optimizer", "scheduler", "scaler", "epoch", "step", "global_step", "best_acc1", "running",
                 "rng", "config")


def save_checkpoint(path: str | Path, state: dict) -> None:
    atomic_write(path, lambda f: torch.save({"version": FORMAT_VERSION, **state}, f))


def load_checkpoint(path: str | Path) -> dict:
    """Read and sanity-check a checkpoint; every failure is one CheckpointError line."""
    path = Path(path)
    state = safe_load(path, "checkpoint")
    if not isinstance(state, dict) or "version" not in state:
        raise CheckpointError(f"{path} is not an xnortrain checkpoint (no format version)")
    if state["version"] != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {state['version']}, "
                              f"this xnortrain reads version {FORMAT_VERSION}")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}: not a complete xnortrain checkpoint")
    return state


def rng_state() -> dict:
    """Python, NumPy (when installed), torch and CUDA RNG states, in weights_only-safe types."""
    version, mt_state, gauss = random.getstate()
    state = {"python": [version, list(mt_state), gauss], "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np
    except ImportError:
        return state
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state["numpy"] = [kind, torch.from_numpy(keys.astype("int64")), pos, has_gauss, cached]
    return state


def set_rng_state(state: dict) -> None:
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, cached))
