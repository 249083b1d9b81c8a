"""BinOp in a plain PyTorch loop: LeNet-5 XNOR-Net on the real Fashion-MNIST.

    python scripts/demo_binop.py [--epochs 2] [--root /usr/share/datasets/fashion-mnist]

Needs the IDX files of Fashion-MNIST (Debian: `apt-get install dataset-fashion-mnist`).
Prints loss and test accuracy per epoch, and checks at the end that the model holds real
weights and that a fresh model with BinOp attached reproduces its predictions.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from xnortrain import BinOp
from xnortrain.idx import DEBIAN_FASHION_MNIST, load_idx_split
from xnortrain.zoo import lenet5

MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST training-set pixel statistics


def load(root, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = load_idx_split(root, train)
    return ((images.float() / 255 - MEAN) / STD).unsqueeze(1), labels  # (N, 1, 28, 28)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = sum((model(xb).argmax(1) == yb).sum().item() for xb, yb in zip(x.split(1000), y.split(1000)))
    return correct / len(y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--root", default=str(DEBIAN_FASHION_MNIST))
    args = parser.parse_args()

    torch.manual_seed(0)
    x_train, y_train = load(args.root, train=True)
    x_test, y_test = load(args.root, train=False)

    model = lenet5()  # XNOR-Net: binary weights and binary activations
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=1e-5)
    binop = BinOp(model, optimizer=optimizer)  # projects after every optimizer.step()
    print(binop)

    for epoch in range(1, args.epochs + 1):
        model.train()
        start, total = time.perf_counter(), 0.0
        order = torch.randperm(len(y_train))
        for idx in order.split(128):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch}: train loss {total / len(y_train):.4f}, "
              f"test acc {accuracy(model, x_test, y_test):.2%}, {time.perf_counter() - start:.1f} s")

    fresh = lenet5()
    BinOp(fresh).model.load_state_dict(model.state_dict())
    same = torch.equal(fresh.eval()(x_test[:500]).argmax(1), model(x_test[:500]).argmax(1))
    real = all(len(w.unique()) > 2 for w in binop.weights.values())
    print(f"state_dict holds real weights: {real}; reloaded model predicts the same: {same}")


if __name__ == "__main__":
    main()
