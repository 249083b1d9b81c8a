"""Data parallel: 2 CPU processes (gloo), started as torchrun starts them, against one process,
and resume; the signal tests launch through torchrun itself."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from test_train import assert_same_weights, cli_env, synthetic_args, weights

from xnortrain.train.config import load_config
from xnortrain.train.loop import evaluate_checkpoint

TESTS = Path(__file__).parent
CONFIG = str(TESTS.parent / "configs" / "mnist_lenet.yaml")
MLP = ("model.name=models_for_tests:PlainMLP", "train.deterministic=true")
CLI = ("-m", "xnortrain")


def run(out: Path, nproc: int, *sets: str, resume: bool = False, entry: tuple[str, ...] = CLI,
        flags: tuple[str, ...] = (), **env: str) -> None:
    """Start `entry` (the CLI) as the `nproc` processes of one launch, each with the variables
    torchrun gives its workers; each must exit 0. (torchrun's own process, one more interpreter
    start per launch, is in the signal tests below, whose stops it reports.)"""
    cmd = [sys.executable, *entry, "--config", CONFIG, *synthetic_args(out, *sets), "--quiet", *flags,
           *(["--resume"] if resume else [])]
    port = str(free_port())
    errors = [tempfile.TemporaryFile("w+") for _ in range(nproc)]
    procs = [subprocess.Popen(cmd, env=cli_env(OMP_NUM_THREADS="1", **worker_env(rank, nproc, port), **env),
                              stdout=subprocess.DEVNULL, stderr=err, text=True) for rank, err in enumerate(errors)]
    deadline = time.monotonic() + 600
    while any(p.poll() is None for p in procs) and not any(p.poll() for p in procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    for proc in procs:  # one failed: the others would wait for it in a collective
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    for rank, (proc, err) in enumerate(zip(procs, errors)):
        err.seek(0)
        assert proc.returncode == 0, f"rank {rank} of {nproc}: {err.read()[-3000:]}"


def worker_env(rank: int, nproc: int, port: str) -> dict[str, str]:
    """What torchrun sets for worker `rank` of `nproc` on one machine (nothing for one process)."""
    if nproc == 1:
        return {}
    return {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_with_batch_b_match_one_process_with_batch_2b(tmp_path):
    # 61 evaluation samples: split 31 + 30 between the processes, none counted twice
    run(tmp_path / "one", 1, *MLP, "data.batch_size=16", "train.epochs=2", "data.synthetic_eval_size=61")
    run(tmp_path / "two", 2, *MLP, "data.batch_size=8", "train.epochs=2", "data.synthetic_eval_size=61")
    one, two = weights(tmp_path / "one" / "last.pt"), weights(tmp_path / "two" / "last.pt")
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5)
    for a, b in zip(metrics(tmp_path / "one"), metrics(tmp_path / "two")):  # sums over both processes
        assert b["step"] == a["step"] and abs(b["train_loss"] - a["train_loss"]) < 1e-4
        assert b["train_acc1"] == a["train_acc1"] and b["val_acc1"] == a["val_acc1"]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [
        "best.pt", "config.yaml", "last.pt", "metrics.jsonl", "train.log"]  # rank 0 alone wrote


def test_data_parallel_resume_is_exact(tmp_path):
    """TinyNet has Dropout: the resumed processes must draw the masks they would have drawn."""
    run(tmp_path / "straight", 2, "data.batch_size=8", "train.epochs=2")
    run(tmp_path / "resumed", 2, "data.batch_size=8", "train.epochs=1")
    run(tmp_path / "resumed", 2, "data.batch_size=8", "train.epochs=2", resume=True)
    assert_same_weights(weights(tmp_path / "straight" / "last.pt"), weights(tmp_path / "resumed" / "last.pt"))


def test_each_process_draws_its_own_dropout_masks(tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    run(tmp_path / "two", 2, "model.name=models_for_tests:DropoutProbe", "data.batch_size=8", "train.epochs=1",
        XNORTRAIN_TEST_MASKS=str(masks))
    rank0, rank1 = (torch.load(masks / f"rank{rank}.pt") for rank in (0, 1))
    assert len(rank0) == len(rank1) == 6  # 96 samples, 8 a step in each of 2 processes
    for step, (mask0, mask1) in enumerate(zip(rank0, rank1)):
        assert not torch.equal(mask0, mask1), f"step {step}: both processes drew the same dropout mask"


def test_split_evaluation_evaluates_the_model_of_rank_0(tmp_path):
    """TinyNet has BatchNorm: after the last step each process holds running statistics of
    its own batches, so the shards must be evaluated with rank 0's, which last.pt holds."""
    sets = ("train.deterministic=true", "data.batch_size=8", "train.epochs=1", "data.synthetic_eval_size=61")
    run(tmp_path / "two", 2, *sets)
    config = load_config(CONFIG, synthetic_args(tmp_path / "two", *sets)[1::2])
    alone = evaluate_checkpoint(config, tmp_path / "two" / "last.pt")
    logged = metrics(tmp_path / "two")[-1]
    assert logged["val_acc1"] == alone["val_acc1"]
    assert logged["val_loss"] == pytest.approx(alone["val_loss"], rel=1e-6)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="lists threads through Linux's /proc")
def test_the_process_group_is_destroyed_and_freed_when_a_run_ends(tmp_path):
    """Left alive to interpreter exit, gloo's threads can abort a process that ran to the end."""
    for flags in ((), ("--eval-only",)):
        reports = tmp_path / ("reports" + "".join(flags))
        reports.mkdir()
        run(tmp_path / "run", 2, "data.batch_size=8", "train.epochs=1", entry=(str(TESTS / "group_probe.py"),
            str(reports)), flags=flags)
        for rank in (0, 1):
            report = json.loads((reports / f"rank{rank}.json").read_text())
            assert report == {"exit": 0, "during": True, "gloo_threads_during": True, "after": False,
                              "gloo_threads": []}, (flags, rank)


@pytest.mark.slow
def test_ten_data_parallel_launches_in_a_row_all_exit_0(tmp_path):
    for launch in range(10):
        run(tmp_path / str(launch), 2, "data.batch_size=16", "train.epochs=1")
        assert len(metrics(tmp_path / str(launch))) == 1


def launch(out: Path, *sets: str, resume: bool = False, **env: str) -> subprocess.CompletedProcess:
    """torchrun with 2 processes on the CLI, as `run` does, returning the finished launch."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *CLI,
           "--config", CONFIG, *synthetic_args(out, *sets), "--quiet", *(["--resume"] if resume else [])]
    return subprocess.run(cmd, env=cli_env(OMP_NUM_THREADS="1", **env), capture_output=True, text=True, timeout=300)


SIGNALLED = ("model.name=models_for_tests:SignalAt", "data.batch_size=8", "train.epochs=2")


@pytest.fixture(scope="module")
def straight_two_epochs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight")
    assert launch(out, *SIGNALLED).returncode == 0
    return out


@pytest.mark.parametrize("rank", [1, 0])
def test_sigterm_to_one_process_stops_all_at_the_same_step_and_resume_is_exact(tmp_path, straight_two_epochs, rank):
    # 96 samples, 8 a step in each of 2 processes: 6 steps an epoch; the 9th is epoch 2, step 3.
    # A hang would wait in gloo's all-reduce for 30 minutes: the launch's timeout fails it.
    stopped = launch(tmp_path, *SIGNALLED, XNORTRAIN_TEST_SIGTERM=f"{rank}:9")
    # each process exits 128 + SIGTERM (torchrun itself reports its failed workers with exit code 1)
    assert stopped.stderr.count("exitcode  : 143") == 2, stopped.stderr[-3000:]
    assert stopped.stderr.count("resume with --resume") == 1, stopped.stderr[-3000:]
    assert "stopped by SIGTERM at epoch 2, step 3" in stopped.stderr
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert (state["epoch"], state["step"], state["global_step"]) == (1, 3, 9)
    resumed = launch(tmp_path, *SIGNALLED, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_weights(weights(straight_two_epochs / "last.pt"), weights(tmp_path / "last.pt"))
    assert metrics(tmp_path)[-1]["train_loss"] == metrics(straight_two_epochs)[-1]["train_loss"]


def test_distilled_two_processes_with_batch_b_match_one_process_with_batch_2b(tmp_path):
    run(tmp_path / "teacher", 1, *MLP, "data.batch_size=16", "train.epochs=1", "binop.enabled=false")
    distill = (f"distill.teacher={tmp_path / 'teacher' / 'last.pt'}", "distill.weight=0.5", "distill.temperature=2")
    run(tmp_path / "one", 1, *MLP, *distill, "data.batch_size=16", "train.epochs=2")
    run(tmp_path / "two", 2, *MLP, *distill, "data.batch_size=8", "train.epochs=2")
    one, two = weights(tmp_path / "one" / "last.pt"), weights(tmp_path / "two" / "last.pt")
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5)
    plain = tmp_path / "plain"
    run(plain, 1, *MLP, "data.batch_size=16", "train.epochs=2")
    assert any(not torch.equal(weights(plain / "last.pt")[k], one[k]) for k in one)  # the teacher took part
