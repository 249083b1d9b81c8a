"""Epoch speed: the trainer against the compute floor and against a typical user loop.

One training epoch of LeNet-5 XNOR-Net on Fashion-MNIST (batch 128), three ways,
alternated round by round in this one process:

  (a) trainer  - xnortrain's `train_one_epoch` as the CLI runs it (in-memory data, batch
                 preparation, metric sums, progress bar off as with a non-terminal stderr)
  (b) floor    - the same model, BinOp and batches already in memory as tensors; nothing
                 but forward, backward, optimizer step
  (c) typical  - torchvision FashionMNIST with ToTensor + Normalize, a DataLoader with 2
                 workers, feeding the same model and BinOp

It prints the median epoch times and the ratios (a)/(b) and (c)/(a).

    python scripts/bench_epoch.py            # 3 rounds on the full 60,000 images
    python scripts/bench_epoch.py --quick    # 2 rounds on the first 10,000
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from xnortrain.train.config import load_config
from xnortrain.train.idx import DEBIAN_FASHION_MNIST
from xnortrain.train.loop import Position, StopFlag, build_run, train_one_epoch

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "fashion_mnist_lenet.yaml"


def torchvision_layout(root: Path) -> Path:
    """Debian's gzipped IDX files, unpacked where torchvision's FashionMNIST looks for them."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for gz in DEBIAN_FASHION_MNIST.glob("*.gz"):
        with gzip.open(gz) as src, open(raw / gz.stem, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return root


def trainer_epoch(subset: int | None):
    sets = ["train.epochs=1", "train.deterministic=false", f"train.out_dir={tempfile.mkdtemp()}"]
    config = load_config(CONFIG, sets + ([f"data.train_subset={subset}"] if subset else []))
    run = build_run(config)

    def epoch():
        run.position = Position()
        run.running = {}
        with StopFlag() as stop:
            train_one_epoch(run, stop, show_progress=False)

    return epoch, run


def epoch_over(run, batches):
    """An epoch of nothing but forward, backward and optimizer step over `batches`."""
    criterion = nn.CrossEntropyLoss()

    def epoch():
        run.model.train()
        for x, y in batches:
            run.optimizer.zero_grad(set_to_none=True)
            criterion(run.model(x), y).backward()
            run.optimizer.step()

    return epoch


def floor_epoch(subset: int | None):
    _, run = trainer_epoch(subset)
    return epoch_over(run, list(run.data.train.batches(0)))  # prepared once, outside the timing


def typical_epoch(subset: int | None, root: Path):
    import torchvision
    from torchvision import transforms

    _, run = trainer_epoch(subset)
    dataset = torchvision.datasets.FashionMNIST(
        str(root), train=True, transform=transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.2860,), (0.3530,))]))
    if subset:
        dataset = torch.utils.data.Subset(dataset, range(subset))
    return epoch_over(run, torch.utils.data.DataLoader(dataset, batch_size=128, shuffle=True, num_workers=2,
                                                       persistent_workers=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds on the first 10,000 images")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    rounds, subset = (2, 10_000) if args.quick else (3, None)

    with tempfile.TemporaryDirectory() as tmp:
        ways = {"trainer": trainer_epoch(subset)[0], "floor": floor_epoch(subset),
                "typical": typical_epoch(subset, torchvision_layout(Path(tmp)))}
        times = {name: [] for name in ways}
        for _ in range(rounds):
            for name, epoch in ways.items():
                start = time.perf_counter()
                epoch()
                times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) for name, t in times.items()}
    result = {"torch": torch.__version__, "threads": torch.get_num_threads(), "rounds": rounds,
              "train_images": subset or 60_000, "epoch_s": med,
              "trainer_over_floor": med["trainer"] / med["floor"], "typical_over_trainer": med["typical"] / med["trainer"]}
    print("| way | epoch s (median) |\n|---|---|")
    for name, value in med.items():
        print(f"| {name} | {value:.2f} |")
    print(f"(a) trainer / (b) floor = {result['trainer_over_floor']:.3f}; "
          f"(c) typical / (a) trainer = {result['typical_over_trainer']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
