"""The compiled package (`deploy.package`): an AOTInductor .pt2 of the kernels' model that
predicts as the loaded model at any batch size, and refuses what it cannot run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_export import CASES, trained
from test_kernels import environment_without_compilers
from torch import nn

from xnortrain.__main__ import main
from xnortrain.deploy import compile_package, kernels, load_exported, load_package
from xnortrain.deploy.package import KERNELS_KEY
from xnortrain.errors import CheckpointError, UserError
from xnortrain.train.deployment import export_checkpoint


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> tuple[Path, Path, list[int]]:
    """A Bi-Real ResNet trained one epoch, its packed file and its package written by the
    command line, and its input shape."""
    problem = kernels.load()
    if problem is not None:
        pytest.skip(f"native kernels unavailable: {problem}")
    work = tmp_path_factory.mktemp("package")
    config, checkpoint = trained(work, *CASES["resnet-bireal"][0])
    packed, package = work / "model.xnor.pt", work / "model.pt2"
    export_checkpoint(checkpoint, packed)
    assert main(["package", str(packed), "--out", str(package)]) == 0
    return packed, package, list(config.data.synthetic_shape)


def test_the_package_computes_the_kernels_model_at_any_batch_size(compiled):
    packed, package, shape = compiled
    model, fast = load_exported(packed, binary_kernels=True), load_package(package)
    for batch in (1, 5):
        x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            logits, expected = fast(x), model(x)
        torch.testing.assert_close(logits, expected)  # the float work fused by inductor: float rounding
        assert torch.equal(logits.argmax(1), expected.argmax(1))
    assert fast.get_metadata()[KERNELS_KEY] == kernels.build_key()


def test_the_command_line_says_what_it_wrote(compiled, tmp_path, capsys):
    packed, _, _ = compiled
    assert main(["package", str(packed), "--out", str(tmp_path / "again.pt2")]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'again.pt2'}: " in out and "any batch size" in out and "load_package" in out


def test_a_package_of_another_build_of_the_kernels_is_refused(compiled, monkeypatch):
    _, package, _ = compiled
    monkeypatch.setattr(kernels, "build_key", lambda: "kernels-0123456789abcdef")
    with pytest.raises(CheckpointError, match=r"calls another build of xnortrain's kernels \(kernels-[0-9a-f]{16}; "
                                              r"this process runs kernels-0123456789abcdef\): compile it again"):
        load_package(package)


def test_a_package_xnortrain_did_not_write_is_refused(tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).eval()
    foreign = torch._inductor.aoti_compile_and_package(torch.export.export(model, (torch.zeros(1, 4),)),
                                                       package_path=str(tmp_path / "foreign.pt2"))
    with pytest.raises(CheckpointError, match=f"xnortrain did not write \\(no {KERNELS_KEY} in its metadata\\)"):
        load_package(foreign)


def test_a_missing_or_damaged_package_is_one_line(tmp_path, capsys):
    with pytest.raises(CheckpointError, match="package .*missing.pt2 does not exist"):
        load_package(tmp_path / "missing.pt2")
    damaged = tmp_path / "damaged.pt2"
    damaged.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match=r"damaged.pt2 is not a package this process can load: .*; compile one "
                                              r"here with `python -m xnortrain package`$"):
        load_package(damaged)
    assert "outdated" not in capsys.readouterr().err  # torch's loader's warning before its second try: muted
    assert main(["package", str(tmp_path / "missing.xnor.pt"), "--out", str(tmp_path / "m.pt2")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"xnortrain: error: exported model {tmp_path / 'missing.xnor.pt'} does not exist"]


def test_without_a_cpp_compiler_the_command_is_one_line(compiled, tmp_path):
    """The kernels load from their cache, but every C++ compiler on PATH fails: AOTInductor cannot
    compile, and the command says so in one line (exit 2), naming what it needs."""
    packed, _, _ = compiled
    out = tmp_path / "model.pt2"
    done = subprocess.run([sys.executable, "-m", "xnortrain", "package", str(packed), "--out", str(out)],
                          env=environment_without_compilers(tmp_path), capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = [ln for ln in done.stderr.strip().splitlines() if ln.startswith("xnortrain: error:")]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert lines[0].startswith(f"xnortrain: error: AOTInductor could not compile {out} (")
    assert lines[0].endswith("a package needs a working C++ compiler (g++ or clang++ on PATH, or named by CXX)")
    assert not out.exists()


def test_without_the_native_kernels_no_package_is_compiled_and_none_loads(compiled, monkeypatch):
    """A package calls the kernels: where they do not run, compiling it is refused, and loading
    one (in a fresh process with XNORTRAIN_NO_KERNELS set, where the ops were never registered)
    is one line naming why."""
    packed, package, _ = compiled
    load_here = ("from xnortrain.deploy import load_package\nfrom xnortrain.errors import CheckpointError, UserError\n"
                 f"try:\n    load_package({str(package)!r})\nexcept CheckpointError as err:\n    print(err)")
    result = subprocess.run([sys.executable, "-c", load_here], env={**os.environ, kernels.DISABLE: "1"},
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines() == [
        f"{package} is not a package this process can load: Could not find schema for xnortrain::xnor_conv2d. "
        f"(the native kernels do not load here: {kernels.DISABLE} is set); compile one here with "
        f"`python -m xnortrain package`"]
    monkeypatch.setattr(kernels, "load", lambda: "no compiler")
    with pytest.raises(UserError, match=r"a package calls the native kernels, which do not run here \(no compiler\); "
                                        r"load .*model.xnor.pt with load_exported"):
        compile_package(packed, package.with_name("refused.pt2"))
    assert not package.with_name("refused.pt2").exists()
