"""The README's Python snippets run as written, in order, given the names they leave to the
reader: a `loader` of batches, a user's `model` of their own package and an input batch `x`."""

import re
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from xnortrain.deploy import compile_package, export_model, kernels

README = Path(__file__).resolve().parent.parent / "README.md"
USER_PACKAGE = '''
import torch
from torch import nn

class MyNet(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.body = nn.Sequential(nn.BatchNorm2d(16), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.head(self.body(self.stem(x)).mean((2, 3)))
'''


def python_snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_every_python_snippet_of_the_readme_runs(tmp_path, monkeypatch):
    snippets = python_snippets()
    assert len(snippets) == 3, "the README's Python snippets changed: give this test their names"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mypackage").mkdir()
    (tmp_path / "mypackage" / "__init__.py").write_text("")
    (tmp_path / "mypackage" / "models.py").write_text(textwrap.dedent(USER_PACKAGE))
    monkeypatch.syspath_prepend(str(tmp_path))
    gen = torch.Generator().manual_seed(0)
    loader = [(torch.randn(8, 1, 28, 28, generator=gen), torch.randint(0, 10, (8,), generator=gen)) for _ in range(2)]

    training = {"loader": loader}
    exec(snippets[0], training)  # BinOp on the zoo's LeNet-5, a training loop, the state_dict saved
    assert Path("model.pt").is_file()

    from mypackage.models import MyNet
    deployment = {"model": MyNet(), "x": torch.randn(2, 3, 32, 32, generator=gen)}
    try:
        exec(snippets[1], deployment)  # a user's model: BinOp, export, load on the kernels
    finally:  # the package lives in this test's folder only
        sys.modules.pop("mypackage.models", None)
        sys.modules.pop("mypackage", None)
    fast = deployment["fast"].eval()
    with torch.no_grad():
        assert fast(deployment["x"]).shape == (2, 10)

    export_model(training["binop"], "lenet.xnor.pt", name="lenet5", kwargs={}, num_classes=10,
                 input_shape=(1, 28, 28))  # what `python -m xnortrain export` writes for the third snippet
    problem = kernels.load()
    if problem is not None:
        pytest.skip(f"the third snippet loads a package, which needs the native kernels: {problem}")
    compile_package("lenet.xnor.pt", "lenet.pt2")  # what `python -m xnortrain package` writes
    loading = {}
    exec(snippets[2], loading)
    images = torch.randn(4, 1, 28, 28, generator=gen)
    with torch.no_grad():
        expected = loading["model"](images).argmax(1)
        assert torch.equal(loading["fast"](images).argmax(1), expected)
        assert torch.equal(loading["fastest"](images).argmax(1), expected)

