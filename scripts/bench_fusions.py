"""What each of `load_exported`'s fusions gives: the kernels' model of the same export loaded
with every fusion and with each one switched off, timed side by side in one process.

The fusions (docs/deploy.md): `fold_batchnorms` (BatchNorms into the layers next to them),
`fuse_signs` (convs that pass their packed signs to the next) and `fuse_residuals` (residual
sums added in the epilogue of the conv before them). Each model is exported after one training
step on synthetic data (`bench_inference.export_one`), then timed at batch 1 in interleaved
rounds (`bench_inference.interleaved_times`); each line gives the p50 latency with the fusion
off, and how much faster the model with every fusion runs than without that one. With `--aot`
the two models with and without `fuse_residuals` are compiled as packages too
(`deploy.package`, as `python -m xnortrain package` compiles them).

    python scripts/bench_fusions.py                                   # ResNet-20 Bi-Real, NIN
    python scripts/bench_fusions.py --models torchvision-resnet18 --aot
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from bench_inference import MODELS, export_one, interleaved_times, percentile

from xnortrain.deploy import load_exported, load_package
from xnortrain.deploy.export import exported_spec
from xnortrain.deploy.package import package_model

FUSIONS = ("fold_batchnorms", "fuse_signs", "fuse_residuals")
ALL = "every fusion"


def variants(exported: Path, aot: bool) -> dict[str, torch.nn.Module]:
    """The kernels' model with every fusion and without each one (and, with `aot`, both
    fuse_residuals models as packages)."""
    models = {ALL: load_exported(exported, binary_kernels=True)}
    models.update({f"without {f}": load_exported(exported, binary_kernels=True, **{f: False}) for f in FUSIONS})
    if aot:
        input_shape = exported_spec(exported)["input_shape"]
        for name in (ALL, "without fuse_residuals"):
            package = exported.with_name(f"{name}.pt2")
            package_model(models[name], input_shape, package)
            models[f"{name}, AOTInductor"] = load_package(package)
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=["resnet20-bireal", "nin"])
    parser.add_argument("--repeats", type=int, default=41, help="interleaved rounds (default 41)")
    parser.add_argument("--aot", action="store_true", help="also as AOTInductor packages, with and without "
                                                          "fuse_residuals")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 1, {args.repeats} interleaved rounds")
    print("| model | loaded | p50 ms | p90 ms | with every fusion: faster by |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            _, exported = export_one(name, Path(tmp))
            x = torch.randn(1, *exported_spec(exported)["input_shape"], generator=torch.Generator().manual_seed(0))
            models = variants(exported, args.aot)
            times = interleaved_times({k: (lambda m=m: m(x)) for k, m in models.items()}, args.repeats)
            p50 = {k: percentile(v, 50) for k, v in times.items()}
            for k, v in times.items():
                reference = p50[f"{ALL}, AOTInductor" if k.endswith("AOTInductor") else ALL]
                print(f"| {name} | {k} | {p50[k] * 1e3:.3f} | {percentile(v, 90) * 1e3:.3f} | "
                      f"{p50[k] / reference:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
