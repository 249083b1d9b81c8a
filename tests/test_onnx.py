"""The ONNX file: onnxruntime computes the float path of the packed file, at any batch size."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from test_export import CASES, trained
from torch import nn

from xnortrain.__main__ import main
from xnortrain.activations import BinaryInputs, SteSign
from xnortrain.deploy import load_exported
from xnortrain.deploy.onnx_export import export_onnx, onnx_model
from xnortrain.errors import MissingDependency
from xnortrain.train.deployment import export_checkpoint

CONSTANT_INPUTS = "ignore:binary inputs of .* are non-negative everywhere"  # torchvision's ResNet-18: after ReLUs


@pytest.fixture
def ort():
    """onnxruntime; the test skips where it, onnx or onnxscript (the exporter's) is missing."""
    for name in ("onnx", "onnxscript"):
        pytest.importorskip(name, reason=f"{name} is not installed (pip install 'xnortrain[bench]')")
    return pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'xnortrain[bench]')")


def run_onnx(ort, path: Path, x: torch.Tensor) -> torch.Tensor:
    """The logits onnxruntime computes from the ONNX file at `path`."""
    model = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(model.run(["logits"], {"input": x.numpy()})[0])


def float_path(packed: Path, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return load_exported(packed)(x)


def exported_both_ways(tmp_path: Path, *sets: str) -> tuple[Path, Path, list[int]]:
    """The packed file and the ONNX file of a model trained one epoch, and its input shape."""
    config, checkpoint = trained(tmp_path, *sets)
    packed, onnx_file = tmp_path / "model.xnor.pt", tmp_path / "model.onnx"
    export_checkpoint(checkpoint, packed)
    export_onnx(packed, onnx_file)
    return packed, onnx_file, list(config.data.synthetic_shape)


@pytest.mark.filterwarnings(CONSTANT_INPUTS)
@pytest.mark.parametrize("case", ["lenet5", "resnet-bireal", "torchvision-resnet18"])
def test_onnxruntime_predicts_as_the_float_path_at_batch_1_and_7_from_one_file(tmp_path, ort, case):
    import onnx

    packed, onnx_file, shape = exported_both_ways(tmp_path, *CASES[case][0])
    onnx.checker.check_model(str(onnx_file), full_check=True)
    batch_dim = onnx.load(str(onnx_file)).graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.HasField("dim_value")  # dynamic
    for batch in (1, 7):
        x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(batch))
        expected, got = float_path(packed, x), run_onnx(ort, onnx_file, x)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        assert torch.equal(got.argmax(1), expected.argmax(1))


def test_lenet5_onnx_predicts_1000_random_inputs_as_the_float_path(tmp_path, ort):
    packed, onnx_file, shape = exported_both_ways(tmp_path, *CASES["lenet5"][0])
    x = torch.randn(1000, *shape, generator=torch.Generator().manual_seed(0))
    expected, got = float_path(packed, x), run_onnx(ort, onnx_file, x)
    assert torch.equal(got.argmax(1), expected.argmax(1))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("scale", ["K", "channel_mean"])
def test_xnor_nets_activation_scale_exports_with_the_sign(tmp_path, ort, scale):
    packed, onnx_file, shape = exported_both_ways(
        tmp_path, *CASES["lenet5"][0][:2], f"binop.activations=[{{match: '*', activation: sign, scale: {scale}}}]")
    assert torch.load(packed, weights_only=True)["packed"]["block2.conv.weight"]["input"]["scale"] == scale
    x = torch.randn(7, *shape, generator=torch.Generator().manual_seed(0))
    expected, got = float_path(packed, x), run_onnx(ort, onnx_file, x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(got.argmax(1), expected.argmax(1))


def test_the_traced_sign_is_plus_one_at_zero_and_negative_zero(tmp_path, ort):
    layer = nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(4))  # the output is the binarized input itself
    BinaryInputs(layer, {"": layer}, {"": SteSign()})
    path = tmp_path / "sign.onnx"
    path.write_bytes(onnx_model(layer, [4]).SerializeToString())
    x = torch.tensor([[0.0, -0.0, 0.25, -3.0], [-1e-30, 1e-30, 5.0, -0.0]])
    assert run_onnx(ort, path, x).tolist() == [[1.0, 1.0, 1.0, -1.0], [-1.0, 1.0, 1.0, 1.0]]


def test_cli_writes_the_onnx_file_in_one_line_and_refuses_an_unknown_format(tmp_path, ort, capsys):
    import onnx

    _, checkpoint = trained(tmp_path, *CASES["lenet5"][0])
    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--format", "onnx"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{out}: {out.stat().st_size:,} bytes; ")
    onnx.checker.check_model(str(out), full_check=True)
    export_checkpoint(checkpoint, tmp_path / "m.xnor.pt")
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(run_onnx(ort, out, x), float_path(tmp_path / "m.xnor.pt", x), rtol=1e-4, atol=1e-4)
    with pytest.raises(SystemExit) as exit_:
        main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "m.tflite"), "--format", "tflite"])
    assert exit_.value.code == 2 and "invalid choice: 'tflite'" in capsys.readouterr().err


def test_onnx_export_without_onnx_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(MissingDependency, match=r"^ONNX export needs onnx, which is not installed; "
                                                r"pip install 'xnortrain\[bench\]'$"):
        onnx_model(nn.Linear(2, 2), [2])
