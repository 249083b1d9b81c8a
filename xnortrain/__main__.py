"""The command line.

    python -m xnortrain --config FILE [--set KEY=VALUE ...] [--resume [PATH]] [--eval-only] [--quiet]
    python -m xnortrain plot RUN_DIR [RUN_DIR ...] --out curves.png [--labels A B ...]
    python -m xnortrain export --checkpoint runs/x/best.pt --out model.xnor.pt [--check-data] [--format onnx]
    python -m xnortrain package model.xnor.pt --out model.pt2
    python -m xnortrain summary (--config FILE [--set KEY=VALUE ...] | --checkpoint PATH)
    python -m xnortrain kernels

User errors (config, data, checkpoint) print one line on stderr and exit 2; SIGINT/SIGTERM
finish the step, write last.pt and exit 128 + the signal number (under torchrun every
process stops at the same step, and rank 0 alone prints the line).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from .errors import UserError


def build_parser() -> argparse.ArgumentParser:
    """Training options at the top level (no command trains), and one subcommand per tool."""
    parser = argparse.ArgumentParser(
        prog="xnortrain", description="Train binary networks with XNOR-Net's BinOp.",
        epilog="Without a command it trains: xnortrain --config FILE [--set KEY=VALUE ...] [--resume [PATH]]")
    add_config_args(parser, "YAML config file to train (see configs/)")
    parser.add_argument("--resume", nargs="?", const="", default=None, metavar="PATH",
                        help="resume from PATH, or from <out_dir>/last.pt when no path is given")
    parser.add_argument("--eval-only", action="store_true",
                        help="evaluate a checkpoint (--resume PATH, else <out_dir>/best.pt) and print its metrics")
    parser.add_argument("--quiet", action="store_true", help="no progress bars and no per-epoch lines")
    commands = parser.add_subparsers(dest="command", title="commands")

    plot_parser = commands.add_parser("plot", help="loss and top-1 curves of training runs",
                                      description="Loss and top-1 curves of training runs.")
    plot_parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (with metrics.jsonl)")
    plot_parser.add_argument("--out", default="curves.png", help="image file to write (default curves.png)")
    plot_parser.add_argument("--labels", nargs="+", help="one legend label per run (default: directory names)")

    export_parser = commands.add_parser("export", help="write a packed 1-bit model file (or an ONNX file)",
                                        description="Write a packed 1-bit model file (or an ONNX file).")
    export_parser.add_argument("--checkpoint", required=True, help="training checkpoint (e.g. runs/x/best.pt)")
    export_parser.add_argument("--out", required=True, help="file to write (e.g. model.xnor.pt)")
    export_parser.add_argument("--format", choices=["packed", "onnx"], default="packed",
                               help="packed: 1 bit per binary weight, for load_exported (default); onnx: the "
                                    "packed file's float path as a standard ONNX file (needs xnortrain[bench])")
    export_parser.add_argument("--check-data", action="store_true",
                               help="store the float tensors as float16 where the predictions on the run's first "
                                    "1000 evaluation inputs stay the same (reads the data set; default: float32)")

    package_parser = commands.add_parser("package", help="compile a packed model file for this machine's CPU",
                                         description="Compile a packed model file (from export) with AOTInductor into "
                                                     "a .pt2 package for this machine's CPU, calling the native "
                                                     "kernels; load it with xnortrain.deploy.load_package.")
    package_parser.add_argument("packed", metavar="PACKED", help="packed model file (e.g. model.xnor.pt)")
    package_parser.add_argument("--out", required=True, help="package to write (e.g. model.pt2)")

    summary_parser = commands.add_parser("summary", help="per-layer sizes and operations of a model",
                                         description="Per-layer sizes and operations of a configured or trained model.")
    add_config_args(summary_parser, "YAML config file (see configs/)")
    summary_parser.add_argument("--checkpoint", help="a training checkpoint, instead of --config")

    commands.add_parser("kernels", help="build (once) and load the native XNOR-popcount kernels",
                        description="Build the native XNOR-popcount kernels where this machine has not yet, "
                                    "and say which path the binary layers run.")
    return parser


def add_config_args(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--config", help=help)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key by its dotted path, value parsed as YAML (repeatable)")


def export(args: argparse.Namespace) -> int:
    from .train.deployment import export_checkpoint

    sizes = export_checkpoint(args.checkpoint, args.out, check_data=args.check_data, format=args.format)
    ratio = sizes["checkpoint_bytes"] / sizes["exported_bytes"]
    print(f"{args.out}: {sizes['exported_bytes']:,} bytes; checkpoint {args.checkpoint}: "
          f"{sizes['checkpoint_bytes']:,} bytes ({ratio:.1f}x smaller)")
    return 0


def package(args: argparse.Namespace) -> int:
    from .deploy.package import compile_package

    size = compile_package(args.packed, args.out)
    print(f"{args.out}: {size:,} bytes, for inputs of any batch size on this machine's CPU; "
          f"load it with xnortrain.deploy.load_package")
    return 0


def summarize(args: argparse.Namespace) -> int:
    from .train.config import load_config
    from .train.deployment import summary_of_checkpoint, summary_of_config

    if (args.config is None) == (args.checkpoint is None):
        raise UserError("summary: give --config FILE or --checkpoint PATH (one of them)")
    if args.checkpoint is not None:
        print(summary_of_checkpoint(args.checkpoint))
    else:
        print(summary_of_config(load_config(args.config, args.overrides)))
    return 0


def build_kernels(args: argparse.Namespace) -> int:
    from .deploy import kernels

    problem = kernels.load()
    print(f"binary layers run the {kernels.path_in_use()}")
    return 0 if problem is None else 1


def plot(args: argparse.Namespace) -> int:
    from .train.plot import plot_runs

    if args.labels is not None and len(args.labels) != len(args.run_dirs):
        raise UserError(f"--labels: {len(args.labels)} labels for {len(args.run_dirs)} run directories")
    print(plot_runs(args.run_dirs, args.out, args.labels))
    return 0


def run(args: argparse.Namespace) -> int:
    from .train.config import load_config
    from .train.loop import evaluate_checkpoint, fit

    config = load_config(args.config, args.overrides)
    out_dir = Path(config.train.out_dir)
    if args.eval_only:
        path = args.resume or out_dir / "best.pt"
        print(json.dumps(evaluate_checkpoint(config, path)))
        return 0
    resume = (args.resume or out_dir / "last.pt") if args.resume is not None else None
    fit(config, resume=resume, quiet=args.quiet)
    return 0


def print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning on the command line: one line on stderr, without the source line that raised it."""
    print(f"xnortrain: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command is None and args.config is None:
        parser.error("--config is required to train (or give a command: plot, export, package, summary, kernels)")
    command = {"plot": plot, "export": export, "package": package, "summary": summarize, "kernels": build_kernels,
               None: run}[args.command]
    from .train.loop import Interrupted

    with warnings.catch_warnings():  # restores warnings.showwarning on the way out
        warnings.showwarning = print_warning
        try:
            return command(args)
        except Interrupted as stop:
            if stop.announce:
                print(f"xnortrain: {stop}", file=sys.stderr)
            return stop.exit_code
        except UserError as err:
            print(f"xnortrain: error: {err}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
