"""TensorBoard logging of a training run (`train.tensorboard: true`, extra `xnortrain[tensorboard]`).

Rank 0 writes event files into the run directory (`tensorboard --logdir runs/`):

    train/loss, train/acc1, train/lr   every `train.log_every` steps, x = global step: the
                                       epoch's running means so far (what the progress bar shows)
                                       and the learning rate of the last step
    epoch/<key>                        every number of the epoch's metrics.jsonl line, x = epoch
    weights/<name>                     per epoch, x = epoch: a histogram of each binarized layer's
                                       real weights (weights piling up at the clamp at +-1 are
                                       what binary training goes wrong on)
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..optional import require


def require_tensorboard() -> None:
    """One line where the tensorboard package is missing, naming the extra."""
    require("tensorboard", "tensorboard", "train.tensorboard")


class TensorBoardLog:
    """An event-file writer in the run directory (see the module docstring for the tags)."""

    def __init__(self, out_dir: Path):
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(out_dir))

    def log_progress(self, step: int, loss: float, acc1: float, lr: float) -> None:
        for name, value in (("loss", loss), ("acc1", acc1), ("lr", lr)):
            self.writer.add_scalar(f"train/{name}", value, step)

    def log_epoch(self, metrics: dict, weights: dict[str, torch.Tensor]) -> None:
        epoch = metrics["epoch"]
        for key, value in metrics.items():
            if key != "epoch":
                self.writer.add_scalar(f"epoch/{key}", value, epoch)
        for name, w in weights.items():
            self.writer.add_histogram(f"weights/{name}", w.detach().float(), epoch)
        self.writer.flush()

    def __enter__(self) -> TensorBoardLog:
        return self

    def __exit__(self, *exc) -> None:
        self.writer.close()
