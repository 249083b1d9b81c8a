"""Packed 1-bit export, loading, XNOR-popcount kernels and the size-and-operations summary."""

from __future__ import annotations

import contextlib
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_kernels import require_native_kernels
from test_train import config_for
from torch.nn.utils import parametrize

from xnortrain import BinOp
from xnortrain.__main__ import main
from xnortrain.deploy import load_exported
from xnortrain.deploy.bitpack import popcount64
from xnortrain.deploy.summary import summary
from xnortrain.deploy.xnor_layers import XnorConv2d, XnorLinear
from xnortrain.errors import CheckpointError, UserError
from xnortrain.train.config import load_config
from xnortrain.train.deployment import evaluation_inputs, export_checkpoint
from xnortrain.train.loop import build_run, fit, load_weights
from xnortrain.zoo import lenet5

TESTS = Path(__file__).parent
SIGN = "binop.activations=sign"
RESNET = "model.kwargs={depth: 8, width: 8, flavour: %s}"
# name: (the trainer's --set overrides, the layers that run on the XNOR-popcount kernels)
CASES = {
    "lenet5": (["model.name=lenet5", "data.synthetic_shape=[1,28,28]", SIGN], 2),
    "nin": (["model.name=nin", "data.synthetic_shape=[3,32,32]", "data.synthetic_train_size=32", SIGN], 7),
    "custom-bwn": ([], 0),  # models_for_tests:TinyNet, binary weights and real inputs
    "custom-xnor": ([SIGN], 2),  # its binary layers read ReLU outputs: BinOp warns, the kernels still run
    "resnet-xnor": (["model.name=resnet", RESNET % "xnor", "data.synthetic_shape=[3,32,32]", SIGN], 8),
    "resnet-bireal": (["model.name=resnet", RESNET % "bireal", "data.synthetic_shape=[1,28,28]",
                       "binop.activations=approx_sign", "binop.exclude=['*.shortcut.*']"], 6),
    "resnet-reactnet": (["model.name=resnet", RESNET % "reactnet", "data.synthetic_shape=[1,28,28]",
                         "binop.activations=rsign", "binop.exclude=['*.shortcut.*']"], 6),  # learned thresholds
    "torchvision-resnet18": (["model.name=torchvision:resnet18", "data.synthetic_shape=[3,32,32]",
                              "data.synthetic_train_size=32", SIGN], 19),
}


def trained(tmp_path: Path, *sets: str):
    """A config trained for one epoch, and its best.pt."""
    config = config_for(tmp_path, "train.epochs=1", *sets)
    fit(config, quiet=True)
    return config, tmp_path / "best.pt"


def reference_logits(config, checkpoint: Path, x: torch.Tensor, stored: dict | None = None) -> torch.Tensor:
    """Logits of the trained model evaluated with BinOp attached, as training evaluates it;
    with `stored` (an export's float tensors), those tensors as the export stores them."""
    run = build_run(config)
    load_weights(run, checkpoint)
    if stored is not None:
        assert not run.model.load_state_dict(stored, strict=False).unexpected_keys
    with torch.no_grad():
        return run.model.eval()(x)


@pytest.mark.parametrize("case", sorted(CASES))
def test_export_round_trip_gives_the_same_logits_and_the_kernels_the_same_predictions(tmp_path, case, capsys):
    sets, binary_layers = CASES[case]
    constant_inputs = case in ("custom-xnor", "torchvision-resnet18")  # binary inputs read ReLU outputs
    with pytest.warns(UserWarning, match="non-negative everywhere") if constant_inputs else contextlib.nullcontext():
        config, checkpoint = trained(tmp_path, *sets)
    out = tmp_path / "model.xnor.pt"
    sizes = export_checkpoint(checkpoint, out)
    assert sizes["exported_bytes"] < sizes["checkpoint_bytes"]
    shape = config.data.synthetic_shape
    x = torch.randn(16, *shape, generator=torch.Generator().manual_seed(1))
    expected = reference_logits(config, checkpoint, x, torch.load(out, weights_only=True)["tensors"])
    model = load_exported(out)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())  # plain layers holding W~
    with torch.no_grad():
        got = model(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert all(v.dtype != torch.float16 for v in torch.load(out, weights_only=True)["tensors"].values())
    capsys.readouterr()
    fast = load_exported(out, binary_kernels=True)
    assert sum(isinstance(m, (XnorConv2d, XnorLinear)) for m in fast.modules()) == binary_layers
    assert capsys.readouterr().err.splitlines()[-1].startswith(f"{out}: {binary_layers} binary layers on the ")
    with torch.no_grad():
        on_kernels = fast(x)
    torch.testing.assert_close(on_kernels, got, rtol=1e-4, atol=1e-4)
    assert torch.equal(on_kernels.argmax(1), got.argmax(1))


def test_the_file_records_which_inputs_are_binary_and_how(tmp_path):
    _, checkpoint = trained(tmp_path, *CASES["lenet5"][0][:2],
                            "binop.activations=[{match: block2.*, activation: approx_sign, scale: K}, "
                            "{match: '*', activation: none}]")
    export_checkpoint(checkpoint, tmp_path / "m.xnor.pt")
    packed = torch.load(tmp_path / "m.xnor.pt", weights_only=True)["packed"]
    assert packed["block2.conv.weight"]["input"] == {"name": "approx_sign", "scale": "K"}
    assert packed["block3.linear.weight"]["input"] is None
    fast = load_exported(tmp_path / "m.xnor.pt", binary_kernels=True)
    assert isinstance(fast.block2.conv, XnorConv2d) and isinstance(fast.block3.linear, torch.nn.Linear)
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), load_exported(tmp_path / "m.xnor.pt")(x), rtol=1e-4, atol=1e-4)


def test_check_data_stores_float16_where_the_predictions_on_the_evaluation_inputs_hold(tmp_path):
    config, checkpoint = trained(tmp_path, *CASES["lenet5"][0])
    out = tmp_path / "model.xnor.pt"
    export_checkpoint(checkpoint, out, check_data=True)
    assert any(v.dtype == torch.float16 for v in torch.load(out, weights_only=True)["tensors"].values())
    checked = evaluation_inputs(config)  # the inputs on which float16 storage keeps every prediction
    with torch.no_grad():
        assert torch.equal(load_exported(out)(checked).argmax(1),
                           reference_logits(config, checkpoint, checked).argmax(1))


def test_the_same_checkpoint_exports_to_the_same_bytes_with_or_without_its_data(tmp_path, monkeypatch):
    import xnortrain.train.data as data
    import xnortrain.train.deployment as deployment

    _, checkpoint = trained(tmp_path, *CASES["lenet5"][0])
    export_checkpoint(checkpoint, tmp_path / "with.xnor.pt")

    def missing(*args, **kwargs):
        raise data.DataError("the data set is not on this machine")

    monkeypatch.setattr(deployment, "build_data", missing)
    monkeypatch.setattr(data, "build_data", missing)
    export_checkpoint(checkpoint, tmp_path / "without.xnor.pt")
    assert (tmp_path / "with.xnor.pt").read_bytes() == (tmp_path / "without.xnor.pt").read_bytes()
    with pytest.raises(UserError, match="not on this machine"):  # --check-data needs the data
        export_checkpoint(checkpoint, tmp_path / "checked.xnor.pt", check_data=True)


def test_packed_file_holds_one_bit_per_binarized_weight(tmp_path):
    _, checkpoint = trained(tmp_path, *CASES["lenet5"][0])
    out = tmp_path / "lenet.xnor.pt"
    export_checkpoint(checkpoint, out)
    payload = torch.load(out, weights_only=True)
    assert set(payload["packed"]) == {"block2.conv.weight", "block3.linear.weight"}
    for key, shape in {"block2.conv.weight": (50, 20, 5, 5), "block3.linear.weight": (500, 800)}.items():
        p = payload["packed"][key]
        assert p["bits"].dtype == torch.uint8 and p["bits"].numel() == math.ceil(math.prod(shape) / 8)
        assert p["alpha"].shape == (shape[0],)
        assert key not in payload["tensors"]
    float_bytes = sum(t.numel() * t.element_size() for t in payload["tensors"].values() if t.is_floating_point())
    packed_bytes = sum(p["bits"].numel() + 4 * p["alpha"].numel() for p in payload["packed"].values())
    assert packed_bytes == 25_000 // 8 + 50 * 4 + 400_000 // 8 + 500 * 4
    assert out.stat().st_size < float_bytes + packed_bytes + 64 * 1024  # plus the pickle's own framing


def test_export_of_a_checkpoint_without_data_shape_says_how_to_re_save_it(tmp_path, monkeypatch):
    import xnortrain.train.deployment as deployment

    _, checkpoint = trained(tmp_path, *CASES["lenet5"][0])
    state = torch.load(checkpoint, weights_only=True)
    del state["data_shape"]
    old = tmp_path / "old.pt"
    torch.save(state, old)
    monkeypatch.setattr(deployment, "build_data", None)  # export reads no data set
    with pytest.raises(CheckpointError, match="data_shape") as err:
        export_checkpoint(old, tmp_path / "x.pt")
    assert "\n" not in str(err.value) and not (tmp_path / "x.pt").exists()
    monkeypatch.undo()
    command = str(err.value).split("python -m xnortrain ", 1)[1]
    assert main([*command.split(), "--quiet"]) == 0  # the command the error gives
    export_checkpoint(tmp_path / "last.pt", tmp_path / "x.pt")
    assert (tmp_path / "x.pt").exists()


def test_loading_an_exported_model_and_its_summary_do_not_load_the_trainer(tmp_path):
    _, checkpoint = trained(tmp_path, *CASES["lenet5"][0])
    export_checkpoint(checkpoint, tmp_path / "x.pt")
    probe = (f"import sys, torch; from xnortrain.deploy import load_exported; from xnortrain.deploy.summary import summary; "
             f"print(summary(load_exported({str(tmp_path / 'x.pt')!r}, binary_kernels=True), torch.zeros(1, 1, 28, 28))); "
             f"assert not [m for m in sys.modules if m.startswith('xnortrain.train')], 'trainer loaded'")
    subprocess.run([sys.executable, "-c", probe], check=True, cwd=TESTS.parent)


@pytest.mark.realdata
def test_exported_lenet5_matches_the_trained_model_on_real_fashion_mnist(tmp_path):
    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("needs Debian's dataset-fashion-mnist")
    config = load_config(TESTS.parent / "configs" / "fashion_mnist_lenet.yaml",
                         ["train.epochs=1", "data.train_subset=2000", f"data.root={tmp_path}", f"train.out_dir={tmp_path}"])
    fit(config, quiet=True)
    export_checkpoint(tmp_path / "best.pt", tmp_path / "m.xnor.pt", check_data=True)
    x = evaluation_inputs(config)  # the first 1000 test images
    assert x.shape[0] == 1000
    stored = torch.load(tmp_path / "m.xnor.pt", weights_only=True)["tensors"]
    assert any(t.dtype == torch.float16 for t in stored.values())
    with torch.no_grad():
        trained_model = reference_logits(config, tmp_path / "best.pt", x)
        as_stored = reference_logits(config, tmp_path / "best.pt", x, stored)
        float_path = load_exported(tmp_path / "m.xnor.pt")(x)
        binary_path = load_exported(tmp_path / "m.xnor.pt", binary_kernels=True)(x)
    torch.testing.assert_close(float_path, as_stored, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(binary_path, float_path, rtol=1e-4, atol=1e-4)
    assert torch.equal(float_path.argmax(1), trained_model.argmax(1))
    assert torch.equal(binary_path.argmax(1), float_path.argmax(1))


def test_popcount_matches_python():
    x = torch.randint(-2**62, 2**62, (500,), dtype=torch.int64)
    assert popcount64(x).tolist() == [bin(v & (2**64 - 1)).count("1") for v in x.tolist()]


def test_summary_of_lenet5_matches_a_hand_count():
    model = lenet5()
    BinOp(model, activations="sign")
    s = summary(model, torch.randn(2, 1, 28, 28))
    rows = {r.name: r for r in s.rows}
    # conv1: 24*24*20 outputs x 25; block2.conv: 8*8*50 x 500 (binary); block3.linear: 500 x 800 (binary); fc4: 10 x 500
    assert (rows["conv1"].float_macs, rows["block2.conv"].binary_macs) == (288_000, 1_600_000)
    assert (rows["block3.linear"].binary_macs, rows["fc4"].float_macs) == (400_000, 5_000)
    assert (s.binary_macs, s.float_macs) == (2_000_000, 293_000)
    assert s.params == 520 + 40 + 25_050 + 1_600 + 400_500 + 5_010
    assert (rows["block2.conv"].weight_bits, rows["block2.conv"].input_bits) == (1, 1)
    assert (rows["conv1"].weight_bits, rows["conv1"].input_bits) == (32, 32)
    assert s.float_bytes == 4 * s.params
    assert s.packed_bytes == 4 * (s.params - 425_000) + 25_000 // 8 + 50 * 4 + 400_000 // 8 + 500 * 4
    assert "compression (float32 / packed): 20.08x; binary MACs: 87.2% of 2,293,000" in str(s)


def test_cli_export_and_summary(tmp_path, capsys):
    _, checkpoint = trained(tmp_path, *CASES["lenet5"][0])
    out = tmp_path / "m.xnor.pt"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{out}: ") and "x smaller" in line
    assert main(["summary", "--config", str(TESTS.parent / "configs" / "mnist_lenet.yaml"),
                 "--set", "data.name=synthetic", "--set", "data.synthetic_shape=[1,28,28]"]) == 0
    assert "binary MACs: 87.2% of 2,293,000" in capsys.readouterr().out
    assert main(["summary", "--checkpoint", str(checkpoint)]) == 0
    assert "binary MACs: 87.2% of 2,293,000" in capsys.readouterr().out


def test_summary_of_a_config_reads_no_data(tmp_path, monkeypatch, capsys):
    import xnortrain.train.data as data

    monkeypatch.setattr(data, "build_data", None)
    assert main(["summary", "--config", str(TESTS.parent / "configs" / "cifar_nin.yaml"),
                 "--set", f"data.root={tmp_path / 'absent'}"]) == 0
    assert "conv9" in capsys.readouterr().out
    assert main(["summary"]) == 2
    assert "give --config FILE or --checkpoint PATH" in capsys.readouterr().err


def test_export_refuses_what_it_cannot_pack(tmp_path, capsys):
    _, checkpoint = trained(tmp_path / "a", "binop.enabled=false")
    with pytest.raises(UserError, match="trained without BinOp"):
        export_checkpoint(checkpoint, tmp_path / "x.pt")
    _, checkpoint = trained(tmp_path / "b", "binop.quantizer={name: codebook, values: [1, -1, 0.5, -0.5]}")
    with pytest.raises(UserError, match="export packs 1-bit"):
        export_checkpoint(checkpoint, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="is not an xnortrain exported model"):
        load_exported(checkpoint)
    assert main(["export", "--checkpoint", str(tmp_path / "absent.pt"), "--out", str(tmp_path / "x.pt")]) == 2
    assert "checkpoint" in capsys.readouterr().err and not (tmp_path / "x.pt").exists()


# folded: and the stem's BatchNorm; linked: convs passing their signs packed (none where a sum or a
# shared ReLU reads the output, as in every ResNet); summed: convs adding the shortcut in their epilogue
# (each block's last; every conv of Bi-Real's and ReActNet's)
@pytest.mark.parametrize("sets, binary_convs, float_layers, folded, linked, summed", [
    (["model.name=torchvision:resnet18", "model.kwargs={num_classes: 10}", "binop.activations=sign"], 19, 2, 20, 0,
     8),
    (["model.name=resnet", "model.kwargs={depth: 8, width: 16, flavour: xnor}", "binop.activations=sign"], 8, 2, 9, 0,
     3),
    (["model.name=resnet", "model.kwargs={depth: 8, width: 16, flavour: bireal}", "binop.activations=approx_sign",
      "binop.exclude=['*.shortcut.*']"], 6, 4, 9, 0, 6),  # and the two real-valued downsampling convs, theirs too
    (["model.name=resnet", "model.kwargs={depth: 8, width: 16, flavour: reactnet}", "binop.activations=rsign",
      "binop.exclude=['*.shortcut.*']"], 6, 4, 9, 0, 6),  # RPReLU after each sum, learned thresholds before each sign
], ids=["torchvision-resnet18", "resnet-xnor", "resnet-bireal", "resnet-reactnet"])
def test_any_resnet_through_the_cli_runs_every_binary_conv_on_the_native_kernels(tmp_path, capsys, sets,
                                                                                 binary_convs, float_layers, folded,
                                                                                 linked, summed):
    """Every binary conv on the kernels, every BatchNorm that reads one alone folded into it
    (torchvision's and Bi-Real's conv -> BN into its epilogue; XNOR-Net's BN -> conv into its input),
    every BatchNorm that reads a float conv alone folded into its weights, and every shortcut sum
    that reads a binary conv's output added in its epilogue, with the float path's predictions."""
    from xnortrain.deploy import kernels

    require_native_kernels()
    run = ["--config", str(TESTS.parent / "configs" / "cifar_nin.yaml"), "--set", f"train.out_dir={tmp_path}", "--set", "data.name=synthetic", "--set", "data.synthetic_shape=[3,32,32]",
           "--set", "data.synthetic_train_size=32", "--set", "data.batch_size=16", "--set", "train.epochs=1",
           *[a for s in sets for a in ("--set", s)], "--quiet"]
    assert main(run) == 0
    assert main(["export", "--checkpoint", str(tmp_path / "last.pt"), "--out", str(tmp_path / "m.xnor.pt")]) == 0
    capsys.readouterr()
    fast, float_path = load_exported(tmp_path / "m.xnor.pt", binary_kernels=True), load_exported(tmp_path / "m.xnor.pt")
    line = capsys.readouterr().err.splitlines()[-1]
    on_kernels = [m for m in fast.modules() if isinstance(m, XnorConv2d)]
    assert line == (f"{tmp_path / 'm.xnor.pt'}: {binary_convs} binary layers on the {kernels.path_in_use()}, "
                    f"{folded} BatchNorms folded into the layers next to them, {linked} passing their signs packed "
                    f"to the next, {summed} adding a residual in their epilogue; {float_layers} conv/linear layers "
                    f"on the float path")
    assert sum(m.sign_output for m in on_kernels) == linked
    assert len(on_kernels) == binary_convs and all(m.native for m in on_kernels)
    float_convs = [m for m in fast.modules() if isinstance(m, torch.nn.Conv2d)]  # channels-last, as the kernels' outputs
    assert float_convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in float_convs)
    x = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(fast(x).argmax(1), float_path(x).argmax(1))
