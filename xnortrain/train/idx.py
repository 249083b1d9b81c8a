"""MNIST-family data in the IDX format (gzipped or not), read into tensors.

Fashion-MNIST ships offline in Debian's package `dataset-fashion-mnist`, under
`/usr/share/datasets/fashion-mnist/` as `{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`.
Reading IDX needs torch alone, so small data sets can be held in memory as tensors.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import torch

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_DTYPES = {0x08: torch.uint8}


def read_idx(path: str | Path) -> torch.Tensor:
    """An IDX file (magic 0x0000 TT DD, big-endian int32 sizes, then the data) as a tensor."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (bad magic number)")
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    body = data[4 + 4 * dims:]
    if len(body) != torch.Size(shape).numel():
        raise ValueError(f"{path} is truncated: header says {shape}, found {len(body)} bytes of data")
    return torch.frombuffer(bytearray(body), dtype=_DTYPES[data[2]]).view(shape)


def find_idx_split(root: str | Path, train: bool) -> tuple[Path, Path]:
    """The (images, labels) files of one split under `root`, gzipped or not."""
    prefix = "train" if train else "t10k"
    found = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        candidates = [Path(root) / f"{prefix}-{kind}{ext}" for ext in ("", ".gz")]
        existing = [c for c in candidates if c.is_file()]
        if not existing:
            raise FileNotFoundError(f"no {candidates[1].name} (or {candidates[0].name}) in {root}")
        found.append(existing[0])
    return found[0], found[1]


def load_idx_split(root: str | Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of one split of an MNIST-family set."""
    images_path, labels_path = find_idx_split(root, train)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images_path} holds {images.shape[0]} images but {labels_path} {labels.shape[0]} labels")
    return images, labels.long()
