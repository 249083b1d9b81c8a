"""Real-data accuracy: LeNet-5 on Fashion-MNIST as full precision, BWN and XNOR-Net, the
binary nets also distilled from the full-precision run.

Each variant runs through the normal command line (`python -m xnortrain --config
configs/fashion_mnist_lenet.yaml --set ...`), same seed, the config's recipe (Adam, weight
decay 1e-4, batch 128, cosine learning-rate decay over the 15 epochs, the rate changing
every step, the `xnor` gradient rule); lr 0.001 for full precision, 0.002 for BWN and 0.003
for XNOR-Net. The distilled rows train the same recipe with `distill.teacher` set to the
last.pt of the full-precision run of the same seed (weight 0.5, temperature 1), so the
teacher is not chosen on the test set; their wall time is the student's, and the teacher's
training time is given on a line of its own. The table (test top-1 after the last epoch,
epochs, wall time) goes to stdout and, as Markdown and JSON, to --out, with the loss and
top-1 curves of the runs of the first seed (`accuracy.png`, when matplotlib is installed).
With several seeds, each gap is taken against full precision of the same seed, and a second
table gives each variant's mean, range and mean gap.

    python scripts/bench_accuracy.py                  # 15 epochs each, 5 runs
    python scripts/bench_accuracy.py --seeds 0 1 2    # three times as long
    python scripts/bench_accuracy.py --seeds 0 1 2 --jobs 2   # two runs at a time, cores split between them
    python scripts/bench_accuracy.py --epochs 3       # shorter runs (the cosine decay spans them)
    python scripts/bench_accuracy.py --quick          # 1 epoch on the first 10,000 images
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from xnortrain.errors import UserError
from xnortrain.train.plot import plot_runs

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "fashion_mnist_lenet.yaml"
FULL_PRECISION = "full precision"
BINARY_WEIGHTS = ["binop.enabled=true", "binop.activations=none", "optim.lr=0.002"]
XNOR = ["binop.enabled=true", "binop.activations=sign", "optim.lr=0.003"]
TEACHER = "{seed_dir}/full_precision/last.pt"  # the full-precision run of the same seed
DISTILLED = [f"distill.teacher={TEACHER}", "distill.weight=0.5", "distill.temperature=1.0"]
VARIANTS = {
    FULL_PRECISION: ["binop.enabled=false", "optim.lr=0.001"],
    "BWN": BINARY_WEIGHTS,
    "XNOR-Net": XNOR,
    "BWN distilled": [*BINARY_WEIGHTS, *DISTILLED],
    "XNOR-Net distilled": [*XNOR, *DISTILLED],
}


def run_variant(name: str, sets: list[str], seed: int, epochs: int, subset: int | None, out_dir: Path,
                threads: int) -> dict:
    seed_dir = out_dir / f"seed{seed}"
    run_dir = seed_dir / name.replace(" ", "_").lower()
    common = [f"train.epochs={epochs}", f"train.seed={seed}", f"train.out_dir={run_dir}"]
    if subset:
        common.append(f"data.train_subset={subset}")
    cmd = [sys.executable, "-m", "xnortrain", "--config", str(CONFIG), "--quiet"]
    for s in [*common, *with_seed_dir(sets, seed_dir)]:
        cmd += ["--set", s]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    wall = time.perf_counter() - start
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"variant": name, "seed": seed, "test_top1": metrics[-1]["val_acc1"], "best_test_top1": max(m["val_acc1"] for m in metrics),
            "epochs": epochs, "wall_s": wall, "mean_epoch_s": sum(m["epoch_time_s"] for m in metrics) / len(metrics),
            "threads": threads, "run_dir": str(run_dir)}


def run_all(variants: dict[str, list[str]], seeds: list[int], epochs: int, subset: int | None, out_dir: Path,
            jobs: int) -> list[dict]:
    """Every variant for every seed, `jobs` runs at a time on the machine's cores split evenly.

    The full-precision runs go first in the queue: the distilled runs of a seed wait for
    theirs, which is their teacher.
    """
    threads = max(1, (os.cpu_count() or 1) // jobs)
    order = sorted(((seed, name) for seed in seeds for name in variants), key=lambda sn: sn[1] != FULL_PRECISION)
    with ThreadPoolExecutor(jobs) as pool:
        futures = {}
        for seed, name in order:
            teacher = futures.get((seed, FULL_PRECISION)) if DISTILLED[0] in variants[name] else None
            futures[seed, name] = pool.submit(_after, teacher, run_variant, name, variants[name], seed, epochs, subset,
                                              out_dir, threads)
        return [futures[seed, name].result() for seed in seeds for name in variants]


def _after(first, work, *args):
    """`work(*args)` once the future `first` (if any) has finished; its failure stops `work`."""
    if first is not None:
        first.result()
    return work(*args)


def with_seed_dir(sets: list[str], seed_dir: Path) -> list[str]:
    """The variant's settings with `{seed_dir}` (the directory of its seed's runs) filled in."""
    return [s.replace("{seed_dir}", str(seed_dir)) for s in sets]


def gap_points(row: dict, rows: list[dict]) -> float:
    """Test top-1 of `row` minus that of full precision with the same seed, in points."""
    fp = next(r for r in rows if r["seed"] == row["seed"] and r["variant"] == FULL_PRECISION)
    return 100 * (row["test_top1"] - fp["test_top1"])


def markdown(rows: list[dict], jobs: int) -> str:
    lines = ["| variant | seed | test top-1 | vs full precision | epochs | wall time s | train s/epoch |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['seed']} | {r['test_top1']:.2%} | {gap_points(r, rows):+.2f} pt "
                     f"| {r['epochs']} | {r['wall_s']:.0f} | {r['mean_epoch_s']:.1f} |")
    if len({r["seed"] for r in rows}) > 1:
        lines += ["", "| variant | seeds | mean test top-1 | min - max | mean vs full precision |", "|---|---|---|---|---|"]
        for name in dict.fromkeys(r["variant"] for r in rows):
            runs = [r for r in rows if r["variant"] == name]
            top1 = [r["test_top1"] for r in runs]
            gap = statistics.mean(gap_points(r, rows) for r in runs)
            lines.append(f"| {name} | {len(runs)} | {statistics.mean(top1):.2%} | {min(top1):.2%} - {max(top1):.2%} "
                         f"| {gap:+.2f} pt |")
    teachers = [r for r in rows if r["variant"] == FULL_PRECISION]
    if any(r["variant"].endswith("distilled") for r in rows) and teachers:
        lines += ["", "Teacher of the distilled rows: the full-precision run of the same seed, trained in "
                  + ", ".join(f"{r['wall_s']:.0f} s (seed {r['seed']})" for r in teachers) + "."]
    lines += ["", f"{jobs} run(s) at a time, {rows[0]['threads']} thread(s) each, on {os.cpu_count()} CPU cores; "
              "wall times are under that sharing."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 epoch on the first 10,000 training images")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="train.seed of each round (default: 0)")
    parser.add_argument("--epochs", type=int, default=15, help="epochs of each run (default: 15)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at a time, the CPU cores split between them (default: 1)")
    parser.add_argument("--out", default="runs/bench_accuracy", help="directory for the runs, accuracy.md and accuracy.json")
    parser.add_argument("--json", help="also write accuracy.json's rows to this file")
    args = parser.parse_args()
    epochs, subset = (1, 10_000) if args.quick else (args.epochs, None)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    out_dir = Path(args.out)
    rows = run_all(VARIANTS, args.seeds, epochs, subset, out_dir, args.jobs)
    table = markdown(rows, args.jobs)
    print(table)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "accuracy.md").write_text(table + "\n")
    result = json.dumps({"torch": torch.__version__, "rows": rows}, indent=2) + "\n"
    (out_dir / "accuracy.json").write_text(result)
    if args.json:
        Path(args.json).write_text(result)
    try:
        first = [r for r in rows if r["seed"] == args.seeds[0]]
        print(plot_runs([r["run_dir"] for r in first], out_dir / "accuracy.png", [r["variant"] for r in first]))
    except UserError as err:  # matplotlib missing: the table stands without the figure
        print(err)


if __name__ == "__main__":
    main()
