"""Exported 1-bit models: file size against the float checkpoint, and the XNOR-popcount
path's inference speed against the float path, measured side by side in one process.

For LeNet-5, NIN and AlexNet it trains one step on synthetic data through the normal
trainer (so the checkpoint holds what a real one holds: weights, Adam state, RNG), exports
it with `python -m xnortrain export`'s function and prints the sizes: training
checkpoint, float32 state_dict, exported file. Then, for LeNet-5 and NIN at batch 1 and
64, it times the exported model's eval forward pass with the float layers
(`load_exported(path)`) and with the XNOR-popcount kernels (`binary_kernels=True`),
alternated, and prints the medians and their ratio, whichever way it comes out.

    python scripts/bench_inference.py            # 7 repetitions
    python scripts/bench_inference.py --quick    # 3 repetitions, AlexNet's sizes skipped
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from xnortrain.config import load_config
from xnortrain.export import export_checkpoint, load_exported
from xnortrain.train import fit

MODELS = {"lenet5": [1, 28, 28], "nin": [3, 32, 32], "alexnet": [3, 224, 224]}


def export_one(name: str, shape: list[int], workdir: Path) -> tuple[dict, Path]:
    out_dir = workdir / name
    config = load_config(None, [f"model.name={name}", "data.name=synthetic", f"data.synthetic_shape={shape}",
                                "data.synthetic_train_size=2", "data.synthetic_eval_size=2", "data.batch_size=2",
                                "train.epochs=1", f"train.out_dir={out_dir}"])
    fit(config, quiet=True)
    exported = out_dir / f"{name}.xnor.pt"
    sizes = export_checkpoint(out_dir / "best.pt", exported)
    buffer = io.BytesIO()
    torch.save(load_exported(exported).state_dict(), buffer)  # the float32 model, W~ as floats
    return {"model": name, **sizes, "float32_state_dict_bytes": buffer.tell()}, exported


def time_forward(model, x) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        model(x)
    return time.perf_counter() - start


def bench_speed(name: str, exported: Path, batch: int, repeats: int) -> dict:
    models = {"float": load_exported(exported), "xnor": load_exported(exported, binary_kernels=True)}
    x = torch.randn(batch, *MODELS[name])
    times = {k: [] for k in models}
    for m in models.values():
        time_forward(m, x)
    for i in range(repeats):
        order = list(models) if i % 2 == 0 else list(reversed(models))
        for k in order:
            times[k].append(time_forward(models[k], x))
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    return {"model": name, "batch": batch, "float_ms": med["float"], "xnor_ms": med["xnor"],
            "xnor_over_float": med["xnor"] / med["float"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repetitions; AlexNet's sizes skipped")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    repeats = 3 if args.quick else 7
    names = ["lenet5", "nin"] if args.quick else list(MODELS)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| model | training checkpoint B | float32 state_dict B | exported B | vs checkpoint | vs float32 |")
    print("|---|---|---|---|---|---|")
    sizes, speeds = [], []
    with tempfile.TemporaryDirectory() as tmp:
        exported = {}
        for name in names:
            s, exported[name] = export_one(name, MODELS[name], Path(tmp))
            sizes.append(s)
            print(f"| {name} | {s['checkpoint_bytes']:,} | {s['float32_state_dict_bytes']:,} | {s['exported_bytes']:,} | "
                  f"{s['checkpoint_bytes'] / s['exported_bytes']:.1f}x | "
                  f"{s['float32_state_dict_bytes'] / s['exported_bytes']:.1f}x |", flush=True)
        print("\n| model | batch | float path ms | XNOR-popcount path ms | XNOR / float (median) |")
        print("|---|---|---|---|---|")
        for name in ("lenet5", "nin"):
            for batch in (1, 64):
                r = bench_speed(name, exported[name], batch, repeats)
                speeds.append(r)
                print(f"| {name} | {batch} | {r['float_ms']:.2f} | {r['xnor_ms']:.2f} | {r['xnor_over_float']:.2f} |",
                      flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                                               "sizes": sizes, "speed": speeds}, indent=2))


if __name__ == "__main__":
    main()
