"""torchvision is optional: import, BinOp and the zoo need torch alone; what needs it says so in one line."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from xnortrain.errors import MissingDependency
from xnortrain.model_factory import build_model
from xnortrain.train.data import DataSpec, build_data
from xnortrain.train.idx import DEBIAN_FASHION_MNIST


@pytest.fixture
def without_torchvision(monkeypatch):
    """Imports of torchvision fail, as where the `vision` extra is not installed."""
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torchvision", None)


def test_binop_and_the_zoo_work_without_torchvision():
    code = ("import sys; sys.modules['torchvision'] = None\n"
            "import torch, xnortrain\n"
            "from xnortrain.zoo import create_model\n"
            "model = create_model('lenet5', num_classes=10, in_channels=1)\n"
            "binop = xnortrain.BinOp(model)\n"
            "model(torch.randn(2, 1, 28, 28)).sum().backward()\n"
            "print(len(binop.targets))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout) > 0


def test_a_torchvision_model_without_torchvision_is_one_line(without_torchvision):
    with pytest.raises(MissingDependency, match=r"torchvision:resnet18 needs torchvision.*xnortrain\[vision\]"):
        build_model("torchvision:resnet18", {}, 10, 3)


def test_a_torchvision_data_set_without_torchvision_is_one_line(tmp_path, without_torchvision):
    with pytest.raises(MissingDependency, match=r"data.name cifar10 needs torchvision.*xnortrain\[vision\]"):
        build_data(DataSpec("cifar10", root=str(tmp_path)), seed=0)


@pytest.mark.realdata
@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="needs apt-get install dataset-fashion-mnist")
def test_fashion_mnist_reads_debians_copy_without_torchvision(tmp_path, without_torchvision):
    data = build_data(DataSpec("fashion_mnist", root=str(tmp_path / "empty")), seed=0)
    assert (data.train.num_samples, data.eval.num_samples) == (60000, 10000)
    assert next(data.eval.batches(0))[0].dtype == torch.float32
