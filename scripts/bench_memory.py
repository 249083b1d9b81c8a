"""Peak memory of a training step with BinOp against the plain model.

Each case runs in a fresh subprocess (so that earlier cases leave no allocator state):
build the model (with or without BinOp), run a few training steps, report the peak
resident set size (`resource.getrusage`, ru_maxrss) and, exactly, the bytes autograd
saves for the backward pass (summed over distinct storages through
`torch.autograd.graph.saved_tensors_hooks`). The difference is set against the size of
one float32 copy of the binarized weights.

    python scripts/bench_memory.py           # LeNet-5 batch 128, NIN batch 32, 3 processes per case
    python scripts/bench_memory.py --quick   # 1 process per case
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CASES = {"lenet5": (128, [1, 28, 28]), "nin": (32, [3, 32, 32])}

CHILD = r"""
import json, resource, sys, torch
from torch import nn
from xnortrain import BinOp
from xnortrain.zoo import lenet5, nin

name, batch, shape, with_binop = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4] == "1"
torch.manual_seed(0)
model = {"lenet5": lenet5, "nin": nin}[name]()
binop = BinOp(model) if with_binop else None
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
if binop is not None:
    binop.project_after(optimizer)
x, y = torch.randn(batch, *shape), torch.randint(0, 10, (batch,))
saved = {}

def pack(t):
    storage = t.untyped_storage()
    saved[storage.data_ptr()] = storage.nbytes()
    return t

for _ in range(5):
    optimizer.zero_grad(set_to_none=True)
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
binarized = sum(w.numel() * 4 for w in binop.weights.values()) if binop else 0
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "saved_mb": sum(saved.values()) / 2**20, "binarized_mb": binarized / 2**20}))
"""


def measure(name: str, with_binop: bool) -> dict:
    batch, shape = CASES[name]
    out = subprocess.run([sys.executable, "-c", CHILD, name, str(batch), json.dumps(shape), str(int(with_binop))],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one process per case")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    processes = 1 if args.quick else 3
    rows = []
    print("| model | plain peak RSS MB | BinOp peak RSS MB | plain saved-for-backward MB | BinOp saved MB | "
          "added saved MB | one copy of binarized weights MB |")
    print("|---|---|---|---|---|---|---|")
    for name in CASES:
        plain = [measure(name, False) for _ in range(processes)]
        binop = [measure(name, True) for _ in range(processes)]
        row = {
            "model": name,
            "plain_peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in plain),
            "binop_peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in binop),
            "plain_saved_mb": plain[0]["saved_mb"],
            "binop_saved_mb": binop[0]["saved_mb"],
            "binarized_copy_mb": binop[0]["binarized_mb"],
        }
        rows.append(row)
        print(f"| {name} | {row['plain_peak_rss_mb']:.1f} | {row['binop_peak_rss_mb']:.1f} | {row['plain_saved_mb']:.2f} | "
              f"{row['binop_saved_mb']:.2f} | {row['binop_saved_mb'] - row['plain_saved_mb']:.2f} | "
              f"{row['binarized_copy_mb']:.2f} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
