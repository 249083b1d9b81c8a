"""model.init_from: a run starting from the real weights of an earlier run (two-stage training)."""

from __future__ import annotations

import pytest
import torch
from test_train import TESTS, config_for, run_cli, synthetic_args, weights

from xnortrain.__main__ import main
from xnortrain.quantizers import centre_and_clamp_
from xnortrain.train.config import load_config
from xnortrain.train.loop import build_run, fit

CLI = ("--config", str(TESTS.parent / "configs" / "mnist_lenet.yaml"))
LENET = ("model.name=lenet5", "data.synthetic_shape=[1,28,28]", "train.epochs=1")


def test_two_stage_training_starts_stage_two_from_the_stage_one_weights(tmp_path):
    # stage 1: binary activations, real weights; stage 2: BinOp on, from stage 1's weights
    fit(config_for(tmp_path / "stage1", *LENET, "binop.activations=sign", "binop.quantizer=none"), quiet=True)
    stage1 = weights(tmp_path / "stage1" / "last.pt")
    run = build_run(config_for(tmp_path / "stage2", *LENET, "binop.activations=sign",
                               f"model.init_from={tmp_path / 'stage1' / 'last.pt'}"))
    targets = {f"{name}.weight" for name in run.binop.weights}
    assert targets == {"block2.conv.weight", "block3.linear.weight"}
    for key, value in run.model.state_dict().items():
        if key in targets:  # BinOp projects the loaded weights, as it does a fresh init
            projected = stage1[key].clone()
            centre_and_clamp_(projected)
            torch.testing.assert_close(value, projected, msg=key)
        else:
            torch.testing.assert_close(value, stage1[key], rtol=0, atol=0, msg=key)
    assert run.optimizer.state_dict()["state"] == {} and run.position.global_step == 0
    assert run.scheduler.last_epoch == 0


def test_excluded_keys_keep_their_fresh_init(tmp_path):
    fit(config_for(tmp_path / "five", "model.kwargs={num_classes: 5}", "data.synthetic_classes=5", "train.epochs=1"), quiet=True)
    start = weights(tmp_path / "five" / "last.pt")
    fresh = build_run(config_for(tmp_path / "fresh", "binop.enabled=false")).model.state_dict()
    model = build_run(config_for(tmp_path / "run", f"model.init_from={tmp_path / 'five' / 'last.pt'}",
                                 "model.init_exclude=[head.*]", "binop.enabled=false")).model.state_dict()
    for key, value in model.items():
        expected = fresh[key] if key.startswith("head.") else start[key]
        torch.testing.assert_close(value, expected, rtol=0, atol=0, msg=key)


def test_a_checkpoint_of_another_shape_lists_the_keys_that_do_not_fit(tmp_path, capsys):
    fit(config_for(tmp_path / "five", "model.kwargs={num_classes: 5}", "data.synthetic_classes=5", "train.epochs=1"), quiet=True)
    code, err = run_cli(capsys, *CLI, *synthetic_args(tmp_path / "run", f"model.init_from={tmp_path / 'five' / 'last.pt'}"))
    assert code == 2 and len(err) == 1, err
    assert ("model.init_from: " in err[0] and "does not fit the model (shape: head.weight (5, 32) vs (10, 32), "
            "head.bias (5,) vs (10,)); leave such keys out with model.init_exclude" in err[0]), err


def test_a_checkpoint_of_another_model_lists_missing_and_unexpected_keys(tmp_path, capsys):
    fit(config_for(tmp_path / "lenet", *LENET), quiet=True)
    code, err = run_cli(capsys, *CLI, *synthetic_args(tmp_path / "run", f"model.init_from={tmp_path / 'lenet' / 'last.pt'}"))
    assert code == 2 and len(err) == 1, err
    assert "missing: stem.weight, stem.bias" in err[0] and "unexpected: conv1.weight, conv1.bias" in err[0], err


@pytest.mark.parametrize("sets, message", [
    (["model.init_from=absent.pt"], "model.init_from: checkpoint absent.pt does not exist"),
    (["model.init_exclude=[nothing.*]"], "model.init_exclude: 'nothing.*' matches no key of the model"),
])
def test_bad_init_settings_are_one_line(tmp_path, capsys, sets, message):
    if "model.init_exclude=[nothing.*]" in sets:
        fit(config_for(tmp_path / "first", "train.epochs=1"), quiet=True)
        sets = [*sets, f"model.init_from={tmp_path / 'first' / 'last.pt'}"]
    code, err = run_cli(capsys, *CLI, *synthetic_args(tmp_path / "run", *sets))
    assert code == 2 and len(err) == 1 and message in err[0], err


def test_the_shipped_two_stage_resnet_recipe_runs_its_three_commands(tmp_path, monkeypatch):
    """The float twin, stage 1 (binary inputs with thresholds, real weights) and stage 2
    (started from stage 1, distilled from the twin), as shipped but for the data and length:
    each run finds the one before under the paths the configs name, from the working directory."""
    small = ["data.name=synthetic", "data.synthetic_shape=[1,28,28]", "data.synthetic_train_size=32",
             "data.synthetic_eval_size=16", "data.batch_size=16", "train.epochs=1", "model.kwargs={depth: 8, width: 8, "
             "flavour: reactnet}"]
    monkeypatch.chdir(tmp_path)
    def train(config: str) -> int:
        return main(["--config", str(TESTS.parent / "configs" / f"{config}.yaml"),
                     *[a for s in small for a in ("--set", s)], "--quiet"])

    for config in ("fashion_mnist_resnet_float", "fashion_mnist_resnet_stage1", "fashion_mnist_resnet"):
        assert train(config) == 0
    shipped = load_config(TESTS.parent / "configs" / "fashion_mnist_resnet.yaml")
    assert shipped.distill.teacher == "runs/fashion_mnist_resnet_float/last.pt"  # not best.pt: the test split chose it
    stage1, stage2 = (weights(tmp_path / "runs" / run / "last.pt") for run in ("fashion_mnist_resnet_stage1",
                                                                                  "fashion_mnist_resnet"))
    thresholds = [k for k in stage1 if k.endswith("input_shift")]
    assert len(thresholds) == 6 and all(stage1[k].any() for k in thresholds)  # learned in stage 1, carried over
    assert set(stage1) == set(stage2)


def test_the_shipped_two_stage_lenet_recipe_runs_its_two_commands(tmp_path):
    """Stage 1 (RSign inputs, real weights) then stage 2 (everything binary, from stage 1),
    as shipped but for the data and length: stage 2 starts from stage 1's thresholds."""
    small = ["data.name=synthetic", "data.synthetic_shape=[1,28,28]", "data.synthetic_train_size=32",
             "data.synthetic_eval_size=16", "data.batch_size=16", "train.epochs=1"]
    stage1, stage2 = tmp_path / "stage1", tmp_path / "stage2"

    def train(config: str, *sets: str) -> int:
        return main(["--config", str(TESTS.parent / "configs" / f"{config}.yaml"),
                     *[a for s in (*small, *sets) for a in ("--set", s)], "--quiet"])

    assert train("fashion_mnist_lenet_reactnet_stage1", f"train.out_dir={stage1}") == 0
    assert train("fashion_mnist_lenet_reactnet", f"train.out_dir={stage2}", f"model.init_from={stage1 / 'last.pt'}") == 0
    first, second = weights(stage1 / "last.pt"), weights(stage2 / "last.pt")
    thresholds = [k for k in first if k.endswith("input_shift")]
    assert len(thresholds) == 2 and all(first[k].any() for k in thresholds)  # conv2's and fc3's, learned in stage 1
    assert set(first) == set(second)
