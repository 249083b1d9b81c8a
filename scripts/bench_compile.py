"""The trainer's training step, eager against `train.compile: true`, for shipped configs.

For each config, the trainer builds two runs (`build_run`), one with `train.compile=false`
and one with `true`, on synthetic data of the config's image shape and batch size. Their
steps (`train_step`: forward, loss, backward, optimizer step, BinOp's projection) run
alternately, the starting one rotating every round; the speed-up is the median over rounds
of the eager step's time over the compiled step's. The first steps, which compile, are
timed on a line of their own.

The runs are built without `model.init_from` and `distill.teacher`, which name other runs'
checkpoints: the step measured is the student's own. A teacher adds its eager forward pass
to each step, compiled or not.

    python scripts/bench_compile.py                 # 30 rounds per config
    python scripts/bench_compile.py --quick         # 5 rounds per config
    python scripts/bench_compile.py --configs fashion_mnist_lenet --rounds 10
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from bench_binop import WARMUP, alternate, paired_ratio, seconds, torch_line, write_json
from torch import nn

from xnortrain.train.config import load_config
from xnortrain.train.loop import build_run, train_step

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"
CONFIGS = ("fashion_mnist_lenet", "fashion_mnist_resnet_float", "fashion_mnist_resnet_stage1", "fashion_mnist_resnet")


def trainer_step(config_name: str, compiled: bool, out_dir: Path):
    """The trainer's step for the config on synthetic data, and a batch of its shape."""
    path = CONFIGS_DIR / f"{config_name}.yaml"
    batch = load_config(path).data.batch_size
    run = build_run(load_config(path, ["model.init_from=null", "distill.teacher=null", "data.name=synthetic",
                                       f"data.synthetic_train_size={batch}", "data.synthetic_eval_size=16",
                                       f"train.compile={str(compiled).lower()}", f"train.out_dir={out_dir}"]))
    run.model.train()
    criterion = nn.CrossEntropyLoss(label_smoothing=run.config.train.label_smoothing)
    x, y = next(iter(run.data.train.batches(0, device=run.device)))
    return (lambda x, y: train_step(run, x, y, criterion)), x, y


def bench_config(config_name: str, rounds: int, out_dir: Path) -> dict:
    steps, batch = {}, None
    for mode in ("eager", "compiled"):
        steps[mode], *batch = trainer_step(config_name, mode == "compiled", out_dir / mode)
    warmup_s = {mode: sum(seconds(step, *batch) for _ in range(WARMUP)) for mode, step in steps.items()}
    times = alternate(steps, *batch, rounds)
    return {"config": config_name, "batch": len(batch[1]), "rounds": rounds,
            "eager_step_ms": statistics.median(times["eager"]) * 1e3,
            "compiled_step_ms": statistics.median(times["compiled"]) * 1e3,
            "speedup": paired_ratio(times["eager"], times["compiled"]),
            "spread": [f(e / c for e, c in zip(times["eager"], times["compiled"])) for f in (min, max)],
            "warmup_s": warmup_s}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 rounds per config instead of 30")
    parser.add_argument("--rounds", type=int, help="rounds per config (overrides --quick)")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), help="names of files in configs/")
    parser.add_argument("--out-dir", default="runs/bench_compile", help="where the runs may write")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    rounds = args.rounds or (5 if args.quick else 30)

    print(torch_line())
    print("| config | batch | eager step ms | compiled step ms | eager / compiled (median of pairs) "
          "| lowest, highest pair |")
    print("|---|---|---|---|---|---|")
    results = []
    for name in args.configs:
        r = bench_config(name, rounds, Path(args.out_dir) / name)
        results.append(r)
        print(f"| {name} | {r['batch']} | {r['eager_step_ms']:.1f} | {r['compiled_step_ms']:.1f} | "
              f"{r['speedup']:.2f} | {r['spread'][0]:.2f}, {r['spread'][1]:.2f} |", flush=True)
    for r in results:
        print(f"first {WARMUP} steps ({r['config']}): eager {r['warmup_s']['eager']:.1f} s, "
              f"compiled {r['warmup_s']['compiled']:.1f} s (compiling)")
    if args.json:
        write_json(args.json, results=results)
    return results


if __name__ == "__main__":
    main()
