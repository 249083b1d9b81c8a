"""The command line.

    python -m xnortrain --config FILE [--set KEY=VALUE ...] [--resume [PATH]] [--eval-only] [--quiet]
    python -m xnortrain plot RUN_DIR [RUN_DIR ...] --out curves.png [--labels A B ...]
    python -m xnortrain export --checkpoint runs/x/best.pt --out model.xnor.pt
    python -m xnortrain summary --config FILE [--set KEY=VALUE ...]

User errors (config, data, checkpoint) print one line on stderr and exit 2; SIGINT/SIGTERM
finish the step, write last.pt and exit 128 + the signal number (under torchrun every
process stops at the same step, and rank 0 alone prints the line).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import UserError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="xnortrain", description="Train binary networks with XNOR-Net's BinOp.")
    parser.add_argument("--config", required=True, help="YAML config file (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key by its dotted path, value parsed as YAML (repeatable)")
    parser.add_argument("--resume", nargs="?", const="", default=None, metavar="PATH",
                        help="resume from PATH, or from <out_dir>/last.pt when no path is given")
    parser.add_argument("--eval-only", action="store_true",
                        help="evaluate a checkpoint (--resume PATH, else <out_dir>/best.pt) and print its metrics")
    parser.add_argument("--quiet", action="store_true", help="no progress bars and no per-epoch lines")
    return parser.parse_args(argv)


def parse_plot_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="xnortrain plot", description="Loss and top-1 curves of training runs.")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (with metrics.jsonl)")
    parser.add_argument("--out", default="curves.png", help="image file to write (default curves.png)")
    parser.add_argument("--labels", nargs="+", help="one legend label per run (default: directory names)")
    return parser.parse_args(argv)


def parse_export_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="xnortrain export", description="Write a packed 1-bit model file.")
    parser.add_argument("--checkpoint", required=True, help="training checkpoint (e.g. runs/x/best.pt)")
    parser.add_argument("--out", required=True, help="file to write (e.g. model.xnor.pt)")
    return parser.parse_args(argv)


def parse_summary_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="xnortrain summary", description="Per-layer sizes and operations.")
    parser.add_argument("--config", required=True, help="YAML config file (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key by its dotted path (repeatable)")
    return parser.parse_args(argv)


def export(args: argparse.Namespace) -> int:
    from .export import export_checkpoint

    sizes = export_checkpoint(args.checkpoint, args.out)
    ratio = sizes["checkpoint_bytes"] / sizes["exported_bytes"]
    print(f"{args.out}: {sizes['exported_bytes']:,} bytes; checkpoint {args.checkpoint}: "
          f"{sizes['checkpoint_bytes']:,} bytes ({ratio:.1f}x smaller)")
    return 0


def summarize(args: argparse.Namespace) -> int:
    from .config import load_config
    from .summary import summary_of_config

    print(summary_of_config(load_config(args.config, args.overrides)))
    return 0


def plot(args: argparse.Namespace) -> int:
    from .plot import plot_runs

    if args.labels is not None and len(args.labels) != len(args.run_dirs):
        raise UserError(f"--labels: {len(args.labels)} labels for {len(args.run_dirs)} run directories")
    print(plot_runs(args.run_dirs, args.out, args.labels))
    return 0


def run(args: argparse.Namespace) -> int:
    from .config import load_config
    from .train import evaluate_checkpoint, fit

    config = load_config(args.config, args.overrides)
    out_dir = Path(config.train.out_dir)
    if args.eval_only:
        path = args.resume or out_dir / "best.pt"
        print(json.dumps(evaluate_checkpoint(config, path)))
        return 0
    resume = (args.resume or out_dir / "last.pt") if args.resume is not None else None
    fit(config, resume=resume, quiet=args.quiet)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    subcommands = {"plot": (parse_plot_args, plot), "export": (parse_export_args, export),
                   "summary": (parse_summary_args, summarize)}
    if argv[:1] and argv[0] in subcommands:
        parse, command = subcommands[argv[0]]
        args = parse(argv[1:])
    else:
        args, command = parse_args(argv), run
    from .train import Interrupted

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
