"""Small user-style models for the trainer tests (importable as `models_for_tests:Class`),
and the plain training loop the BinOp tests run them with."""

import os
import signal
from pathlib import Path

import torch
from torch import nn


class TinyNet(nn.Module):
    """Conv, BatchNorm, Dropout (so resume must restore the RNG), Linear: quick on CPU."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 8):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.conv = nn.Conv2d(width, width, 3, padding=1)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(width * 4 * 4, 32)
        self.head = nn.Linear(32, num_classes)

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.conv(self.bn(self.stem(x)).relu()).relu(), 4)
        return self.head(self.drop(self.fc(x.flatten(1)).relu()))


class DropoutProbe(TinyNet):
    """TinyNet that, at each training forward pass, also lets its Dropout mask 64 ones and
    saves the masks drawn so far to $XNORTRAIN_TEST_MASKS/rank<RANK>.pt."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__(num_classes, in_channels)
        self.masks = []

    def forward(self, x):
        if self.training:
            self.masks.append(self.drop(torch.ones(64)) != 0)
            torch.save(self.masks, Path(os.environ["XNORTRAIN_TEST_MASKS"]) / f"rank{os.environ.get('RANK', '0')}.pt")
        return super().forward(x)


class SignalAt(TinyNet):
    """TinyNet that sends its own process SIGTERM during a chosen training forward pass, given
    as $XNORTRAIN_TEST_SIGTERM = "<rank>:<forward pass, 1-based>" (no signal without it)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__(num_classes, in_channels)
        self.calls = 0

    def forward(self, x):
        if self.training:
            self.calls += 1
            rank, _, at = os.environ.get("XNORTRAIN_TEST_SIGTERM", "-1:0").partition(":")
            if rank == os.environ.get("RANK", "0") and self.calls == int(at):
                os.kill(os.getpid(), signal.SIGTERM)
        return super().forward(x)


class NanAt(TinyNet):
    """TinyNet whose `nan_at`-th training forward pass (1-based) returns NaN logits."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, nan_at: int = 1):
        super().__init__(num_classes, in_channels)
        self.nan_at, self.calls = nan_at, 0

    def forward(self, x):
        logits = super().forward(x)
        if self.training:
            self.calls += 1
            if self.calls == self.nan_at:
                return logits * float("nan")
        return logits


class PlainMLP(nn.Module):
    """Linear layers and ReLU only: no BatchNorm or Dropout, whose per-process statistics
    and random draws would make data-parallel runs differ from one process on the union."""

    def __init__(self, num_classes: int = 10, in_features: int = 64, width: int = 32):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_features, width), nn.ReLU(),
                                  nn.Linear(width, width), nn.ReLU(), nn.Linear(width, num_classes))

    def forward(self, x):
        return self.body(x)


def train_losses(model: nn.Module, optimizer, loss_of, steps: int) -> list[float]:
    """`steps` plain optimizer steps on the loss `loss_of(model)`; the loss before each step."""
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = loss_of(model)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
