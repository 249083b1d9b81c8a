"""Real-data accuracy on Fashion-MNIST: LeNet-5 as full precision, BWN and XNOR-Net (the
binary nets also distilled from the full-precision run), LeNet-5 XNOR-Net with today's
ingredients in two stages and in one, and the zoo's ResNet-20 as float, as ReActNet's
two-stage recipe and as the same recipe in one stage.

Each variant runs through the normal command line (`python -m xnortrain --config CONFIG
--set ...`) with the seed of its round. The LeNet-5 rows use configs/fashion_mnist_lenet.yaml
(Adam, weight decay 1e-4, batch 128, cosine learning-rate decay over the epochs, the rate
changing every step, the `xnor` gradient rule; lr 0.001 for full precision, 0.002 for BWN and
0.003 for XNOR-Net), for --epochs epochs; their distilled rows set `distill.teacher` to the
last.pt of the full-precision run of the same seed (weight 0.5, temperature 1). The
`lenet5-reactnet` rows are the shipped configs as they are, with their own epochs: the
one-stage recipe (fashion_mnist_lenet_reactnet.yaml, 15 epochs) and its two-stage form,
stage 1 (fashion_mnist_lenet_reactnet_stage1.yaml, binary inputs and real weights, 7 epochs)
then the one-stage config for 8 epochs started from stage 1. The ResNet-20 rows are the
shipped ResNet configs at the benchmark's size, so that three seeds of every row fit in 3
hours on a 2-core CPU: the first 12,000 training images (a fifth) and 3 epochs where the
shipped config trains 12. They are the float teacher (fashion_mnist_resnet_float.yaml, 3
epochs), the float twin (the same for 6 epochs, as long as the binary network trains in all),
stage 1 (fashion_mnist_resnet_stage1.yaml, binary inputs and real weights, 3 epochs), stage 2
(fashion_mnist_resnet.yaml, everything binary, 3 epochs, started from stage 1 and distilled
from the float teacher), and the one-stage control: stage 2's recipe for 6 epochs from a fresh
initialisation. Teachers and first stages are the last.pt of the same seed, never chosen on
the test set. Each gap is taken against the variant's full-precision twin of the same seed.

The table (test top-1 after the last epoch, epochs, wall time) goes to stdout and, as
Markdown and JSON, to --out, with the loss and top-1 curves of the runs of the first seed
(`accuracy.png`, when matplotlib is installed). With several seeds a second table gives each
variant's mean, range and mean gap.

    python scripts/bench_accuracy.py                  # every row, seed 0
    python scripts/bench_accuracy.py --seeds 0 1 2 --jobs 2   # three seeds, two runs at a time
    python scripts/bench_accuracy.py --only lenet5    # the 2016 LeNet-5 rows alone (or: lenet5-reactnet, resnet20)
    python scripts/bench_accuracy.py --epochs 3       # shorter LeNet-5 runs (the cosine decay spans them)
    python scripts/bench_accuracy.py --quick          # 1 epoch each on the first 10,000 images
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
from dataclasses import dataclass
from pathlib import Path

import torch

from xnortrain.errors import UserError
from xnortrain.train.plot import plot_runs

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@dataclass(frozen=True)
class Variant:
    """One row: its group (what --only selects), a shipped config, the settings that make the
    variant, the full-precision variant its gap is taken against, the variants of the same
    seed it starts from or distils from (`needs`), and its epochs (None: the benchmark's
    --epochs)."""

    group: str
    config: str
    sets: tuple[str, ...]
    twin: str
    needs: tuple[str, ...] = ()
    epochs: int | None = None


def run_of(name: str) -> str:
    """The last.pt of variant `name` in the same seed's directory, as a --set value."""
    return "{seed_dir}/" + directory_of(name) + "/last.pt"


def directory_of(name: str) -> str:
    return name.replace(" ", "_").lower()


FULL_PRECISION = "full precision"
LENET_STAGE1 = "XNOR-Net ReActNet stage 1"
RESNET_FLOAT = "ResNet-20 float"
RESNET_TWIN = "ResNet-20 float twin"
RESNET_STAGE1 = "ResNet-20 stage 1"
LENET = "fashion_mnist_lenet.yaml"
BINARY_WEIGHTS = ("binop.enabled=true", "binop.activations=none", "optim.lr=0.002")
XNOR = ("binop.enabled=true", "binop.activations=sign", "optim.lr=0.003")
DISTILLED = (f"distill.teacher={run_of(FULL_PRECISION)}", "distill.weight=0.5", "distill.temperature=1.0")
RESNET_SIZE = ("data.train_subset=12000",)  # a fifth of the training images; the test images all
RESNET_TEACHER = f"distill.teacher={run_of(RESNET_FLOAT)}"
VARIANTS = {
    FULL_PRECISION: Variant("lenet5", LENET, ("binop.enabled=false", "optim.lr=0.001"), FULL_PRECISION),
    "BWN": Variant("lenet5", LENET, BINARY_WEIGHTS, FULL_PRECISION),
    "XNOR-Net": Variant("lenet5", LENET, XNOR, FULL_PRECISION),
    "BWN distilled": Variant("lenet5", LENET, BINARY_WEIGHTS + DISTILLED, FULL_PRECISION, (FULL_PRECISION,)),
    "XNOR-Net distilled": Variant("lenet5", LENET, XNOR + DISTILLED, FULL_PRECISION, (FULL_PRECISION,)),
    LENET_STAGE1: Variant("lenet5-reactnet", "fashion_mnist_lenet_reactnet_stage1.yaml", (), FULL_PRECISION, epochs=7),
    "XNOR-Net ReActNet two-stage": Variant(
        "lenet5-reactnet", "fashion_mnist_lenet_reactnet.yaml", (f"model.init_from={run_of(LENET_STAGE1)}",),
        FULL_PRECISION, (LENET_STAGE1,), epochs=8),
    "XNOR-Net ReActNet one-stage": Variant("lenet5-reactnet", "fashion_mnist_lenet_reactnet.yaml", (), FULL_PRECISION,
                                           epochs=15),
    RESNET_FLOAT: Variant("resnet20", "fashion_mnist_resnet_float.yaml", RESNET_SIZE, RESNET_FLOAT, epochs=3),
    RESNET_TWIN: Variant("resnet20", "fashion_mnist_resnet_float.yaml", RESNET_SIZE, RESNET_TWIN, epochs=6),
    RESNET_STAGE1: Variant("resnet20", "fashion_mnist_resnet_stage1.yaml", RESNET_SIZE, RESNET_FLOAT, epochs=3),
    "ResNet-20 ReActNet two-stage": Variant(
        "resnet20", "fashion_mnist_resnet.yaml",
        (*RESNET_SIZE, f"model.init_from={run_of(RESNET_STAGE1)}", RESNET_TEACHER), RESNET_TWIN,
        (RESNET_FLOAT, RESNET_STAGE1), epochs=3),
    "ResNet-20 ReActNet one-stage": Variant(
        "resnet20", "fashion_mnist_resnet.yaml", (*RESNET_SIZE, "model.init_from=null", RESNET_TEACHER), RESNET_TWIN,
        (RESNET_FLOAT,), epochs=6),
}
GROUPS = list(dict.fromkeys(v.group for v in VARIANTS.values()))


def with_prerequisites(names: list[str]) -> list[str]:
    """`names` and every variant they start from, distil from or take their gap against,
    in the table's order."""
    chosen = set()

    def add(name: str) -> None:
        if name not in chosen:
            chosen.add(name)
            for other in (*VARIANTS[name].needs, VARIANTS[name].twin):
                add(other)

    for name in names:
        add(name)
    return [name for name in VARIANTS if name in chosen]


QUICK_SUBSET = 10_000  # --quick: 1 epoch on the first 10,000 training images


def run_variant(name: str, seed: int, epochs: int, quick: bool, out_dir: Path, threads: int) -> dict:
    """Train variant `name` with `seed` (for `epochs` unless it has its own; 1 epoch on a
    subset when `quick`) through the command line, and read its metrics."""
    variant, seed_dir = VARIANTS[name], out_dir / f"seed{seed}"
    run_dir = seed_dir / directory_of(name)
    epochs = 1 if quick else variant.epochs or epochs
    sets = [f"train.epochs={epochs}", f"train.seed={seed}", f"train.out_dir={run_dir}",
            *with_seed_dir(variant.sets, seed_dir)]
    if quick:
        sets.append(f"data.train_subset={QUICK_SUBSET}")  # the last --set of a key wins
    cmd = [sys.executable, "-m", "xnortrain", "--config", str(CONFIGS / variant.config), "--quiet"]
    for s in sets:
        cmd += ["--set", s]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    wall = time.perf_counter() - start
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"variant": name, "seed": seed, "test_top1": metrics[-1]["val_acc1"],
            "best_test_top1": max(m["val_acc1"] for m in metrics),
            "epochs": epochs, "wall_s": wall, "mean_epoch_s": sum(m["epoch_time_s"] for m in metrics) / len(metrics),
            "threads": threads, "run_dir": str(run_dir)}


def run_all(names: list[str], seeds: list[int], epochs: int, quick: bool, out_dir: Path, jobs: int) -> list[dict]:
    """Every variant in `names` for every seed, `jobs` runs at a time on the machine's cores
    split evenly. The queue takes the variants that others need first, and each run waits for
    the runs of its seed that it needs."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    order = sorted(((seed, name) for seed in seeds for name in names), key=lambda sn: bool(VARIANTS[sn[1]].needs))
    with ThreadPoolExecutor(jobs) as pool:
        futures = {}
        for seed, name in order:
            needed = [futures[seed, other] for other in VARIANTS[name].needs]
            futures[seed, name] = pool.submit(_after, needed, run_variant, name, seed, epochs, quick, out_dir, threads)
        return [futures[seed, name].result() for seed in seeds for name in names]


def _after(firsts, work, *args):
    """`work(*args)` once the futures `firsts` have finished; a failure among them stops `work`."""
    for first in firsts:
        first.result()
    return work(*args)


def with_seed_dir(sets: tuple[str, ...], seed_dir: Path) -> list[str]:
    """The variant's settings with `{seed_dir}` (the directory of its seed's runs) filled in."""
    return [s.replace("{seed_dir}", str(seed_dir)) for s in sets]


def gap_points(row: dict, rows: list[dict]) -> float:
    """Test top-1 of `row` minus that of its full-precision twin with the same seed, in points."""
    twin = VARIANTS[row["variant"]].twin
    fp = next(r for r in rows if r["seed"] == row["seed"] and r["variant"] == twin)
    return 100 * (row["test_top1"] - fp["test_top1"])


def markdown(rows: list[dict], jobs: int) -> str:
    lines = ["| variant | seed | test top-1 | vs its full-precision twin | epochs | wall time s | train s/epoch |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['seed']} | {r['test_top1']:.2%} | {gap_points(r, rows):+.2f} pt "
                     f"| {r['epochs']} | {r['wall_s']:.0f} | {r['mean_epoch_s']:.1f} |")
    if len({r["seed"] for r in rows}) > 1:
        lines += ["", "| variant | seeds | mean test top-1 | min - max | mean vs its twin |", "|---|---|---|---|---|"]
        for name in dict.fromkeys(r["variant"] for r in rows):
            runs = [r for r in rows if r["variant"] == name]
            top1 = [r["test_top1"] for r in runs]
            gap = statistics.mean(gap_points(r, rows) for r in runs)
            lines.append(f"| {name} | {len(runs)} | {statistics.mean(top1):.2%} | {min(top1):.2%} - {max(top1):.2%} "
                         f"| {gap:+.2f} pt |")
    needed = {other for r in rows for other in VARIANTS[r["variant"]].needs}
    for name in dict.fromkeys(r["variant"] for r in rows if r["variant"] in needed):
        runs = ", ".join(f"{r['wall_s']:.0f} s (seed {r['seed']})" for r in rows if r["variant"] == name)
        lines += ["", f"The runs that start from or distil from {name} wait for it; it trained in {runs}."]
    lines += ["", f"{jobs} run(s) at a time, {rows[0]['threads']} thread(s) each, on {os.cpu_count()} CPU cores; "
              "wall times are under that sharing."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 epoch each on the first 10,000 training images")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="train.seed of each round (default: 0)")
    parser.add_argument("--epochs", type=int, default=15, help="epochs of each LeNet-5 run (default: 15)")
    parser.add_argument("--only", nargs="+", choices=GROUPS, default=GROUPS,
                        help="these groups of rows alone, with the rows they start from or compare against")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at a time, the CPU cores split between them (default: 1)")
    parser.add_argument("--out", default="runs/bench_accuracy",
                        help="directory for the runs, accuracy.md and accuracy.json")
    parser.add_argument("--json", help="also write accuracy.json's rows to this file")
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    out_dir = Path(args.out)
    names = with_prerequisites([name for name, variant in VARIANTS.items() if variant.group in args.only])
    rows = run_all(names, args.seeds, args.epochs, args.quick, out_dir, args.jobs)
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
