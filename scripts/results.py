"""Run the benchmarks and write docs/results.md (and one JSON file per benchmark beside it).

    python scripts/results.py            # every benchmark, full size (hours: the accuracy rows train 3 seeds)
    python scripts/results.py --quick    # every benchmark's --quick form (minutes)
    python scripts/results.py --only binop inference   # re-runs these, keeps the other sections

Each benchmark's section (its printed tables under the exact command that produced them,
with the date, the machine (CPU model, cores, OS) and the torch version) is written to
docs/results/<name>.md beside its JSON, and the page is put together from the sections
there, in a fixed order. A run replaces the sections of the benchmarks it ran.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent

# name: (title, script, full arguments, quick arguments); every script also takes --json PATH
BENCHMARKS = {
    "accuracy": ("Accuracy: LeNet-5 on the real Fashion-MNIST, full precision, BWN and XNOR-Net", "bench_accuracy",
                 ["--only", "lenet5", "--seeds", "0", "1", "2", "--jobs", "2"], ["--only", "lenet5", "--quick"]),
    "ingredients": ("Accuracy: LeNet-5 XNOR-Net with today's ingredients, in two stages and in one",
                    "bench_accuracy", ["--only", "lenet5-reactnet", "--seeds", "0", "1", "2", "--jobs", "2"],
                    ["--only", "lenet5-reactnet", "--quick"]),
    "resnet": ("Accuracy: the binary ResNet-20 recipe at the benchmark's size, against its float twin",
               "bench_accuracy", ["--only", "resnet20", "--seeds", "0", "1", "2", "--jobs", "2"],
               ["--only", "resnet20", "--quick"]),
    "binop": ("BinOp's cost in a training step (BinOp / plain step time)", "bench_binop", [], ["--quick"]),
    "compile": ("The trainer's step, eager against torch.compile", "bench_compile", [], ["--quick"]),
    "eval": ("The trainer's evaluation pass at several batch sizes", "bench_eval", [], ["--quick"]),
    "inference": ("Binary inference: exported models, XNOR-popcount kernels against float", "bench_inference", [],
                  ["--quick"]),
    "peers": ("Binary inference against onnxruntime and OpenVINO", "bench_inference", ["--peers"],
              ["--peers", "--quick"]),
    "processes": ("Inference latency from one process to the next", "bench_processes", ["--models", "nin", "alexnet"],
                  ["--processes", "2", "--repeats", "5"]),
    "epoch": ("Trainer epoch time against a plain PyTorch loop", "bench_epoch", [], ["--quick"]),
    "memory": ("Memory of a training step with and without BinOp", "bench_memory", [], ["--quick"]),
}


def machine() -> str:
    """CPU model, cores, OS and versions, as one line."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")]
        model = names[0] if names else model
    return (f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def command_of(name: str, quick: bool) -> list[str]:
    """The benchmark's command as a shell runs it, under the default environment."""
    _, script, full, quick_args = BENCHMARKS[name]
    return ["python", f"scripts/{script}.py", *(quick_args if quick else full)]


def run_benchmark(command: list[str], json_path: Path) -> str:
    """The benchmark's printed output; a failed benchmark stops the page from being written."""
    done = subprocess.run([sys.executable, *command[1:], "--json", str(json_path)], cwd=REPO,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout.rstrip()


def section(name: str, command: list[str], output: str, seconds: float, when: datetime.datetime, where: str) -> str:
    title = BENCHMARKS[name][0]
    return (f"## {title}\n\n`{' '.join(command)}` ({seconds / 60:.1f} min, {when:%Y-%m-%d %H:%M} UTC; "
            f"JSON: `results/{name}.json`)\n\nMachine: {where}.\n\n```\n{output}\n```\n")


def page(sections: list[str]) -> str:
    return ("# Results\n\nWritten by `python scripts/results.py`: each section is the output of the command "
            "above it, on the machine and at the time it names. `python scripts/results.py --only NAME` "
            "re-runs one benchmark and replaces its section.\n\n" + "\n".join(sections))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="each benchmark's --quick form")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS),
                        help="run only these benchmarks (the page keeps the other sections as they are)")
    parser.add_argument("--out", default=str(REPO / "docs" / "results.md"), help="page to write")
    args = parser.parse_args()
    out = Path(args.out)
    section_dir = out.parent / "results"
    section_dir.mkdir(parents=True, exist_ok=True)
    for name in args.only:
        command = command_of(name, args.quick)
        print(f"running {' '.join(command)}", file=sys.stderr, flush=True)
        start = datetime.datetime.now()
        output = run_benchmark(command, section_dir / f"{name}.json")
        seconds = (datetime.datetime.now() - start).total_seconds()
        text = section(name, command, output, seconds, datetime.datetime.now(datetime.timezone.utc), machine())
        (section_dir / f"{name}.md").write_text(text)
    sections = [(section_dir / f"{name}.md").read_text() for name in BENCHMARKS if (section_dir / f"{name}.md").is_file()]
    out.write_text(page(sections))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
