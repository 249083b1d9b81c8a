"""Exported 1-bit models: file size against float32, and the inference speed of the binary
kernels against the float path of the same export, side by side in one process.

For LeNet-5, NIN, AlexNet (XNOR-Net), the zoo's ResNet-20 in its Bi-Real flavour and
torchvision's ResNet-18 at 32x32 and at ImageNet's 224x224 (binary inputs in every conv but
the first; its inputs follow ReLUs, so it does not learn, but it runs as users' ResNets do) it
trains one step on
synthetic data through the normal trainer (so the checkpoint holds what a real one holds), exports it with
`python -m xnortrain export`'s function and prints the sizes: training checkpoint,
float32 state_dict, exported file as exported by default (float parts in float32) and with
`--check-data` (float parts in float16 where the predictions on the run's evaluation
inputs hold). Then, in eval mode, it times

- the whole model: `load_exported(path)` (float path: every layer a float op) against
  `load_exported(path, binary_kernels=True)` (every layer with 1-bit weights and inputs as an XNOR-popcount layer);
- the binary layers alone, each on the input it gets inside the model: the float path's
  sign(x) then conv/linear, the part the XNOR-popcount layer replaces, against that layer
  (a chain of layers that pass their signs packed as one: the float path's layers and the
  ReLUs, BatchNorms and max pools between them, which the chain's epilogues and its pools on
  packed bits compute);
  with the binary multiply-accumulates per second it achieves, next to the limits of this
  CPU at the clock /proc/cpuinfo reports: 64 binary MACs per cycle per thread for the
  64-bit POPCNT path (one XOR + POPCNT + ADD a cycle), 512 for the AVX-512 VPOPCNTDQ path
  (one 512-bit VPOPCNTQ a cycle); float32 FMA peaks at 16 MACs per cycle per core on AVX2.

Float and binary runs take turns, in an order shuffled every round, each turn timing calls
that follow untimed calls of the same model (`interleaved_times`: the model's latency as a
process that runs only it sees it), and each figure is the median of the timed calls, so that
other work on the machine slows both alike.

With `--peers` (needs ``pip install 'xnortrain[bench]'``) it times the same export, for NIN,
AlexNet, ResNet-20 Bi-Real and ResNet-18 at 224x224, at batch 1 and 8, on the runtimes people deploy with, all
interleaved in one process: the PyTorch float path, the xnortrain kernels (eager, under
`torch.compile` with inductor's C++ wrapper, which fuses the float operations between the
binary layers and calls them all from C++, and as the package `python -m xnortrain package`
compiles with AOTInductor, C++ with no Python between the operations), onnxruntime FP32
(the ONNX file of `python -m xnortrain export --format onnx`, as many intra-op threads as
torch), OpenVINO on the same file at FP32 and at its default precision (bf16 on CPUs that
have it; the table names the one it used), both with as many threads and the batch made
static, and onnxruntime INT8 (static quantization calibrated on standard-normal inputs
like the benchmark's) where that quantization succeeds. Each gets the p50 and p90 latency
over the rounds and how many of its predictions agree with the float path's; then the
ratios of the fastest FP32 runtime and of OpenVINO's default to the xnortrain kernels.

    python scripts/bench_inference.py            # LeNet-5, NIN batch 1; AlexNet, the ResNets batch 1 and 8
    python scripts/bench_inference.py --quick    # LeNet-5 and NIN, fewer repetitions
    python scripts/bench_inference.py --threads 1
    python scripts/bench_inference.py --peers --models nin
    python scripts/bench_inference.py --layers --models nin   # the time of each module, batch 1
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import random
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
from torch import nn

from xnortrain.deploy import compile_package, kernels, load_exported, load_package
from xnortrain.deploy.fusion import sign_chains
from xnortrain.deploy.onnx_export import export_onnx
from xnortrain.deploy.xnor_layers import XnorConv2d, XnorLinear
from xnortrain.optional import require
from xnortrain.train.config import load_config
from xnortrain.train.deployment import export_checkpoint
from xnortrain.train.loop import fit

SIGN = "binop.activations=sign"
WARMUP_CALLS, TIMED_CALLS = 8, 8  # a turn of `interleaved_times`
# name: (the trainer's --set overrides, input shape, batch sizes timed)
MODELS = {
    "lenet5": (["model.name=lenet5", SIGN], [1, 28, 28], [1]),
    "nin": (["model.name=nin", SIGN], [3, 32, 32], [1]),
    "alexnet": (["model.name=alexnet", SIGN], [3, 224, 224], [1, 8]),
    "resnet20-bireal": (["model.name=resnet", "model.kwargs={depth: 20, width: 16, flavour: bireal}",
                         "binop.activations=approx_sign", "binop.exclude=['*.shortcut.*']"], [3, 32, 32], [1, 8]),
    "torchvision-resnet18": (["model.name=torchvision:resnet18", SIGN], [3, 32, 32], [1, 8]),
    "torchvision-resnet18-224": (["model.name=torchvision:resnet18", SIGN], [3, 224, 224], [1]),
}
MACS_PER_CYCLE = {"64-bit POPCNT": 64, "AVX-512 VPOPCNTDQ": 512}  # binary MACs per cycle per thread
PEER_MODELS, PEER_BATCHES = ["nin", "alexnet", "resnet20-bireal", "torchvision-resnet18-224"], [1, 8]
FLOAT_PATH, KERNELS, OPENVINO_DEFAULT = "PyTorch float path", "xnortrain kernels", "OpenVINO default"
COMPILED = "xnortrain kernels, torch.compile (cpp_wrapper)"
AOT_PACKAGE = "xnortrain kernels, AOTInductor package"
XNORTRAIN_ROWS = {"kernels": KERNELS, "compiled": COMPILED, "aot": AOT_PACKAGE}  # short names in the ratios
FP32_RUNTIMES = (FLOAT_PATH, "onnxruntime FP32", "OpenVINO FP32")
CALIBRATION_INPUTS = 32


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
def interleaved_times(calls: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds of each zero-argument call's timed calls over `repeats` rounds: every round gives
    each call a turn, in an order shuffled every round (a fixed seed), and a turn is
    WARMUP_CALLS untimed calls, then TIMED_CALLS timed ones. The untimed calls bring the call's
    weights, activations and threads back to where a process that runs only that model keeps
    them, after the other calls': in one process, NIN at batch 1 took until about its sixth call
    in a row to reach its steady latency (the package 1.33, 0.75, 0.65, 0.63, 0.61 ms, then
    0.60; OpenVINO at bf16 1.55, 1.02, 0.81, 0.69, 0.58, then 0.52), so a single untimed call
    would time each runtime part-warm, the ones with more to bring back the most."""
    times = {k: [] for k in calls}
    order = random.Random(0)
    for _ in range(repeats):
        for k in order.sample(list(calls), len(calls)):
            for _ in range(WARMUP_CALLS):
                calls[k]()
            for _ in range(TIMED_CALLS):
                start = time.perf_counter()
                calls[k]()
                times[k].append(time.perf_counter() - start)
    return times


def median_times(calls: dict, repeats: int) -> dict:
    """Median seconds of each zero-argument call, the calls interleaved (`interleaved_times`)."""
    return {k: percentile(v, 50) for k, v in interleaved_times(calls, repeats).items()}


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0 to 100) of `values`, interpolated linearly between the two nearest
    ranks (numpy's default): rank (n - 1) * q / 100 of the sorted values, counted from 0."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    below = math.floor(rank)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (rank - below)


def binary_segments(float_model: nn.Module, fast_model: nn.Module, x: torch.Tensor) -> list[tuple]:
    """(float modules, XNOR-popcount modules, the first one's input in the model, binary MACs)
    per binary layer, or per chain of them that pass their signs packed (`fusion.sign_chains`),
    whose float work between (ReLUs, BatchNorms) the chain's first layer does in its epilogue
    and whose max pools pool the packed bits."""
    fast = {name: m for name, m in fast_model.named_modules() if isinstance(m, (XnorConv2d, XnorLinear))}
    chains = []
    for first, *rest in (link for link in sign_chains(fast_model) if fast[link[0]].sign_output):
        if chains and chains[-1][-1] == first:
            chains[-1].extend(rest)
        else:
            chains.append([first, *rest])
    starting = {chain[0]: chain for chain in chains}
    chained = {name for chain in chains for name in chain}
    runs = [starting.get(name, [name]) for name in fast if name in starting or name not in chained]
    inputs, hooks = {}, []
    for name, m in float_model.named_modules():
        if name in fast:
            hooks.append(m.register_forward_pre_hook(lambda m, args, name=name: inputs.__setitem__(name, args[0])))
    with torch.no_grad():
        float_model(x)  # after the float path's own pre-hook: these hooks see sign(x)
    for h in hooks:
        h.remove()
    segments = []
    for run in runs:
        float_modules = [float_model.get_submodule(name) for name in run]
        fast_modules = [fast_model.get_submodule(name) for name in run]
        macs = 0
        for name in (n for n in run if n in fast):
            layer = fast[name]
            with torch.no_grad():
                out = float_model.get_submodule(name)(inputs[name])
            per_output = layer.real_bits if isinstance(layer, XnorConv2d) else layer.in_features
            macs += out.numel() * per_output
        segments.append((float_modules, fast_modules, inputs[run[0]], macs))
    return segments


def run_in_turn(modules: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    for m in modules:
        x = m(x)
    return x


def bench_model(name: str, exported: Path, batch: int, repeats: int) -> dict:
    float_model, fast_model = load_exported(exported), load_exported(exported, binary_kernels=True)
    x = torch.randn(batch, *MODELS[name][1], generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        reference, got = float_model(x), fast_model(x)
    whole = median_times({"float": lambda: float_model(x), "binary": lambda: fast_model(x)}, repeats)
    segments = binary_segments(float_model, fast_model, x)
    # the float path runs sign(x) (its pre-hook) then the layer; the XNOR-popcount layer
    # binarizes while it packs; sign(sign(x)) = sign(x)
    layers = median_times({"float": lambda: [run_in_turn(f, s) for f, _, s, _ in segments],
                           "binary": lambda: [run_in_turn(b, s) for _, b, s, _ in segments]}, repeats)
    macs = sum(m for *_, m in segments)
    return {"model": name, "batch": batch, "float_ms": whole["float"] * 1e3, "binary_ms": whole["binary"] * 1e3,
            "speedup": whole["float"] / whole["binary"], "layers_float_ms": layers["float"] * 1e3,
            "layers_binary_ms": layers["binary"] * 1e3, "layers_speedup": layers["float"] / layers["binary"],
            "binary_macs": macs, "binary_macs_per_s": macs / layers["binary"],
            "float_macs_per_s": macs / layers["float"],
            "same_predictions": bool(torch.equal(reference.argmax(1), got.argmax(1))),
            "max_logit_difference": (reference - got).abs().max().item()}


def print_speeds(names: list[str], exported: dict, repeats_of) -> list[dict]:
    """Time the float path against the binary kernels (`bench_model`) at each model's batch
    sizes and print the table; returns the rows. `repeats_of(name)`: the rounds for that model."""
    print("\n| model | batch | float path ms | binary kernels ms | speedup | binary layers: float ms | "
          "binary ms | speedup | binary GMAC/s | same predictions |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    speeds = []
    for name in names:
        for batch in MODELS[name][2]:
            r = bench_model(name, exported[name], batch, repeats_of(name))
            speeds.append(r)
            print(f"| {name} | {batch} | {r['float_ms']:.2f} | {r['binary_ms']:.2f} | {r['speedup']:.2f}x | "
                  f"{r['layers_float_ms']:.2f} | {r['layers_binary_ms']:.2f} | {r['layers_speedup']:.2f}x | "
                  f"{r['binary_macs_per_s'] / 1e9:.0f} | {r['same_predictions']} |", flush=True)
    return speeds


def int8_onnx(onnx_file: Path, input_shape: list[int], out: Path) -> Path:
    """`onnx_file` quantized by onnxruntime's static quantization (QDQ, int8 weights per output
    channel, uint8 activations), calibrated on CALIBRATION_INPUTS standard-normal inputs, drawn
    as the benchmark's are but from other seeds."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Inputs(CalibrationDataReader):
        def __init__(self):
            self.inputs = ({"input": torch.randn(1, *input_shape, generator=torch.Generator().manual_seed(1000 + i)).numpy()}
                           for i in range(CALIBRATION_INPUTS))

        def get_next(self):
            return next(self.inputs, None)

    logging.disable(logging.WARNING)  # the quantizer's advice, a line per BatchNorm on the root logger
    try:
        quantize_static(str(onnx_file), str(out), Inputs(), quant_format=QuantFormat.QDQ, per_channel=True)
    finally:
        logging.disable(logging.NOTSET)
    return out


def peer_runtimes(exported: Path, onnx_file: Path, int8_file: Path | None, batch: int) -> dict[str, tuple]:
    """runtime name -> (precision, run), `run(x)` the logits of a batch x, for the same export:
    the PyTorch float path and the xnortrain kernels (eager, compiled, and as the package of
    `python -m xnortrain package`, any batch size) from the packed file, onnxruntime (FP32, and
    INT8 where `int8_file` is given) and OpenVINO (FP32 and its default precision, the precision
    read back from the compiled model) from its ONNX file. The runtimes use as many threads as
    torch; OpenVINO is compiled for this batch size."""
    ort = require("onnxruntime", "bench", "bench_inference.py --peers")
    ov = require("openvino", "bench", "bench_inference.py --peers")
    threads = torch.get_num_threads()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # onnxruntime's intra-op threads spin between runs by default, taking the cores from the
    # runtimes interleaved with it (NIN: OpenVINO's default 1.14x as slow beside them, after its
    # untimed calls); onnxruntime's config key below (its InferenceSession's option, which
    # SessionOptions has no attribute for) has them wait idle instead
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")

    def onnxruntime(path: Path):
        model = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(model.run(["logits"], {"input": x.numpy()})[0])

    core = ov.Core()
    graph = core.read_model(str(onnx_file))
    graph.reshape([batch, *graph.inputs[0].get_partial_shape()[1:]])

    def openvino(config: dict) -> tuple:
        compiled = core.compile_model(graph, "CPU", {"INFERENCE_NUM_THREADS": threads, **config})
        precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        return precision, lambda x: torch.from_numpy(compiled(x.numpy())[0])

    runs = {FLOAT_PATH: ("f32", load_exported(exported)), KERNELS: ("1 bit, f32", load_exported(exported, binary_kernels=True)),
            COMPILED: ("1 bit, f32", torch.compile(load_exported(exported, binary_kernels=True),
                                                   options={"cpp_wrapper": True})),
            AOT_PACKAGE: ("1 bit, f32", load_package(package_of(exported))),
            "onnxruntime FP32": ("f32", onnxruntime(onnx_file)),
            "OpenVINO FP32": openvino({"INFERENCE_PRECISION_HINT": "f32"}), OPENVINO_DEFAULT: openvino({})}
    if int8_file is not None:
        runs["onnxruntime INT8"] = ("int8", onnxruntime(int8_file))
    return runs


def package_path(exported: Path) -> Path:
    """Where the package of the packed file `exported` goes (`package_of`)."""
    return exported.with_suffix(".pt2")


def package_of(exported: Path) -> Path:
    """The package of the packed file `exported` (`deploy.compile_package`), compiled once."""
    package = package_path(exported)
    if not package.is_file():
        compile_package(exported, package)
    return package


def bench_peers(name: str, exported: Path, onnx_file: Path, int8_file: Path | None, batch: int,
                repeats: int) -> list[dict]:
    """Per runtime (`peer_runtimes`): its p50 and p90 latency (ms) over `repeats` interleaved
    rounds, and how many of its predictions agree with the float path's."""
    runs = peer_runtimes(exported, onnx_file, int8_file, batch)
    x = torch.randn(batch, *MODELS[name][1], generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        reference = runs[FLOAT_PATH][1](x).argmax(1)
        agree = {k: int((run(x).argmax(1) == reference).sum()) for k, (_, run) in runs.items()}
    times = interleaved_times({k: partial(run, x) for k, (_, run) in runs.items()}, repeats)
    return [{"model": name, "batch": batch, "runtime": k, "precision": precision,
             "p50_ms": percentile(times[k], 50) * 1e3, "p90_ms": percentile(times[k], 90) * 1e3,
             "same_predictions": agree[k]} for k, (precision, _) in runs.items()]


def peer_ratios(rows: list[dict]) -> dict:
    """Of one model and batch's rows: the FP32 runtime of least p50, and the p50 of it and of
    OpenVINO's default precision over the xnortrain kernels', eager, compiled and as an
    AOTInductor package (above 1: the kernels are faster)."""
    p50 = {r["runtime"]: r["p50_ms"] for r in rows}
    best = min(FP32_RUNTIMES, key=p50.__getitem__)
    ratios = {"best_fp32": best}
    for over, runtime in XNORTRAIN_ROWS.items():
        ratios[f"best_fp32_over_{over}"] = p50[best] / p50[runtime]
        ratios[f"openvino_default_over_{over}"] = p50[OPENVINO_DEFAULT] / p50[runtime]
    return ratios


def onnx_files(name: str, exported: Path, workdir: Path) -> tuple[Path, Path | None]:
    """The ONNX file of the export, and its INT8 form (None, said in one printed line, where
    the static quantization fails)."""
    onnx_file = workdir / f"{name}.onnx"
    export_onnx(exported, onnx_file)
    try:
        return onnx_file, int8_onnx(onnx_file, MODELS[name][1], workdir / f"{name}.int8.onnx")
    except Exception as err:  # whatever stops the quantizer, the other runtimes still run
        reason = str(err).splitlines()[0] if str(err) else ""
        print(f"{name}: onnxruntime INT8 skipped: static quantization failed ({type(err).__name__}: {reason})")
        return onnx_file, None


def print_peers(names: list[str], exported: dict, workdir: Path, repeats_of) -> list[dict]:
    """Time every peer runtime of each model at PEER_BATCHES, print the table and the ratios;
    returns the rows. `repeats_of(name)`: the rounds for that model."""
    files = {name: onnx_files(name, exported[name], workdir) for name in names}
    rows, ratios = [], []
    print("\n| model | batch | runtime | precision | p50 ms | p90 ms | same predictions as the float path |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        for batch in PEER_BATCHES:
            measured = bench_peers(name, exported[name], *files[name], batch, repeats_of(name))
            for r in measured:
                print(f"| {name} | {batch} | {r['runtime']} | {r['precision']} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | "
                      f"{r['same_predictions']}/{batch} |", flush=True)
            rows += measured
            ratios.append((name, batch, measured, peer_ratios(measured)))
    print("\n| model | batch | kernels p50 ms | compiled p50 ms | AOT package p50 ms | fastest FP32 runtime | "
          "its p50 ms | fastest FP32 / kernels | / compiled | / AOT package | OpenVINO default (precision) p50 ms | "
          "OpenVINO default / kernels | / compiled | / AOT package |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, batch, measured, q in ratios:
        p50 = {r["runtime"]: r["p50_ms"] for r in measured}
        precision = {r["runtime"]: r["precision"] for r in measured}[OPENVINO_DEFAULT]
        cells = [f"{p50[runtime]:.2f}" for runtime in XNORTRAIN_ROWS.values()]
        cells += [q["best_fp32"], f"{p50[q['best_fp32']]:.2f}", *(f"{q[f'best_fp32_over_{k}']:.2f}x" for k in XNORTRAIN_ROWS)]
        cells += [f"{p50[OPENVINO_DEFAULT]:.2f} ({precision})",
                  *(f"{q[f'openvino_default_over_{k}']:.2f}x" for k in XNORTRAIN_ROWS)]
        print(f"| {name} | {batch} | " + " | ".join(cells) + " |")
    return rows


@torch.no_grad()
def module_times(model: nn.Module, x: torch.Tensor, repeats: int) -> tuple[dict[str, float], float]:
    """Median seconds of each leaf module's and each conv/linear layer's forward inside
    `model(x)` (between forward pre- and post-hooks: the layer's own pre-hooks, such as a
    binary input's sign, and its children, such as an input dropout, included), and the
    median of the whole forward pass, over `repeats` passes after one warm-up."""
    starts, spent, hooks = {}, {}, []
    for name, m in model.named_modules():
        inside_a_layer = any(name.startswith(f"{layer}.") for layer in spent)
        if not inside_a_layer and (next(m.children(), None) is None or isinstance(m, (nn.Conv2d, nn.Linear))):
            spent[name] = []
            hooks.append(m.register_forward_pre_hook(lambda m, a, name=name: starts.__setitem__(name, time.perf_counter()),
                                                     prepend=True))
            hooks.append(m.register_forward_hook(lambda m, a, o, name=name: spent[name].append(time.perf_counter() - starts[name])))
    model(x)
    for times in spent.values():
        times.clear()
    whole = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        whole.append(time.perf_counter() - start)
    for h in hooks:
        h.remove()
    return {name: percentile(times, 50) for name, times in spent.items() if times}, percentile(whole, 50)


def print_layers(names: list[str], exported: dict, repeats_of) -> list[dict]:
    """Where the time of one batch-1 pass goes, module by module, on the float path and on the
    kernels (the same modules but for the binary ones), and how much lies outside the modules
    (the models' own functional operations, such as residual sums, and Python)."""
    rows = []
    for name in names:
        x = torch.randn(1, *MODELS[name][1], generator=torch.Generator().manual_seed(1))
        paths = {FLOAT_PATH: load_exported(exported[name]), KERNELS: load_exported(exported[name], binary_kernels=True)}
        times = {k: module_times(model, x, repeats_of(name)) for k, model in paths.items()}
        kinds = {k: dict((n, type(m).__name__) for n, m in model.named_modules()) for k, model in paths.items()}
        print(f"\n{name}, batch 1, ms per module (median of {repeats_of(name)} passes, timed by hooks)\n")
        print("| module | float path | ms | kernels | ms | kernels share |")
        print("|---|---|---|---|---|---|")
        total = times[KERNELS][1]
        for module, ms in times[KERNELS][0].items():
            float_ms = times[FLOAT_PATH][0].get(module, float("nan"))
            rows.append({"model": name, "module": module, "float_kind": kinds[FLOAT_PATH].get(module),
                         "float_ms": float_ms * 1e3, "kernels_kind": kinds[KERNELS][module], "kernels_ms": ms * 1e3})
            print(f"| {module} | {kinds[FLOAT_PATH].get(module, '')} | {float_ms * 1e3:.3f} | {kinds[KERNELS][module]} "
                  f"| {ms * 1e3:.3f} | {ms / total:.0%} |")
        for k, (per_module, whole) in times.items():
            by_kind: dict[str, float] = {}
            for module, seconds in per_module.items():
                by_kind[kinds[k][module]] = by_kind.get(kinds[k][module], 0.0) + seconds
            outside = whole - sum(per_module.values())
            parts = ", ".join(f"{kind} {sec * 1e3:.2f}" for kind, sec in sorted(by_kind.items(), key=lambda kv: -kv[1]))
            print(f"\n{k}: whole pass {whole * 1e3:.2f} ms = {parts}, outside the modules {outside * 1e3:.2f} (ms)")
    return rows


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
    parser.add_argument("--repeats", type=int, help="interleaved rounds per timing, or passes with --layers "
                        "(default 31, AlexNet 9; --quick 5)")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), help="these models only")
    parser.add_argument("--threads", type=int, help="torch threads for both paths (default: torch's own)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--layers", action="store_true",
                        help="where one batch-1 pass spends its time, module by module, float path and kernels")
    parser.add_argument("--peers", action="store_true",
                        help="time onnxruntime and OpenVINO on the same export too (NIN, AlexNet, ResNet-20 Bi-Real, "
                             "ResNet-18 at 224x224 by default, batch 1 and 8; needs xnortrain[bench])")
    args = parser.parse_args()
    problem = kernels.load() if args.peers else None
    if problem is not None:
        parser.error(f"--peers times the compiled package, which needs the native kernels: {problem}")
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.models or (PEER_MODELS if args.peers else ["lenet5", "nin"] if args.quick else list(MODELS))
    clock, threads = clock_hz(), torch.get_num_threads()

    print(f"torch {torch.__version__}, {threads} threads; {kernels.path_in_use()}")
    print("| model | training checkpoint B | float32 state_dict B | exported B | vs checkpoint | vs float32 "
          "| exported with --check-data B | vs float32 |")
    print("|---|---|---|---|---|---|---|---|")
    sizes, speeds, peers, layers = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        exported = {}
        for name in names:
            s, exported[name] = export_one(name, Path(tmp))
            sizes.append(s)
            print(f"| {name} | {s['checkpoint_bytes']:,} | {s['float32_state_dict_bytes']:,} | {s['exported_bytes']:,} | "
                  f"{s['checkpoint_bytes'] / s['exported_bytes']:.1f}x | "
                  f"{s['float32_state_dict_bytes'] / s['exported_bytes']:.1f}x | {s['checked_bytes']:,} | "
                  f"{s['float32_state_dict_bytes'] / s['checked_bytes']:.1f}x |", flush=True)

        def repeats_of(name: str) -> int:
            return args.repeats or (5 if args.quick else 9 if name == "alexnet" else 31)

        if args.layers:
            layers = print_layers(names, exported, repeats_of)
        elif args.peers:
            peers = print_peers(names, exported, Path(tmp), repeats_of)
        else:
            speeds = print_speeds(names, exported, repeats_of)
    if clock and speeds:
        path = torch.ops.xnortrain.popcount_path() if kernels.load() is None else "64-bit POPCNT"
        limit = MACS_PER_CYCLE[path] * clock * threads
        print(f"\n{path} limit: {MACS_PER_CYCLE[path]} binary MACs/cycle x {clock / 1e9:.2f} GHz x {threads} "
              f"threads = {limit / 1e9:.0f} GMAC/s; best achieved "
              f"{max(r['binary_macs_per_s'] for r in speeds) / 1e9:.0f} GMAC/s "
              f"(float path on the same layers: best {max(r['float_macs_per_s'] for r in speeds) / 1e9:.0f} GMAC/s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"torch": torch.__version__, "threads": threads, "clock_hz": clock,
                                               "kernels": kernels.path_in_use(), "sizes": sizes, "speed": speeds,
                                               "peers": peers, "layers": layers},
                                              indent=2))


if __name__ == "__main__":
    main()
