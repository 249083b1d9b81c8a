"""The spread of inference latency from one process to the next: the same exported model
timed in several fresh processes, one after another, each timing in interleaved rounds the
PyTorch float path, the xnortrain kernels, its compiled package (`python -m xnortrain
package`, compiled once before the processes start, where the native kernels run) and a fixed
pure-Python loop that uses no torch.

The loop is the control: what it varies between processes and within one (p90 over p50),
the machine gives every process whatever it runs (frequency, other tenants of the host),
and the kernels cannot do better than it.

    python scripts/bench_processes.py                          # NIN batch 1, 6 processes
    python scripts/bench_processes.py --models nin alexnet --processes 10
    python scripts/bench_processes.py --threads 1              # every process on one thread
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from bench_inference import MODELS, export_one, interleaved_times, package_of, package_path, percentile

from xnortrain.deploy import kernels, load_exported, load_package

COLUMNS = ("float path", "kernels", "package", "python loop")  # the package where it was compiled


def python_loop() -> int:
    """A fixed amount of pure-Python work (about 10 ms): no torch, no threads, no memory."""
    total = 0
    for i in range(200_000):
        total += i * i
    return total


def time_one_process(exported: Path, shape: list[int], repeats: int) -> dict[str, dict[str, float]]:
    """In this process: p50 and p90 (ms) of each column over `repeats` interleaved rounds."""
    models = {"float path": load_exported(exported), "kernels": load_exported(exported, binary_kernels=True)}
    if package_path(exported).is_file():
        models["package"] = load_package(package_path(exported))
    x = torch.randn(1, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        times = interleaved_times({**{k: (lambda m=m: m(x)) for k, m in models.items()}, "python loop": python_loop},
                                  repeats)
    return {k: {"p50": percentile(v, 50) * 1e3, "p90": percentile(v, 90) * 1e3} for k, v in times.items()}


def spread(values: list[float]) -> float:
    return max(values) / min(values)


def print_model(name: str, runs: list[dict]) -> dict:
    """The per-process table of one model and its summary line; returns the summary."""
    columns = [k for k in COLUMNS if k in runs[0]]
    print(f"\n{name}, batch 1: p50 ms in each process (p90 / p50)\n")
    print("| process | " + " | ".join(columns) + " | float / kernels |")
    print("|---|" + "---|" * (len(columns) + 1))
    for i, run in enumerate(runs, 1):
        cells = " | ".join(f"{run[k]['p50']:.2f} ({run[k]['p90'] / run[k]['p50']:.2f})" for k in columns)
        print(f"| {i} | {cells} | {run['float path']['p50'] / run['kernels']['p50']:.2f}x |")
    summary = {k: {"process_spread": spread([r[k]["p50"] for r in runs]),
                   "worst_p90_over_p50": max(r[k]["p90"] / r[k]["p50"] for r in runs)} for k in columns}
    print("\nslowest / fastest process median: " + ", ".join(f"{k} {summary[k]['process_spread']:.2f}" for k in columns)
          + "; worst p90 / p50: " + ", ".join(f"{k} {summary[k]['worst_p90_over_p50']:.2f}" for k in columns))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=["nin"])
    parser.add_argument("--processes", type=int, default=6, help="fresh processes per model (default 6)")
    parser.add_argument("--repeats", type=int, default=25, help="interleaved rounds in each process (default 25)")
    parser.add_argument("--threads", type=int, help="torch threads in every process (default: torch's own)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--one-process", nargs=2, metavar=("EXPORT", "SHAPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one_process:  # a child: time and report as one JSON line
        exported, shape = args.one_process
        times = time_one_process(Path(exported), json.loads(shape), args.repeats)
        print(json.dumps({**times, "threads": torch.get_num_threads()}))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.processes} processes a model, "
          f"{args.repeats} rounds each")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            _, exported = export_one(name, Path(tmp))
            if kernels.load() is None:
                package_of(exported)
            shape = json.dumps(MODELS[name][1])
            runs = [json.loads(subprocess.run(
                [sys.executable, __file__, "--one-process", str(exported), shape, "--repeats", str(args.repeats),
                 "--threads", str(torch.get_num_threads())],
                check=True, capture_output=True, text=True).stdout.splitlines()[-1]) for _ in range(args.processes)]
            results[name] = {"processes": runs, "summary": print_model(name, runs)}
    if args.json:
        Path(args.json).write_text(json.dumps({"torch": torch.__version__, "models": results}, indent=2))


if __name__ == "__main__":
    main()
