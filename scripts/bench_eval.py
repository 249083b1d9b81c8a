"""The trainer's evaluation pass at several evaluation batch sizes, for shipped configs.

For each config, the trainer builds its run (`build_run`) on synthetic data of the config's
image shape with an evaluation split of 10,000 images, the size of Fashion-MNIST's and
CIFAR-10's test splits, and times its evaluation pass (`evaluate`: forward passes under
`no_grad`, loss and top-k sums) at each `--batches` size. The sizes take turns, the starting
one rotating every round; each line gives the median pass over rounds and its ratio to the
pass at the config's own `data.eval_batch_size`, the median of the rounds' ratios.

The batch is the only thing that changes: the model, its weights and the images are the
same, so each size gives the same metrics up to float rounding.

    python scripts/bench_eval.py                   # 3 rounds per config
    python scripts/bench_eval.py --quick           # 1 round per config
    python scripts/bench_eval.py --configs fashion_mnist_resnet --batches 1000 128 --rounds 5
"""

from __future__ import annotations

import argparse
import copy
import statistics
from pathlib import Path

from bench_binop import alternate, paired_ratio, torch_line, write_json

from xnortrain.train.config import load_config
from xnortrain.train.data import declared_shape
from xnortrain.train.loop import autocast, build_run, evaluate

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"
CONFIGS = ("fashion_mnist_lenet", "fashion_mnist_resnet_float", "fashion_mnist_resnet")
BATCHES = (1000, 512, 256, 128)
EVAL_IMAGES = 10_000


def evaluation_passes(path: Path, batches: list[int], out_dir: Path) -> dict:
    """The evaluation pass of the config at `path` at each batch size, on synthetic images of
    its data's shape: callables of two ignored arguments, as `alternate` calls a step."""
    classes, shape = declared_shape(load_config(path).data)
    run = build_run(load_config(path, [
        "model.init_from=null", "distill.teacher=null", "data.name=synthetic", f"data.synthetic_shape={list(shape)}",
        f"data.synthetic_classes={classes}", f"data.synthetic_eval_size={EVAL_IMAGES}", f"train.out_dir={out_dir}"]))

    def pass_at(batch: int):
        split = copy.copy(run.data.eval)
        split.batch_size = batch
        return lambda _x, _y: evaluate(run.model, split, run.device, run.data.num_classes, autocast(run))

    return {batch: pass_at(batch) for batch in batches}


def bench_config(config_name: str, batches: list[int], rounds: int, out_dir: Path) -> dict:
    path = CONFIGS_DIR / f"{config_name}.yaml"
    own = load_config(path).data.eval_batch_size  # the baseline
    sizes = list(dict.fromkeys([*batches, own]))
    times = alternate(evaluation_passes(path, sizes, out_dir), None, None, rounds)
    return {"config": config_name, "own_batch": own, "rounds": rounds,
            "pass_s": {batch: statistics.median(times[batch]) for batch in sizes},
            "vs_own": {batch: paired_ratio(times[batch], times[own]) for batch in sizes}}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round per config instead of 3")
    parser.add_argument("--rounds", type=int, help="rounds per config (overrides --quick)")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), help="names of files in configs/")
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES), help="evaluation batch sizes")
    parser.add_argument("--out-dir", default="runs/bench_eval", help="where the runs may write")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 3)

    print(f"{torch_line()}; {EVAL_IMAGES:,} images an evaluation pass")
    print("| config | eval batch | pass s (median) | pass time / at the config's own batch (median of rounds) |")
    print("|---|---|---|---|")
    results = []
    for name in args.configs:
        r = bench_config(name, args.batches, rounds, Path(args.out_dir) / name)
        results.append(r)
        for batch, seconds in r["pass_s"].items():
            own = " (the config's)" if batch == r["own_batch"] else ""
            print(f"| {name} | {batch}{own} | {seconds:.2f} | {r['vs_own'][batch]:.2f} |", flush=True)
    if args.json:
        write_json(args.json, results=results)
    return results


if __name__ == "__main__":
    main()
