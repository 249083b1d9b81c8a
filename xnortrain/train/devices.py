"""The training device, and the dtype every accumulator on it adds up in.

`train.device: auto` picks CUDA, then Apple's MPS, then the CPU. Metric sums, the
non-finite guard's record and the sums agreed over processes are accumulators: they add
up in float64, so that a run resumed mid-epoch adds up to the same bits, except on a
device without float64 (MPS), where they add up in float32. `accumulator_dtype` is the one
place that decides; nothing else in the trainer makes a float64 tensor on the device.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError

WITHOUT_FLOAT64 = {"mps"}  # device types that have no float64 tensors


def accumulator_dtype(device: torch.device) -> torch.dtype:
    """float64, or float32 on a device type in `WITHOUT_FLOAT64`."""
    return torch.float32 if device.type in WITHOUT_FLOAT64 else torch.float64


def select_device(name: str) -> torch.device:
    """The device `train.device` names (auto: cuda, then mps, then cpu); an unavailable one is a ConfigError."""
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": _mps_available()}
    if name == "auto":
        return torch.device(next(kind for kind in ("cuda", "mps", "cpu") if available[kind]))
    if not available[name]:
        raise ConfigError(f"train.device: {name!r} is not available on this machine (use auto or cpu)")
    return torch.device(name)


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
