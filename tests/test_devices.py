"""Any device: the accumulators' dtype is decided in one place, and a device without float64
(Apple's MPS) trains, evaluates and resumes exactly on the float32 path."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from test_train import assert_same_run, config_for, interrupted_and_resumed
from torch.overrides import TorchFunctionMode

from xnortrain.train import devices
from xnortrain.train.loop import fit

PACKAGE = Path(__file__).parent.parent / "xnortrain"


class Float64Watch(TorchFunctionMode):
    """Records each torch function or tensor method that returns a float64 tensor."""

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for value in result if isinstance(result, (tuple, list)) else (result,):
            if isinstance(value, torch.Tensor) and value.dtype == torch.float64:
                self.seen.add(getattr(func, "__qualname__", repr(func)))
        return result


@pytest.fixture
def no_float64(monkeypatch):
    """The CPU treated as a device without float64, as MPS is."""
    monkeypatch.setattr(devices, "WITHOUT_FLOAT64", {*devices.WITHOUT_FLOAT64, "cpu"})


def test_accumulators_are_float64_where_the_device_has_it_and_float32_elsewhere():
    assert devices.accumulator_dtype(torch.device("cpu")) == torch.float64
    assert devices.accumulator_dtype(torch.device("mps")) == torch.float32


def test_a_run_without_float64_makes_no_float64_tensor_and_resumes_exactly(tmp_path, monkeypatch, no_float64):
    watch = Float64Watch()
    with watch:
        fit(config_for(tmp_path / "straight"), quiet=True)
    assert watch.seen == set()

    interrupted_and_resumed(monkeypatch, config_for(tmp_path / "stopped"), 9)  # mid-epoch: the sums go through last.pt
    assert_same_run(tmp_path / "straight", tmp_path / "stopped")


def test_the_watch_sees_the_float64_accumulators_of_a_device_that_has_it(tmp_path):
    watch = Float64Watch()
    with watch:
        fit(config_for(tmp_path, "train.epochs=1"), quiet=True)
    assert watch.seen  # the check above can fail


def test_no_module_but_devices_names_float64():
    pattern = re.compile(r"float64|\.double\(|torch\.double\b")
    offenders = [f"{path.relative_to(PACKAGE)}:{n}" for path in sorted(PACKAGE.rglob("*.py")) if path.name != "devices.py"
                 for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []
