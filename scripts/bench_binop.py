"""What BinOp costs per training step: BinOp / plain step time, eager and compiled.

For LeNet-5 (batch 128) and NIN (batch 32), a plain full-precision training step and the
same step with BinOp attached (same architecture, batch, Adam optimizer, BinOp projecting
after each step) run alternately in one process, the starting one rotating every round;
the ratio is the median over rounds of BinOp's step time over the plain step's. Each
step's minor page faults (memory the kernel maps afresh, as glibc's heap gives freed memory
back and takes it again) are counted too. The compiled pair compiles each model with
torch.compile (as ``train.compile: true`` does); the time of its first steps, which
compile, is printed on a line of its own. The script prints the four ratios and the heap
they ran on.

The heap: with glibc's default settings, whether an eager step's memory is given back and
faulted in again changes from process to process, for the plain step as much as for BinOp's,
and moves the eager LeNet-5 ratio from run to run (the fault columns show it); a setting
that keeps the heap, and its measured effect, is a tip in docs/trainer.md ("Training on a
CPU"). `scripts/results.py` runs this script with the default heap.

    python scripts/bench_binop.py                  # 200 rounds per pair
    python scripts/bench_binop.py --quick          # 20 rounds per pair
    python scripts/bench_binop.py --models lenet5 --modes eager --rounds 50
    python scripts/bench_binop.py --phases         # also where the eager step's time goes
    python scripts/bench_binop.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from xnortrain import BinOp
from xnortrain.zoo import lenet5, nin

CASES = {"lenet5": (lenet5, (128, 1, 28, 28)), "nin": (nin, (32, 3, 32, 32))}
MODES = ("eager", "compiled")
PHASES = ("forward", "backward", "optimizer step and projection")
WARMUP = 3  # steps before timing; under torch.compile the first ones compile


def make_step(build: Callable[[], nn.Module], binop: bool, compiled: bool, laps: dict | None = None):
    """A training step of `build()`, plain or with BinOp, eager or compiled. `laps`, if
    given, collects the time of each phase of the step (one list per phase)."""
    torch.manual_seed(0)
    model = build()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)
    if binop:
        BinOp(model, optimizer=optimizer)
    forward = torch.compile(model) if compiled else model

    def step(x, y):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(forward(x), y)
        after_forward = time.perf_counter()
        loss.backward()
        after_backward = time.perf_counter()
        optimizer.step()  # BinOp's post-hook projects the real weights
        if laps is not None:
            end = time.perf_counter()
            for phase, seconds in zip(PHASES, (after_forward - start, after_backward - after_forward,
                                               end - after_backward)):
                laps.setdefault(phase, []).append(seconds)

    return step


def seconds(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def minor_faults() -> int:
    """This process's minor page faults so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def write_json(path: str, **fields) -> None:
    """The benchmark's results to `path`, with the torch version and its thread count."""
    with open(path, "w") as f:
        json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), **fields}, f, indent=2)


def torch_line() -> str:
    """The torch version, its thread count and the processor, as one line."""
    return f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"


def heap() -> str:
    """The glibc heap settings this process runs with (GLIBC_TUNABLES, read at start-up)."""
    tunables = os.environ.get("GLIBC_TUNABLES")
    if tunables:
        return f"GLIBC_TUNABLES={tunables}"
    return "glibc's default (eager ratios vary from process to process with its page faults; docs/trainer.md has a tip)"


def alternate(steps: dict[str, Callable], x, y, rounds: int,
              faults: dict[str, list[int]] | None = None) -> dict[str, list[float]]:
    """Step times of each trainer, run round-robin; the starting trainer rotates every round,
    so none always runs on a cache the other left warm. `faults`, if given, collects each
    step's minor page faults (one list per trainer)."""
    names = list(steps)
    times = {name: [] for name in names}
    for i in range(rounds):
        for name in names[i % len(names):] + names[:i % len(names)]:
            before = minor_faults()
            times[name].append(seconds(steps[name], x, y))
            if faults is not None:
                faults.setdefault(name, []).append(minor_faults() - before)
    return times


def paired_ratio(times: list[float], baseline: list[float]) -> float:
    """The median over rounds of time / baseline time of the same round."""
    return statistics.median(t / b for t, b in zip(times, baseline))


def bench_pair(name: str, mode: str, rounds: int) -> dict:
    build, shape = CASES[name]
    x, y = torch.randn(shape), torch.randint(0, 10, (shape[0],))
    steps = {kind: make_step(build, binop=kind == "binop", compiled=mode == "compiled") for kind in ("plain", "binop")}
    warmup_s = {kind: sum(seconds(step, x, y) for _ in range(WARMUP)) for kind, step in steps.items()}
    faults = {}
    times = alternate(steps, x, y, rounds, faults)
    ratio = paired_ratio(times["binop"], times["plain"])
    return {"model": name, "batch": shape[0], "mode": mode, "rounds": rounds,
            "plain_step_ms": statistics.median(times["plain"]) * 1e3,
            "binop_step_ms": statistics.median(times["binop"]) * 1e3,
            "plain_faults_per_step": statistics.mean(faults["plain"]),
            "binop_faults_per_step": statistics.mean(faults["binop"]),
            "ratio": ratio, "warmup_s": warmup_s}


def bench_phases(name: str, rounds: int) -> dict:
    """The eager plain and BinOp steps split into phases: the median of the paired
    differences BinOp - plain of each phase, in ms."""
    build, shape = CASES[name]
    x, y = torch.randn(shape), torch.randint(0, 10, (shape[0],))
    laps = {"plain": {}, "binop": {}}
    steps = {kind: make_step(build, binop=kind == "binop", compiled=False, laps=laps[kind]) for kind in laps}
    alternate(steps, x, y, WARMUP + rounds)
    return {phase: {"plain_ms": statistics.median(laps["plain"][phase][WARMUP:]) * 1e3,
                    "added_ms": statistics.median(b - p for b, p in zip(laps["binop"][phase][WARMUP:],
                                                                        laps["plain"][phase][WARMUP:])) * 1e3}
            for phase in PHASES}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 rounds per pair instead of 200")
    parser.add_argument("--rounds", type=int, help="rounds per pair (overrides --quick)")
    parser.add_argument("--models", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--phases", action="store_true", help="also split the eager steps into phases")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    rounds = args.rounds or (20 if args.quick else 200)

    print(torch_line())
    print(f"heap: {heap()}")
    print("| model | batch | mode | plain step ms | BinOp step ms | BinOp / plain (median of pairs) "
          "| page faults per step, plain / BinOp (mean) |")
    print("|---|---|---|---|---|---|---|")
    results = []
    for mode in args.modes:
        for name in args.models:
            r = bench_pair(name, mode, rounds)
            results.append(r)
            print(f"| {name} | {r['batch']} | {mode} | {r['plain_step_ms']:.2f} | {r['binop_step_ms']:.2f} | "
                  f"{r['ratio']:.3f} | "
                  f"{r['plain_faults_per_step']:.0f} / {r['binop_faults_per_step']:.0f} |", flush=True)
    for r in results:
        if r["mode"] == "compiled":
            print(f"compile time ({r['model']}, first {WARMUP} steps): plain {r['warmup_s']['plain']:.1f} s, "
                  f"BinOp {r['warmup_s']['binop']:.1f} s")
    phases = {}
    if args.phases:
        print("\n| model | phase (eager) | plain ms (median) | BinOp - plain, paired (median) ms |")
        print("|---|---|---|---|")
        for name in args.models:
            phases[name] = bench_phases(name, rounds)
            for phase, p in phases[name].items():
                print(f"| {name} | {phase} | {p['plain_ms']:.3f} | {p['added_ms']:.3f} |", flush=True)
    if args.json:
        write_json(args.json, heap=heap(), pairs=results, phases=phases)
    return results


if __name__ == "__main__":
    main()
