"""Data sets as seeded, resumable epochs of batches.

`build_data(spec, seed)` gives a `TrainData`: the training and evaluation splits as
`EpochBatches`, whose `batches(epoch, start)` yields the batches of one epoch from batch
`start` on (`indexed_batches`: with each batch's sample indices). The training order is a
permutation drawn from a generator seeded from (seed, epoch), the random augmentation of
batch i one seeded from (seed, epoch, i); the global RNG is never drawn from. So a run
resumed mid-epoch sees bit for bit the batches an uninterrupted run would have seen, and
data loading cannot shift the global RNG stream that dropout and initialisation use.

- mnist, fashion_mnist, cifar10, cifar100: read once by torchvision's dataset classes and
  held in memory as uint8 tensors; batches are augmented and normalised batch-wise with
  tensor ops, so that loading does not dominate a CPU epoch. Fashion-MNIST falls back to
  Debian's offline copy (`xnortrain.idx`).
- imagenet: torchvision ImageFolder directories, decoded by a DataLoader.
- synthetic: random inputs with learnable labels, for smoke tests and benchmarks.

torchvision (the ``vision`` extra) is imported inside the functions that read files, so
importing this module needs torch alone; Fashion-MNIST falls back to Debian's copy without it.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, DataError, MissingDependency
from ..optional import require
from .idx import DEBIAN_FASHION_MNIST, load_idx_split

DATA_SETS = ("cifar10", "cifar100", "mnist", "fashion_mnist", "imagenet", "synthetic")

Device = torch.device | str
# prepare(inputs as stored, generator or None) -> float32 model inputs; None: no augmentation
Prepare = Callable[[Tensor, torch.Generator | None], Tensor]


@dataclass(frozen=True)
class DataSpec:
    """Which data set to load and how to batch it; plain values, validated on creation.

    `augment` turns on the training augmentation: random crop with zero padding 4 and
    random horizontal flip for CIFAR, RandomResizedCrop(224) and flip for ImageNet; it has
    no effect on the MNIST family and synthetic data, which are not augmented.
    `download` has no effect for ImageNet, which torchvision cannot fetch.
    `workers` is used by the ImageNet DataLoader only: the other sets are in memory.
    `holdout` moves the last N training samples into the evaluation split, in place of the
    test split, so hyperparameters can be chosen without looking at the test set (not for
    ImageNet: give it a held-out folder tree of its own). `train_subset` then keeps
    the first N of the training samples that remain (all of them if there are fewer).
    """

    name: str = "fashion_mnist"
    root: str = "data"
    download: bool = False
    batch_size: int = 128
    eval_batch_size: int = 512
    workers: int = 0
    augment: bool = True
    holdout: int | None = None
    train_subset: int | None = None
    synthetic_shape: tuple[int, ...] = (1, 28, 28)
    synthetic_classes: int = 10
    synthetic_train_size: int = 512
    synthetic_eval_size: int = 256

    def __post_init__(self) -> None:
        if self.name not in DATA_SETS:
            raise ConfigError(f"unknown data set {self.name!r}: choose one of {', '.join(DATA_SETS)}")
        _check_at_least(1, batch_size=self.batch_size, eval_batch_size=self.eval_batch_size,
                        synthetic_train_size=self.synthetic_train_size,
                        synthetic_eval_size=self.synthetic_eval_size)
        _check_at_least(2, synthetic_classes=self.synthetic_classes)
        _check_at_least(0, workers=self.workers)
        if self.train_subset is not None:
            _check_at_least(1, train_subset=self.train_subset)
        if self.holdout is not None:
            _check_at_least(1, holdout=self.holdout)
            if self.name == "imagenet":
                raise ConfigError("data.holdout is not supported for imagenet: set it to null and make the "
                                  "held-out split a folder tree of its own (train/ and val/ under another data.root)")
        if not self.synthetic_shape or min(self.synthetic_shape) < 1:
            raise ConfigError(f"data.synthetic_shape must be a non-empty list of positive sizes, "
                              f"got {self.synthetic_shape!r}")
        # a YAML list arrives as a list; a tuple keeps the frozen spec hashable
        object.__setattr__(self, "synthetic_shape", tuple(self.synthetic_shape))


def _check_at_least(low: int, **values: int) -> None:
    for key, value in values.items():
        if value < low:
            raise ConfigError(f"data.{key} must be at least {low}, got {value!r}")


# --- seeded epochs of batches -------------------------------------------------------


def derived_seed(tag: str, *numbers: int) -> int:
    """A 64-bit seed hashed from (tag, *numbers), e.g. ("order", seed, epoch).

    Hashing keeps the streams of neighbouring keys unrelated (seed 1 epoch 2 is not seed 2
    epoch 1) and, unlike `hash()`, is stable across Python versions and processes.
    """
    key = repr((tag, *map(int, numbers))).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


def _generator(tag: str, *numbers: int) -> torch.Generator:
    """A CPU generator of its own, seeded from (tag, *numbers); the global RNG stays untouched."""
    return torch.Generator().manual_seed(derived_seed(tag, *numbers))


class EpochBatches:
    """The batches of one split, epoch by epoch.

    Batch i of epoch e holds the samples order[i*B : (i+1)*B], where `order` is a
    permutation drawn from (seed, e) for the training split and 0, 1, ... for the
    evaluation split (`seed` None). The last batch may be smaller: none is dropped.
    """

    fixed_inputs = False  # True where a sample's prepared input is the same every epoch (not augmented)

    def __init__(self, num_samples: int, batch_size: int, seed: int | None):
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.rank, self.world, self.pad = 0, 1, True

    def shard(self, rank: int, world: int, pad: bool = True) -> EpochBatches:
        """This split as process `rank` of `world` sees it: every world-th sample of the
        epoch's order from `rank` on. With `pad` (training), like DistributedSampler, the
        order is first padded (wrapping around) to a multiple of `world`, so that batch i
        of the shards together is batch i of the whole with `world` times the batch size.
        Without (evaluation), the shards split the samples exactly, each sample in one."""
        shard = copy.copy(self)
        shard.rank, shard.world, shard.pad = rank, world, pad
        return shard

    def __len__(self) -> int:
        samples = (math.ceil(self.num_samples / self.world) if self.pad
                   else len(range(self.rank, self.num_samples, self.world)))
        return math.ceil(samples / self.batch_size)

    def batches(self, epoch: int, start: int = 0, device: Device = "cpu") -> Iterator[tuple[Tensor, Tensor]]:
        """(x float32 (B, C, H, W), y int64 (B,)) on `device` for batches start, start + 1, ... of `epoch`."""
        for _, x, y in self.indexed_batches(epoch, start, device):
            yield x, y

    def indexed_batches(self, epoch: int, start: int = 0,
                        device: Device = "cpu") -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """(sample indices int64 (B,) on the CPU, x, y) for the batches of `batches`."""
        raise NotImplementedError

    def in_order(self) -> EpochBatches:
        """The whole split, unsharded, its samples in the order of their indices, as evaluation sees them."""
        whole = copy.copy(self)
        whole.seed, whole.rank, whole.world, whole.pad = None, 0, 1, True
        return whole

    def _order(self, epoch: int, start: int) -> Tensor:
        """The sample indices of all of `epoch` in order, once `start` is checked to be a batch of it."""
        if not 0 <= start <= len(self):
            raise ValueError(f"start batch {start} is outside 0..{len(self)} (batches per epoch)")
        if self.seed is None:
            order = torch.arange(self.num_samples)
        else:
            order = torch.randperm(self.num_samples, generator=_generator("order", self.seed, epoch))
        if self.world == 1:
            return order
        if self.pad:
            order = torch.cat([order, order[:(-self.num_samples) % self.world]])
        return order[self.rank::self.world]

    def _shard_key(self) -> tuple[int, ...]:
        """Extra key of this shard's augmentation streams (none for a single process)."""
        return () if self.world == 1 else (self.rank,)


class _TensorBatches(EpochBatches):
    """Batches of a split held in memory, prepared (augmented, normalised) batch-wise."""

    def __init__(self, inputs: Tensor, labels: Tensor, batch_size: int, prepare: Prepare, seed: int | None,
                 augmented: bool = False):
        super().__init__(len(labels), batch_size, seed)
        self.inputs, self.labels, self.prepare = inputs, labels, prepare
        self.fixed_inputs = not augmented

    def indexed_batches(self, epoch: int, start: int = 0,
                        device: Device = "cpu") -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """(sample indices int64 (B,) on the CPU, x float32 (B, C, H, W), y int64 (B,)) on `device`
        for batches start, start + 1, ... of `epoch`."""
        order = self._order(epoch, start)
        for i in range(start, len(self)):
            index = order[i * self.batch_size:(i + 1) * self.batch_size]
            # batch i's augmentation depends on (seed, epoch, i) alone, so starting at
            # `start` needs none of the earlier batches' draws
            generator = None if self.seed is None else _generator("augment", self.seed, epoch, i, *self._shard_key())
            yield index, self.prepare(self.inputs[index].to(device), generator), self.labels[index].to(device)


class _FolderBatches(EpochBatches):
    """Batches of an image-folder data set, read and transformed by a DataLoader.

    The order and `start` follow the same rules as in memory. Beyond that each training
    sample's random transform runs with the global CPU RNG seeded from (seed, epoch,
    sample index) and restored afterwards, so the batches do not depend on `workers` and
    the caller's RNG is not consumed. This is as exact as torchvision's transforms and
    image decoding are deterministic, which this module does not check.
    """

    def __init__(self, dataset, num_samples: int, batch_size: int, workers: int, seed: int | None):
        super().__init__(num_samples, batch_size, seed)
        self.dataset, self.workers = dataset, workers

    def indexed_batches(self, epoch: int, start: int = 0,
                        device: Device = "cpu") -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """(sample indices int64 (B,) on the CPU, x float32 (B, 3, 224, 224), y int64 (B,)) on `device`
        for batches start, start + 1, ... of `epoch`."""
        indices = self._order(epoch, start)[start * self.batch_size:]
        keys = [(index, None if self.seed is None else derived_seed("sample", self.seed, epoch, index))
                for index in indices.tolist()]
        loader = torch.utils.data.DataLoader(
            _SeededSamples(self.dataset), batch_size=self.batch_size, sampler=keys,
            num_workers=self.workers, pin_memory=torch.device(device).type == "cuda",
            generator=torch.Generator(),  # else the loader draws its worker seed from the global RNG
        )
        for index, (x, y) in zip(indices.split(self.batch_size), loader):
            yield index, x.to(device, non_blocking=True), y.to(device, non_blocking=True)


class _SeededSamples(torch.utils.data.Dataset):
    """Item (index, seed) is dataset[index], its random transform drawn with the global CPU RNG at `seed`."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __getitem__(self, key: tuple[int, int | None]):
        index, seed = key
        if seed is None:
            return self.dataset[index]
        # torchvision's transforms draw from the global RNG; lend it to them and give the
        # caller's state back. Only the CPU generator: torch.manual_seed would reseed CUDA too.
        state = torch.get_rng_state()
        torch.default_generator.manual_seed(seed)
        try:
            return self.dataset[index]
        finally:
            torch.set_rng_state(state)


@dataclass(frozen=True)
class TrainData:
    """A data set ready for training: its two splits and the shapes a model needs."""

    num_classes: int
    input_shape: tuple[int, ...]  # (C, H, W) of one sample
    train: EpochBatches
    eval: EpochBatches


def build_data(spec: DataSpec, seed: int) -> TrainData:
    """The training and evaluation batches of `spec`'s data set, the training ones seeded by `seed`.

    Raises DataError, in one line naming the path, the layout expected there and how to
    get it, when the data set is missing or its download fails.
    """
    if spec.name == "synthetic":
        return _synthetic_data(spec, int(seed))
    if spec.name == "imagenet":
        return _imagenet_data(spec, int(seed))
    return _small_data(spec, int(seed))


IMAGENET_CLASSES, IMAGENET_INPUT = 1000, (3, 224, 224)


def declared_shape(spec: DataSpec) -> tuple[int, tuple[int, ...]]:
    """(number of classes, input shape) of `spec`'s data set as it is declared, without reading
    any file (ImageNet: its 1000 classes; a folder tree with other classes has its own count)."""
    if spec.name == "synthetic":
        return spec.synthetic_classes, spec.synthetic_shape
    if spec.name == "imagenet":
        return IMAGENET_CLASSES, IMAGENET_INPUT
    info = _SMALL_SETS[spec.name]
    return info.num_classes, info.input_shape


# --- small data sets, in memory -------------------------------------------------------


@dataclass(frozen=True)
class _SmallSet:
    """A data set that torchvision reads whole into memory."""

    torchvision_class: str  # its class in torchvision.datasets
    layout: str  # the files torchvision reads, under root
    num_classes: int
    input_shape: tuple[int, int, int]  # (C, H, W) of one sample
    mean: tuple[float, ...]  # per channel, of pixel values in [0, 1]
    std: tuple[float, ...]
    crop_padding: int  # of the training augmentation; 0: not augmented


_SMALL_SETS = {
    "mnist": _SmallSet("MNIST", "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
                       10, (1, 28, 28), (0.1307,), (0.3081,), 0),
    "fashion_mnist": _SmallSet("FashionMNIST", "FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
                               10, (1, 28, 28), (0.2860,), (0.3530,), 0),
    "cifar10": _SmallSet("CIFAR10", "cifar-10-batches-py/{data_batch_1,...,data_batch_5,test_batch,batches.meta}",
                         10, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 4),
    "cifar100": _SmallSet("CIFAR100", "cifar-100-python/{train,test,meta}",
                          100, (3, 32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 4),
}


def _small_data(spec: DataSpec, seed: int) -> TrainData:
    info = _SMALL_SETS[spec.name]
    read = _read_fashion_split if spec.name == "fashion_mnist" else _read_split
    train_x, train_y, eval_x, eval_y = _splits(spec, *read(spec, info, train=True),
                                               read_eval=lambda: read(spec, info, train=False))
    train_prep = _ImagePrep(info.mean, info.std, info.crop_padding if spec.augment else 0)
    return TrainData(
        num_classes=info.num_classes,
        input_shape=tuple(train_x.shape[1:]),
        train=_TensorBatches(train_x, train_y, spec.batch_size, train_prep, seed,
                             augmented=train_prep.crop_padding > 0),
        eval=_TensorBatches(eval_x, eval_y, spec.eval_batch_size, _ImagePrep(info.mean, info.std), None),
    )


def _splits(spec: DataSpec, train_x: Tensor, train_y: Tensor,
            read_eval: Callable[[], tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(train images, train labels, eval images, eval labels) from the training samples: the
    last spec.holdout of them held out for evaluation where asked (else `read_eval()`, the
    test split), then the first spec.train_subset of those left for training."""
    if spec.holdout:
        kept = len(train_x) - spec.holdout
        if kept < 1:
            raise DataError(f"data.holdout {spec.holdout} leaves no training samples: {spec.name} has "
                            f"{len(train_x)}; hold out fewer")
        train_x, train_y, eval_x, eval_y = train_x[:kept], train_y[:kept], train_x[kept:], train_y[kept:]
    else:
        eval_x, eval_y = read_eval()
    return train_x[:spec.train_subset], train_y[:spec.train_subset], eval_x, eval_y  # [:None] keeps all


def _read_split(spec: DataSpec, info: _SmallSet, train: bool) -> tuple[Tensor, Tensor]:
    """Images (N, C, H, W) uint8 and labels (N,) int64 of one split, read by torchvision."""
    datasets = require("torchvision.datasets", "vision", f"data.name {spec.name}")
    try:
        dataset = getattr(datasets, info.torchvision_class)(spec.root, train=train, download=spec.download)
    except (RuntimeError, OSError) as error:  # torchvision's "not found or corrupted", a failed download
        raise _missing(spec, info, error) from error
    images = torch.as_tensor(dataset.data)
    # MNIST's images are (N, H, W), CIFAR's (N, H, W, C)
    images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)
    labels = torch.as_tensor(dataset.targets, dtype=torch.long)
    return images.contiguous(), _checked_labels(labels, info.num_classes, spec)


def _read_fashion_split(spec: DataSpec, info: _SmallSet, train: bool) -> tuple[Tensor, Tensor]:
    """Fashion-MNIST from torchvision's layout under root, else from Debian's offline copy."""
    try:
        return _read_split(spec, info, train)
    except (DataError, MissingDependency):
        if spec.download:  # the user asked for a download: report its failure, not the fallback's
            raise
    try:
        images, labels = load_idx_split(DEBIAN_FASHION_MNIST, train)
    except (OSError, ValueError) as error:
        raise _missing(spec, info, None, also=f"or Debian's copy ({_one_line(error)})") from error
    return images.unsqueeze(1), _checked_labels(labels, info.num_classes, spec)


def _checked_labels(labels: Tensor, num_classes: int, spec: DataSpec) -> Tensor:
    # a stray label would surface much later as an opaque index error inside the loss
    if labels.numel() and not 0 <= labels.min() <= labels.max() < num_classes:
        raise DataError(f"{spec.name} in {spec.root} has labels outside 0..{num_classes - 1}")
    return labels


def _missing(spec: DataSpec, info: _SmallSet, error: Exception | None, also: str = "") -> DataError:
    """The one-line error for a small data set that is not at spec.root."""
    root = Path(spec.root)
    problem = f"could not be downloaded ({_one_line(error)})" if spec.download else "not found, incomplete or corrupted"
    fix = "check the network or put the files there yourself" if spec.download else "set data.download: true"
    if spec.name == "fashion_mnist":
        fix += f", or apt-get install dataset-fashion-mnist (read from {DEBIAN_FASHION_MNIST})"
    return DataError(f"{spec.name} {problem} in {root}: expected torchvision's {info.torchvision_class} "
                     f"layout {root / info.layout}{' ' + also if also else ''}; {fix}")


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


@dataclass(frozen=True)
class _ImagePrep:
    """uint8 images (B, C, H, W) -> float32 normalised, randomly cropped and flipped first if crop_padding > 0."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int = 0

    def __call__(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        if self.crop_padding:
            x = _random_crop_flip(x, self.crop_padding, generator)
        mean = torch.tensor(self.mean, device=x.device).view(-1, 1, 1)  # (C, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(-1, 1, 1)  # (C, 1, 1)
        return (x.float() / 255 - mean) / std  # what ToTensor + Normalize compute per image


def _random_crop_flip(x: Tensor, padding: int, generator: torch.Generator) -> Tensor:
    """Per sample: zero-pad by `padding`, crop (H, W) at a random offset, flip left-right with p = 1/2.

    The batch-wise form of torchvision's RandomCrop((H, W), padding) + RandomHorizontalFlip.
    Offsets and flips are drawn on the CPU from `generator`, so they are the same on any
    device. x: (B, C, H, W), any dtype.
    """
    b, _, h, w = x.shape
    dy, dx = torch.randint(0, 2 * padding + 1, (2, b, 1), generator=generator).to(x.device)  # (B, 1) each
    flip = (torch.rand(b, 1, generator=generator) < 0.5).to(x.device)  # (B, 1)
    rows = dy + torch.arange(h, device=x.device)  # (B, H)
    cols = dx + torch.arange(w, device=x.device)  # (B, W)
    cols = torch.where(flip, cols.flip(1), cols)  # a flipped crop reads its columns backwards
    padded = F.pad(x, (padding,) * 4)  # (B, C, H + 2p, W + 2p)
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    crops = padded[batch, :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return crops.permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)


# --- synthetic ----------------------------------------------------------------------


def _synthetic_data(spec: DataSpec, seed: int) -> TrainData:
    """Random inputs around a random prototype per class: learnable by design, by a linear model too."""
    generator = _generator("synthetic", seed)
    prototypes = torch.randn(spec.synthetic_classes, *spec.synthetic_shape, generator=generator)  # (K, *shape)
    train_x, train_y, eval_x, eval_y = _splits(
        spec, *_around_prototypes(spec.synthetic_train_size, prototypes, generator),
        read_eval=lambda: _around_prototypes(spec.synthetic_eval_size, prototypes, generator))
    return TrainData(
        num_classes=spec.synthetic_classes,
        input_shape=spec.synthetic_shape,
        train=_TensorBatches(train_x, train_y, spec.batch_size, _as_is, seed),
        eval=_TensorBatches(eval_x, eval_y, spec.eval_batch_size, _as_is, None),
    )


def _around_prototypes(n: int, prototypes: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """n samples (prototype of a uniformly drawn class + as much standard-normal noise) / sqrt(2)."""
    labels = torch.randint(0, len(prototypes), (n,), generator=generator)  # (N,)
    noise = torch.randn(n, *prototypes.shape[1:], generator=generator)  # (N, *shape)
    return (prototypes[labels] + noise) / math.sqrt(2), labels  # unit variance, like normalised images


def _as_is(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Synthetic inputs are float with unit variance already, and not augmented."""
    return x


# --- ImageNet -----------------------------------------------------------------------

_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _imagenet_data(spec: DataSpec, seed: int) -> TrainData:
    transforms = require("torchvision.transforms", "vision", "data.name imagenet")
    normalise = [transforms.ToTensor(), transforms.Normalize(_IMAGENET_MEAN, _IMAGENET_STD)]
    eval_transform = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), *normalise])
    train_transform = transforms.Compose(
        [transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), *normalise]
    ) if spec.augment else eval_transform
    train_set = _image_folder(spec, "train", train_transform)
    eval_set = _image_folder(spec, "val", eval_transform)
    if train_set.classes != eval_set.classes:
        raise DataError(f"{spec.root}/train and {spec.root}/val hold different class folders "
                        f"({len(train_set.classes)} and {len(eval_set.classes)}); labels would not match")
    num_train = min(len(train_set), spec.train_subset or len(train_set))
    return TrainData(
        num_classes=len(train_set.classes),
        input_shape=IMAGENET_INPUT,
        train=_FolderBatches(train_set, num_train, spec.batch_size, spec.workers, seed),
        eval=_FolderBatches(eval_set, len(eval_set), spec.eval_batch_size, spec.workers, None),
    )


def _image_folder(spec: DataSpec, split: str, transform):
    from torchvision import datasets

    root = Path(spec.root)
    try:
        return datasets.ImageFolder(root / split, transform=transform)
    except OSError as error:  # no such directory, no class folders, or no images in them
        raise DataError(f"imagenet not found in {root} ({_one_line(error)}): expected {root}/train/<class>/*.JPEG "
                        f"and {root}/val/<class>/*.JPEG; get it from image-net.org and unpack it so "
                        f"(data.download cannot fetch ImageNet)") from error
