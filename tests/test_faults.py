"""A real training process killed with SIGKILL at random moments: every checkpoint it leaves
loads, and resuming reaches the same final weights as a run never interrupted."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train import assert_same_weights, cli_env, synthetic_args, weights

from xnortrain.train.checkpoint import load_checkpoint

TESTS = Path(__file__).parent
CONFIG = str(TESTS.parent / "configs" / "mnist_lenet.yaml")

def start(out: Path, resume: bool, epochs: int) -> subprocess.Popen:
    """The CLI on 96 synthetic images, batch 16 (6 steps an epoch), a checkpoint after each step."""
    sets = (f"train.epochs={epochs}", "train.checkpoint_every_steps=1", "train.deterministic=true")
    cmd = [sys.executable, "-m", "xnortrain", "--config", CONFIG, *synthetic_args(out, *sets), "--quiet"]
    return subprocess.Popen(cmd + (["--resume"] if resume else []), env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for_a_new_checkpoint(proc: subprocess.Popen, last: Path, deadline: float) -> None:
    """Until the process writes last.pt afresh (it is training), ends, or the deadline passes."""
    before = last.stat().st_mtime_ns if last.exists() else None
    while proc.poll() is None and time.monotonic() < deadline:
        if last.exists() and last.stat().st_mtime_ns != before:
            return
        time.sleep(0.002)


def wait_for_a_random_moment(proc: subprocess.Popen, last: Path, rng: random.Random) -> None:
    """Into training, then a random fraction of one step further: mid-step or mid-write.

    The step is timed here, between two checkpoints, so a life trains a few steps on any
    machine, fast or slow, and the run has room for every kill."""
    wait_for_a_new_checkpoint(proc, last, time.monotonic() + 120)
    written = time.monotonic()
    wait_for_a_new_checkpoint(proc, last, written + 60)
    step = time.monotonic() - written
    time.sleep(rng.uniform(0.0, step))


def check_every_checkpoint(out: Path) -> None:
    for path in sorted(out.glob("*.pt")):
        state = load_checkpoint(path)  # raises CheckpointError on a damaged file
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point()), path


@pytest.mark.parametrize("kills", [3, pytest.param(10, marks=pytest.mark.slow)])
def test_sigkill_at_random_moments_leaves_loadable_checkpoints_and_resume_is_exact(tmp_path, kills):
    epochs = 2 * kills  # a life trains two or three steps before its kill (an epoch is 6): room to spare
    straight = start(tmp_path / "straight", resume=False, epochs=epochs)  # trains while the lives below are killed

    out, rng, killed = tmp_path / "killed", random.Random(kills), 0
    while killed < kills:
        proc = start(out, resume=(out / "last.pt").exists(), epochs=epochs)
        wait_for_a_random_moment(proc, out / "last.pt", rng)
        if proc.poll() is not None:
            break  # finished before the kill
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        killed += 1
        check_every_checkpoint(out)
    assert killed == kills, f"only {killed} of {kills} kills landed before the run finished"

    final = start(out, resume=True, epochs=epochs)
    assert final.wait(timeout=300) == 0, final.stderr.read()
    assert straight.wait(timeout=300) == 0, straight.stderr.read()
    check_every_checkpoint(out)
    assert_same_weights(weights(tmp_path / "straight" / "last.pt"), weights(out / "last.pt"))
