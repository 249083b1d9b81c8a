"""Distillation from a trained teacher: the loss, its place in the trainer, its errors."""

from __future__ import annotations

import math

import pytest
import torch
from test_train import (
    TESTS,
    assert_same_run,
    assert_same_weights,
    config_for,
    interrupted_and_resumed,
    run_cli,
    strip_times,
    synthetic_args,
    weights,
)

from xnortrain.train.distill import distillation_loss
from xnortrain.train.loop import build_run, fit, train

CLI = ("--config", str(TESTS.parent / "configs" / "mnist_lenet.yaml"))


def softmax(row: list[float], t: float) -> list[float]:
    exps = [math.exp(z / t) for z in row]
    return [e / sum(exps) for e in exps]


def test_distillation_loss_equals_the_formula_on_hand_made_logits():
    student, teacher, labels = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], [[2.0, 0.0, 1.0], [1.0, 1.5, -0.5]], [1, 2]
    w, t = 0.3, 2.0
    ce = sum(-math.log(softmax(s, 1.0)[y]) for s, y in zip(student, labels)) / 2
    kl = sum(sum(pt * math.log(pt / ps) for pt, ps in zip(softmax(zt, t), softmax(zs, t)))
             for zs, zt in zip(student, teacher)) / 2
    student_logits = torch.tensor(student, dtype=torch.float64)
    got = distillation_loss(student_logits, torch.tensor(teacher, dtype=torch.float64),
                            torch.nn.functional.cross_entropy(student_logits, torch.tensor(labels)), w, t)
    torch.testing.assert_close(got, torch.tensor((1 - w) * ce + w * t * t * kl, dtype=torch.float64))


def test_distillation_loss_of_a_student_equal_to_its_teacher_is_the_weighted_ce():
    logits, ce = torch.randn(4, 10), torch.tensor(1.7)
    torch.testing.assert_close(distillation_loss(logits, logits.clone(), ce, 0.25, 3.0), 0.75 * ce)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("teacher")
    fit(config_for(out, "train.epochs=1", "binop.enabled=false"), quiet=True)
    return str(out / "last.pt")


def test_weight_zero_trains_exactly_as_without_distillation(tmp_path, teacher):
    fit(config_for(tmp_path / "plain"), quiet=True)
    fit(config_for(tmp_path / "zero", f"distill.teacher={teacher}", "distill.weight=0"), quiet=True)
    assert_same_weights(weights(tmp_path / "plain" / "last.pt"), weights(tmp_path / "zero" / "last.pt"))
    assert strip_times(tmp_path / "plain" / "metrics.jsonl") == strip_times(tmp_path / "zero" / "metrics.jsonl")


def test_the_teacher_changes_the_training_and_stays_frozen_in_eval_mode(tmp_path, teacher):
    fit(config_for(tmp_path / "plain"), quiet=True)
    config = config_for(tmp_path / "distilled", f"distill.teacher={teacher}", "distill.weight=0.5", "distill.temperature=2")
    run = build_run(config)
    assert not run.teacher.model.training and not any(p.requires_grad for p in run.teacher.model.parameters())
    fit(config, quiet=True)
    plain, distilled = weights(tmp_path / "plain" / "last.pt"), weights(tmp_path / "distilled" / "last.pt")
    assert not torch.equal(plain["head.weight"], distilled["head.weight"])
    assert_same_weights({k: v for k, v in run.teacher.model.state_dict().items()}, weights(teacher))


def test_distilled_run_resumes_bitwise(tmp_path, monkeypatch, teacher):
    sets = [f"distill.teacher={teacher}", "distill.weight=0.7", "distill.temperature=4"]
    fit(config_for(tmp_path / "straight", *sets), quiet=True)
    interrupted_and_resumed(monkeypatch, config_for(tmp_path / "stopped", *sets), 9)
    assert_same_run(tmp_path / "straight", tmp_path / "stopped")


def test_the_teacher_of_fixed_inputs_passes_over_them_once_and_remembers_the_logits_it_gives(tmp_path, teacher):
    run = build_run(config_for(tmp_path, f"distill.teacher={teacher}", "train.epochs=3", "data.synthetic_train_size=100"))
    sizes = []
    run.teacher.model.register_forward_hook(lambda module, inputs, out: sizes.append(len(inputs[0])))
    train(run, None, quiet=True)
    assert sizes == [16] * 6 + [4]  # one pass over the 100 samples in three epochs, in batches of 16
    with torch.no_grad():
        in_order = torch.cat([run.teacher.model(batch) for _, batch, _ in run.data.train.in_order().indexed_batches(0)])
        for index, x, _ in run.data.train.indexed_batches(2):
            assert torch.equal(run.teacher.logits(x, index), in_order[index])  # the pass's own logits, bit for bit
            # and those of these very samples: the same as computing them in this batch, up to the float
            # rounding that a batch of another size may take (a sample of the pass's last batch of 4)
            torch.testing.assert_close(run.teacher.logits(x, index), run.teacher.model(x))


def test_a_teacher_that_draws_random_numbers_computes_its_logits_in_every_step(tmp_path, teacher):
    stochastic = "binop.quantizer={name: binaryconnect, stochastic: true}"
    fit(config_for(tmp_path / "teacher", "train.epochs=1", stochastic), quiet=True)
    drawing = build_run(config_for(tmp_path / "student", f"distill.teacher={tmp_path / 'teacher' / 'last.pt'}"))
    assert drawing.teacher.fixed_split is None
    assert build_run(config_for(tmp_path / "other", f"distill.teacher={teacher}")).teacher.fixed_split is not None


def test_remembered_logits_train_exactly_as_logits_computed_in_every_step(tmp_path, teacher):
    for name in ("remembered", "computed"):
        run = build_run(config_for(tmp_path / name, f"distill.teacher={teacher}", "distill.weight=0.7"))
        if name == "computed":
            run.teacher.fixed_split = None
        train(run, None, quiet=True)
    assert_same_run(tmp_path / "remembered", tmp_path / "computed")


def test_a_binop_teacher_gives_the_logits_of_its_binarized_weights(tmp_path):
    fit(config_for(tmp_path / "teacher", "train.epochs=1"), quiet=True)
    trained = build_run(config_for(tmp_path / "check"))
    trained.model.load_state_dict(weights(tmp_path / "teacher" / "last.pt"))
    run = build_run(config_for(tmp_path / "student", f"distill.teacher={tmp_path / 'teacher' / 'last.pt'}"))
    x = torch.randn(5, 1, 8, 8)
    torch.testing.assert_close(run.teacher.model(x), trained.model.eval()(x))


@pytest.mark.parametrize("teacher_sets, message", [
    (["data.synthetic_classes=5"], "was trained on 5 classes of input [1, 8, 8], this run has 10 classes of input [1, 8, 8]"),
    (["data.synthetic_shape=[1,12,12]"], "was trained on 10 classes of input [1, 12, 12], this run has 10 classes"),
])
def test_a_teacher_of_other_data_is_one_line(tmp_path, capsys, teacher_sets, message):
    fit(config_for(tmp_path / "teacher", "train.epochs=1", *teacher_sets), quiet=True)
    code, err = run_cli(capsys, *CLI, *synthetic_args(tmp_path / "run", f"distill.teacher={tmp_path / 'teacher' / 'last.pt'}"))
    assert code == 2 and len(err) == 1 and "distill.teacher: " in err[0] and message in err[0], err


def test_a_missing_or_damaged_teacher_is_one_line(tmp_path, capsys):
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(b"PK\x03\x04 this is not a zip archive")
    for path, message in ((tmp_path / "absent.pt", "absent.pt does not exist"),
                          (damaged, "damaged.pt is damaged or not a PyTorch file")):
        code, err = run_cli(capsys, *CLI, *synthetic_args(tmp_path / "run", f"distill.teacher={path}"))
        assert code == 2 and len(err) == 1 and "distill.teacher: " in err[0] and message in err[0], err


@pytest.mark.parametrize("setting, message", [
    ("distill.weight=1.5", "distill.weight: must be between 0 and 1, got 1.5"),
    ("distill.temperature=0", "distill.temperature: must be > 0, got 0.0"),
])
def test_bad_distill_settings_are_one_line(tmp_path, capsys, setting, message):
    code, err = run_cli(capsys, *CLI, *synthetic_args(tmp_path), "--set", setting)
    assert code == 2 and len(err) == 1 and message in err[0], err


def test_a_distilled_run_trains_under_bf16_autocast(tmp_path, teacher):
    history = fit(config_for(tmp_path, f"distill.teacher={teacher}", "train.amp=bf16", "train.epochs=1"), quiet=True)
    assert math.isfinite(history[0]["train_loss"]) and math.isfinite(history[0]["val_loss"])
