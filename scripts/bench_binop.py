"""What BinOp costs per training step, measured side by side in one process.

For LeNet-5 (batch 128) and NIN (batch 32), a plain full-precision training step and the
same step with BinOp attached (same architecture, batch and optimizer) run alternately,
many times, and then the plain step and BinOp on the eager path; the script prints the
median step times, the median of the paired ratios BinOp / plain, and BinOp's own time:
binarizing every target weight, the backward rule on a random gradient and the
projection, timed in isolation. A second table splits the paired steps into their phases
(forward, backward, optimizer step, projection), gives the median of the paired
differences of each, so it shows where BinOp's time goes inside a step, and counts the
page faults of a step (memory the kernel maps in afresh). A third table gives BinOp's
own time for the LeNet-5, NIN and AlexNet weight sets against their number of binarized
weights, so its growth with the weights is visible. A fourth table times XNOR-Net steps
with the activation scale K and channel_mean against none.

    python scripts/bench_binop.py            # 200 repetitions
    python scripts/bench_binop.py --quick    # 30 repetitions
    python scripts/bench_binop.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from functools import partial
from unittest import mock

import torch
from torch import nn

from xnortrain import BinOp, fused
from xnortrain.activations import ACTIVATION_SCALES
from xnortrain.zoo import alexnet, lenet5, nin

WEIGHT_SETS = {"lenet5": lenet5, "nin": nin, "alexnet": alexnet}
CASES = {
    "lenet5": (lenet5, (128, 1, 28, 28)),
    "nin": (nin, (32, 3, 32, 32)),
}


PHASES = ("forward", "backward", "optimizer step", "projection")


class Laps:
    """The time of each phase of the steps it watches, a list per phase, and the page faults
    (minor: memory the kernel maps in and zeroes) of each step."""

    def __init__(self):
        self.times = {phase: [] for phase in PHASES}
        self.page_faults = []
        self._last = 0.0
        self._faults = 0

    def start(self) -> None:
        self._faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.times[phase].append(now - self._last)
        self._last = now

    def stop(self) -> None:
        self.page_faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - self._faults)


def make_trainer(build, binop: bool, kernels: bool = True, laps: Laps | None = None):
    """A training step of `build()`, plain or with BinOp; `kernels=False`: BinOp's eager path;
    `laps` times the step's phases. BinOp projects after the optimizer step, as
    ``BinOp(model, optimizer=optimizer)`` would, but called here so that it is timed apart."""
    torch.manual_seed(0)
    model = build()
    controller = BinOp(model) if binop else None
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)
    laps = Laps() if laps is None else laps

    def step(x, y):
        laps.start()
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        laps.lap("forward")
        loss.backward()
        laps.lap("backward")
        optimizer.step()
        laps.lap("optimizer step")
        if controller is not None:
            controller.project_()
        laps.lap("projection")
        laps.stop()

    return (step if kernels else partial(without_kernels, step)), controller


def without_kernels(fn, *args):
    """fn(*args) on the eager path, as on a machine without a C compiler."""
    with mock.patch.object(fused, "usable", lambda w: False):
        return fn(*args)


def time_once(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def binop_own_seconds(controller: BinOp, repeats: int) -> float:
    """Median time of BinOp's own work on all targets: binarize + backward rule + projection."""
    weights = list(controller.weights.values())
    parametrizations = [layer.parametrizations.weight[0] for layer in controller.targets.values()]
    grads = [torch.randn_like(w) for w in weights]

    def own_work():
        outputs = [p(w) for p, w in zip(parametrizations, weights)]
        torch.autograd.backward(outputs, grads)
        controller.project_()

    for _ in range(5):
        own_work()
    times = [time_once(own_work) for _ in range(repeats)]
    for w in weights:
        w.grad = None
    return statistics.median(times)


def alternate(steps: dict, x, y, repeats: int, warmup: int) -> dict[str, list[float]]:
    """Step times of each trainer, run round-robin; the starting trainer rotates every round,
    so none always runs on a warm cache."""
    for _ in range(warmup):
        for step in steps.values():
            step(x, y)
    names = list(steps)
    times = {name: [] for name in names}
    for i in range(repeats):
        for name in names[i % len(names):] + names[:i % len(names)]:
            times[name].append(time_once(steps[name], x, y))
    return times


def median_ratio(times: list[float], baseline: list[float]) -> float:
    return statistics.median(t / b for t, b in zip(times, baseline))


def bench_model(name: str, repeats: int, warmup: int) -> dict:
    build, shape = CASES[name]
    x = torch.randn(shape)
    y = torch.randint(0, 10, (shape[0],))
    plain_step, _ = make_trainer(build, binop=False)
    binop_step, controller = make_trainer(build, binop=True)
    eager_step, eager_controller = make_trainer(build, binop=True, kernels=False)
    # two pairs rather than three in turn: each trainer's allocations change the heap the
    # next one finds, so a third trainer in the rotation adds its noise to the other two
    times = alternate({"plain": plain_step, "binop": binop_step}, x, y, repeats, warmup)
    eager_times = alternate({"plain": plain_step, "eager": eager_step}, x, y, repeats, warmup)
    return {
        "model": name,
        "batch": shape[0],
        "binarized_weights": sum(w.numel() for w in controller.weights.values()),
        "plain_step_ms": statistics.median(times["plain"]) * 1e3,
        "binop_step_ms": statistics.median(times["binop"]) * 1e3,
        "median_ratio": median_ratio(times["binop"], times["plain"]),
        "eager_median_ratio": median_ratio(eager_times["eager"], eager_times["plain"]),
        "binop_own_ms": binop_own_seconds(controller, repeats) * 1e3,
        "eager_own_ms": without_kernels(binop_own_seconds, eager_controller, repeats) * 1e3,
        "repeats": repeats,
    }


def bench_phases(name: str, repeats: int, warmup: int) -> dict:
    """The plain and the BinOp step split into phases: the median time of each phase, and the
    median of the paired differences BinOp - plain; and the mean page faults of a step."""
    build, shape = CASES[name]
    x = torch.randn(shape)
    y = torch.randint(0, 10, (shape[0],))
    laps = {"plain": Laps(), "binop": Laps()}
    steps = {kind: make_trainer(build, binop=kind == "binop", laps=laps[kind])[0] for kind in laps}
    alternate(steps, x, y, repeats, warmup)
    plain, binop = ({phase: times[-repeats:] for phase, times in laps[kind].times.items()} for kind in laps)
    return {"model": name, "phases": {phase: {
        "plain_ms": statistics.median(plain[phase]) * 1e3,
        "binop_ms": statistics.median(binop[phase]) * 1e3,
        "median_added_ms": statistics.median(b - p for b, p in zip(binop[phase], plain[phase])) * 1e3,
    } for phase in PHASES}, **{f"{kind}_page_faults_per_step": statistics.mean(laps[kind].page_faults[-repeats:])
                               for kind in laps}}


def bench_act_scale(name: str, repeats: int, warmup: int) -> dict:
    """XNOR-Net steps with the activation scale K and channel_mean against none."""
    build, shape = CASES[name]
    x = torch.randn(shape)
    y = torch.randint(0, 10, (shape[0],))
    steps = {scale: make_trainer(partial(build, act_scale=scale), binop=True)[0] for scale in ACTIVATION_SCALES}
    times = alternate(steps, x, y, repeats, warmup)
    return {"model": name, "none_step_ms": statistics.median(times["none"]) * 1e3,
            **{f"{scale}_over_none": median_ratio(times[scale], times["none"]) for scale in ("channel_mean", "K")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (about a minute)")
    parser.add_argument("--models", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    repeats, warmup = (30, 5) if args.quick else (200, 20)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"fused kernels {'on' if fused.library() is not None else 'unavailable: eager path only'}")
    print("| model | batch | binarized weights | plain step ms | BinOp step ms | BinOp / plain (median) | BinOp own ms "
          "| eager BinOp / plain (median) | eager own ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    results = []
    for name in args.models:
        r = bench_model(name, repeats, warmup)
        results.append(r)
        print(f"| {r['model']} | {r['batch']} | {r['binarized_weights']:,} | {r['plain_step_ms']:.2f} | "
              f"{r['binop_step_ms']:.2f} | {r['median_ratio']:.3f} | {r['binop_own_ms']:.3f} "
              f"| {r['eager_median_ratio']:.3f} | {r['eager_own_ms']:.3f} |", flush=True)
    print("\n| model | phase | plain ms (median) | BinOp ms (median) | BinOp - plain, paired (median) ms |")
    print("|---|---|---|---|---|")
    phases = []
    for name in args.models:
        r = bench_phases(name, repeats, warmup)
        phases.append(r)
        for phase, p in r["phases"].items():
            print(f"| {name} | {phase} | {p['plain_ms']:.3f} | {p['binop_ms']:.3f} | {p['median_added_ms']:.3f} |")
        print(f"| {name} | page faults per step (mean) | {r['plain_page_faults_per_step']:.0f} "
              f"| {r['binop_page_faults_per_step']:.0f} | |", flush=True)
    print("\n| weights of | binarized weights | BinOp own ms | ns per weight |")
    print("|---|---|---|---|")
    own = []
    for name, build in WEIGHT_SETS.items():
        torch.manual_seed(0)
        controller = BinOp(build())
        n = sum(w.numel() for w in controller.weights.values())
        ms = binop_own_seconds(controller, max(5, repeats // 10)) * 1e3
        own.append({"model": name, "binarized_weights": n, "binop_own_ms": ms})
        print(f"| {name} | {n:,} | {ms:.3f} | {ms * 1e6 / n:.2f} |", flush=True)
    print("\n| model | step ms, act_scale none | channel_mean / none (median) | K / none (median) |")
    print("|---|---|---|---|")
    scales = []
    for name in args.models:
        r = bench_act_scale(name, max(10, repeats // 2), warmup)
        scales.append(r)
        print(f"| {name} | {r['none_step_ms']:.2f} | {r['channel_mean_over_none']:.3f} | {r['K_over_none']:.3f} |",
              flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), "steps": results,
                       "phases": phases, "own": own, "act_scale": scales}, f, indent=2)


if __name__ == "__main__":
    main()
