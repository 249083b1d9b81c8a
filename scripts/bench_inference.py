"""Exported 1-bit models: file size against float32, and the inference speed of the binary
kernels against the float path of the same export, side by side in one process.

For LeNet-5, NIN, AlexNet (XNOR-Net), the zoo's ResNet-20 in its Bi-Real flavour and
torchvision's ResNet-18 (binary inputs in every conv but the first; its inputs follow
ReLUs, so it does not learn, but it runs as users' ResNets do) it trains one step on
synthetic data through the normal trainer (so the checkpoint holds what a real one holds), exports it with
`python -m xnortrain export`'s function and prints the sizes: training checkpoint,
float32 state_dict, exported file as exported by default (float parts in float32) and with
`--check-data` (float parts in float16 where the predictions on the run's evaluation
inputs hold). Then, in eval mode, it times

- the whole model: `load_exported(path)` (float path: every layer a float op) against
  `load_exported(path, binary_kernels=True)` (binary blocks as XNOR-popcount layers);
- the binary layers alone, each on the input it gets inside the model: the float path's
  sign(x) then conv/linear, the part the XNOR-popcount layer replaces, against that layer;
  with the binary multiply-accumulates per second it achieves, next to the limits of this
  CPU at the clock /proc/cpuinfo reports: 64 binary MACs per cycle per thread for the
  64-bit POPCNT path (one XOR + POPCNT + ADD a cycle), 512 for the AVX-512 VPOPCNTDQ path
  (one 512-bit VPOPCNTQ a cycle); float32 FMA peaks at 16 MACs per cycle per core on AVX2.

Float and binary runs alternate, and each figure is the median of the repetitions, so that
other work on the machine slows both alike.

    python scripts/bench_inference.py            # LeNet-5, NIN batch 1; AlexNet, the ResNets batch 1 and 8
    python scripts/bench_inference.py --quick    # LeNet-5 and NIN, fewer repetitions
    python scripts/bench_inference.py --threads 1
"""

from __future__ import annotations

import argparse
import io
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from xnortrain.deploy import kernels, load_exported
from xnortrain.deploy.xnor_layers import XnorConv2d, XnorLinear
from xnortrain.train.config import load_config
from xnortrain.train.deployment import export_checkpoint
from xnortrain.train.loop import fit

SIGN = "binop.activations=sign"
# name: (the trainer's --set overrides, input shape, batch sizes timed)
MODELS = {
    "lenet5": (["model.name=lenet5", SIGN], [1, 28, 28], [1]),
    "nin": (["model.name=nin", SIGN], [3, 32, 32], [1]),
    "alexnet": (["model.name=alexnet", SIGN], [3, 224, 224], [1, 8]),
    "resnet20-bireal": (["model.name=resnet", "model.kwargs={depth: 20, width: 16, flavour: bireal}",
                         "binop.activations=approx_sign", "binop.exclude=['*.shortcut.*']"], [3, 32, 32], [1, 8]),
    "torchvision-resnet18": (["model.name=torchvision:resnet18", SIGN], [3, 32, 32], [1, 8]),
}
MACS_PER_CYCLE = {"64-bit POPCNT": 64, "AVX-512 VPOPCNTDQ": 512}  # binary MACs per cycle per thread


def export_one(name: str, workdir: Path) -> tuple[dict, Path]:
    out_dir = workdir / name
    sets, shape, _ = MODELS[name]
    config = load_config(None, [*sets, "data.name=synthetic", f"data.synthetic_shape={shape}",
                                "data.synthetic_train_size=2", "data.synthetic_eval_size=2", "data.batch_size=2",
                                "train.epochs=1", f"train.out_dir={out_dir}"])
    fit(config, quiet=True)
    exported = out_dir / f"{name}.xnor.pt"
    sizes = export_checkpoint(out_dir / "best.pt", exported)
    checked = export_checkpoint(out_dir / "best.pt", out_dir / f"{name}.checked.xnor.pt", check_data=True)
    buffer = io.BytesIO()
    torch.save(load_exported(exported).state_dict(), buffer)  # the float32 model, W~ as floats
    return {"model": name, **sizes, "checked_bytes": checked["exported_bytes"],
            "float32_state_dict_bytes": buffer.tell()}, exported


@torch.no_grad()
def median_times(calls: dict, repeats: int) -> dict:
    """Median seconds of each zero-argument call, the calls alternated in turn."""
    for call in calls.values():
        call()
    times = {k: [] for k in calls}
    for i in range(repeats):
        for k in (list(calls) if i % 2 == 0 else list(reversed(calls))):
            start = time.perf_counter()
            calls[k]()
            times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def binary_layer_pairs(float_model: nn.Module, fast_model: nn.Module, x: torch.Tensor) -> list[tuple]:
    """(float layer, XNOR-popcount layer, the layer's input in the model, binary MACs) per binary layer."""
    fast = {name: m for name, m in fast_model.named_modules() if isinstance(m, (XnorConv2d, XnorLinear))}
    inputs, hooks = {}, []
    for name, m in float_model.named_modules():
        if name in fast:
            hooks.append(m.register_forward_pre_hook(lambda m, args, name=name: inputs.__setitem__(name, args[0])))
    with torch.no_grad():
        float_model(x)  # after the float path's own pre-hook: these hooks see sign(x)
    for h in hooks:
        h.remove()
    pairs = []
    float_layers = dict(float_model.named_modules())
    for name, layer in fast.items():
        signs = inputs[name]
        with torch.no_grad():
            out = float_layers[name](signs)
        per_output = (layer.in_channels // layer.groups * math.prod(layer.kernel_size)
                      if isinstance(layer, XnorConv2d) else layer.in_features)
        pairs.append((float_layers[name], layer, signs, out.numel() * per_output))
    return pairs


def bench_model(name: str, exported: Path, batch: int, repeats: int) -> dict:
    float_model, fast_model = load_exported(exported), load_exported(exported, binary_kernels=True)
    x = torch.randn(batch, *MODELS[name][1], generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        reference, got = float_model(x), fast_model(x)
    whole = median_times({"float": lambda: float_model(x), "binary": lambda: fast_model(x)}, repeats)
    pairs = binary_layer_pairs(float_model, fast_model, x)
    # the float path runs sign(x) (its pre-hook) then the layer; the XNOR-popcount layer
    # binarizes while it packs; sign(sign(x)) = sign(x)
    layers = median_times({"float": lambda: [f(s) for f, _, s, _ in pairs],
                           "binary": lambda: [b(s) for _, b, s, _ in pairs]}, repeats)
    macs = sum(m for *_, m in pairs)
    return {"model": name, "batch": batch, "float_ms": whole["float"] * 1e3, "binary_ms": whole["binary"] * 1e3,
            "speedup": whole["float"] / whole["binary"], "layers_float_ms": layers["float"] * 1e3,
            "layers_binary_ms": layers["binary"] * 1e3, "layers_speedup": layers["float"] / layers["binary"],
            "binary_macs": macs, "binary_macs_per_s": macs / layers["binary"],
            "float_macs_per_s": macs / layers["float"],
            "same_predictions": bool(torch.equal(reference.argmax(1), got.argmax(1))),
            "max_logit_difference": (reference - got).abs().max().item()}


def clock_hz() -> float | None:
    """The clock /proc/cpuinfo reports for the first CPU (None elsewhere)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    mhz = [float(line.split(":")[1]) for line in lines if line.startswith("cpu MHz")]
    return mhz[0] * 1e6 if mhz else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="LeNet-5 and NIN only, 5 repetitions")
    parser.add_argument("--repeats", type=int, help="repetitions per timing (default 31, AlexNet 9; --quick 5)")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), help="these models only")
    parser.add_argument("--threads", type=int, help="torch threads for both paths (default: torch's own)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.models or (["lenet5", "nin"] if args.quick else list(MODELS))
    clock, threads = clock_hz(), torch.get_num_threads()

    print(f"torch {torch.__version__}, {threads} threads; {kernels.path_in_use()}")
    print("| model | training checkpoint B | float32 state_dict B | exported B | vs checkpoint | vs float32 "
          "| exported with --check-data B | vs float32 |")
    print("|---|---|---|---|---|---|---|---|")
    sizes, speeds = [], []
    with tempfile.TemporaryDirectory() as tmp:
        exported = {}
        for name in names:
            s, exported[name] = export_one(name, Path(tmp))
            sizes.append(s)
            print(f"| {name} | {s['checkpoint_bytes']:,} | {s['float32_state_dict_bytes']:,} | {s['exported_bytes']:,} | "
                  f"{s['checkpoint_bytes'] / s['exported_bytes']:.1f}x | "
                  f"{s['float32_state_dict_bytes'] / s['exported_bytes']:.1f}x | {s['checked_bytes']:,} | "
                  f"{s['float32_state_dict_bytes'] / s['checked_bytes']:.1f}x |", flush=True)
        print("\n| model | batch | float path ms | binary kernels ms | speedup | binary layers: float ms | "
              "binary ms | speedup | binary GMAC/s | same predictions |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for name in names:
            for batch in MODELS[name][2]:
                repeats = args.repeats or (5 if args.quick else 9 if name == "alexnet" else 31)
                r = bench_model(name, exported[name], batch, repeats)
                speeds.append(r)
                print(f"| {name} | {batch} | {r['float_ms']:.2f} | {r['binary_ms']:.2f} | {r['speedup']:.2f}x | "
                      f"{r['layers_float_ms']:.2f} | {r['layers_binary_ms']:.2f} | {r['layers_speedup']:.2f}x | "
                      f"{r['binary_macs_per_s'] / 1e9:.0f} | {r['same_predictions']} |", flush=True)
    if clock:
        path = torch.ops.xnortrain.popcount_path() if kernels.load() is None else "64-bit POPCNT"
        limit = MACS_PER_CYCLE[path] * clock * threads
        print(f"\n{path} limit: {MACS_PER_CYCLE[path]} binary MACs/cycle x {clock / 1e9:.2f} GHz x {threads} "
              f"threads = {limit / 1e9:.0f} GMAC/s; best achieved "
              f"{max(r['binary_macs_per_s'] for r in speeds) / 1e9:.0f} GMAC/s "
              f"(float path on the same layers: best {max(r['float_macs_per_s'] for r in speeds) / 1e9:.0f} GMAC/s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"torch": torch.__version__, "threads": threads, "clock_hz": clock,
                                               "kernels": kernels.path_in_use(), "sizes": sizes, "speed": speeds},
                                              indent=2))


if __name__ == "__main__":
    main()
