"""BinOp in a plain PyTorch loop (no trainer): LeNet-5 XNOR-Net on the real Fashion-MNIST.

    python scripts/demo_binop.py [--epochs 2] [--root data]

Needs Fashion-MNIST in torchvision's layout under --root, or Debian's copy
(`apt-get install dataset-fashion-mnist`).
Prints loss and test accuracy per epoch, and checks at the end that the model holds real
weights and that a fresh model with BinOp attached reproduces its predictions.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from xnortrain import BinOp
from xnortrain.train.data import DataSpec, build_data
from xnortrain.zoo import lenet5


@torch.no_grad()
def accuracy(model: nn.Module, batches) -> float:
    model.eval()
    correct = total = 0
    for x, y in batches.batches(0):
        correct += (model(x).argmax(1) == y).sum().item()
        total += len(y)
    return correct / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--root", default="data")
    args = parser.parse_args()

    torch.manual_seed(0)
    data = build_data(DataSpec("fashion_mnist", root=args.root, batch_size=128, eval_batch_size=1000), seed=0)

    model = lenet5()  # XNOR-Net: binary weights and binary activations
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=1e-5)
    binop = BinOp(model, optimizer=optimizer)  # projects after every optimizer.step()
    print(binop)

    for epoch in range(1, args.epochs + 1):
        model.train()
        start, total = time.perf_counter(), 0.0
        for x, y in data.train.batches(epoch):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(y)
        print(f"epoch {epoch}: train loss {total / data.train.num_samples:.4f}, "
              f"test acc {accuracy(model, data.eval):.2%}, {time.perf_counter() - start:.1f} s")

    fresh = lenet5()
    BinOp(fresh).model.load_state_dict(model.state_dict())
    x_test, _ = next(data.eval.batches(0))
    same = torch.equal(fresh.eval()(x_test).argmax(1), model(x_test).argmax(1))
    real = all(len(w.unique()) > 2 for w in binop.weights.values())
    print(f"state_dict holds real weights: {real}; reloaded model predicts the same: {same}")


if __name__ == "__main__":
    main()
