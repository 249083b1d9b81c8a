"""Data sets: torchvision's on-disk layouts, normalisation, augmentation and exact resume.

The small-set fixtures are written in torchvision's own formats (raw IDX files, CIFAR
pickles), so the real torchvision readers run on them.
"""

from __future__ import annotations

import hashlib
import pickle
import subprocess
import sys
from collections import Counter
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torch.testing import assert_close

from xnortrain.errors import ConfigError, DataError
from xnortrain.train import data
from xnortrain.train.data import DataSpec, build_data
from xnortrain.train.idx import DEBIAN_FASHION_MNIST

MNIST_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
# name: (folder, training files, test file, meta file, meta key, label key, classes)
CIFAR = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch",
                "batches.meta", "label_names", "labels", 10),
    "cifar100": ("cifar-100-python", ["train"], "test", "meta", "fine_label_names", "fine_labels", 100),
}
MEAN_STD = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


# --- fixtures in torchvision's formats ----------------------------------------------


def write_idx(path, array: torch.Tensor) -> None:
    """An uncompressed IDX file of unsigned bytes, as torchvision's MNIST reads it."""
    header = bytes([0, 0, 0x08, array.dim()]) + b"".join(size.to_bytes(4, "big") for size in array.shape)
    path.write_bytes(header + array.numpy().tobytes())


def write_mnist(root, name: str, n_train: int = 70, n_test: int = 30) -> dict[str, torch.Tensor]:
    """Tiny MNIST-format splits in <root>/<MNIST|FashionMNIST>/raw/; returns what was written."""
    raw = root / MNIST_FOLDERS[name] / "raw"
    raw.mkdir(parents=True)
    g = torch.Generator().manual_seed(1)
    written = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        written[f"{prefix}_x"] = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g)
        written[f"{prefix}_y"] = torch.randint(0, 10, (n,), dtype=torch.uint8, generator=g)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", written[f"{prefix}_x"])
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", written[f"{prefix}_y"])
    return written


def write_cifar(root, name: str, monkeypatch, per_file: int = 12, n_test: int = 20) -> dict[str, np.ndarray]:
    """Tiny CIFAR pickles in torchvision's layout; returns the rows (N, 3072) and labels written.

    torchvision pins the md5 sums of the real CIFAR files, which no tiny file can match, so
    the test declares the sums of the files it wrote; torchvision's integrity check still
    runs, against those (see test_a_corrupted_cifar_file_is_a_data_error).
    """
    folder, train_files, test_file, meta_file, meta_key, label_key, classes = CIFAR[name]
    directory = root / folder
    directory.mkdir(parents=True)
    rng = np.random.default_rng(2)
    written = {"train_x": [], "train_y": []}
    for file, n in [(f, per_file) for f in train_files] + [(test_file, n_test)]:
        rows = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)  # R, G, B planes of 32x32, row-major
        labels = rng.integers(0, classes, n).tolist()
        entry = {"data": rows, label_key: labels, "filenames": [f"{i}.png" for i in range(n)]}
        (directory / file).write_bytes(pickle.dumps(entry, protocol=2))
        if file == test_file:
            written["test_x"], written["test_y"] = rows, labels
        else:
            written["train_x"].append(rows)
            written["train_y"] += labels
    (directory / meta_file).write_bytes(pickle.dumps({meta_key: [f"class{i}" for i in range(classes)]}, protocol=2))
    written["train_x"] = np.concatenate(written["train_x"])

    def md5(file: str) -> str:
        return hashlib.md5((directory / file).read_bytes()).hexdigest()

    dataset_class = getattr(torchvision.datasets, name.upper())
    monkeypatch.setattr(dataset_class, "train_list", [[f, md5(f)] for f in train_files])
    monkeypatch.setattr(dataset_class, "test_list", [[test_file, md5(test_file)]])
    monkeypatch.setattr(dataset_class, "meta", {"filename": meta_file, "key": meta_key, "md5": md5(meta_file)})
    return written


def write_image_folders(root, classes: int = 2, per_class: int = 3) -> None:
    """<root>/{train,val}/<class>/*.JPEG of small random images of varied sizes."""
    from PIL import Image

    rng = np.random.default_rng(3)
    for split in ("train", "val"):
        for c in range(classes):
            (root / split / f"n{c:08d}").mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (40 + 8 * i, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / f"n{c:08d}" / f"img{i}.JPEG")


def normalised(images: torch.Tensor, name: str) -> torch.Tensor:
    """uint8 (N, C, H, W) the way ToTensor + Normalize would give them."""
    mean, std = (torch.tensor(v).view(-1, 1, 1) for v in MEAN_STD[name])
    return (images.float() / 255 - mean) / std


def epoch(batches, e: int, start: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(batches.batches(e, start=start))


def samples(pairs) -> Counter:
    """The (label, input) multiset of a list of batches, exact to the bit."""
    return Counter((int(y), x.numpy().tobytes()) for xb, yb in pairs for x, y in zip(xb, yb))


def assert_same_batches(actual, expected) -> None:
    assert len(actual) == len(expected)
    for (x, y), (x_ref, y_ref) in zip(actual, expected):
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)


# --- the small sets, read by torchvision ----------------------------------------------


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_mnist_family_reads_torchvision_layout_and_normalises(tmp_path, name):
    written = write_mnist(tmp_path, name)
    d = build_data(DataSpec(name, root=str(tmp_path), batch_size=32, eval_batch_size=16), seed=0)
    assert (d.num_classes, d.input_shape) == (10, (1, 28, 28))
    assert (d.train.num_samples, len(d.train), d.eval.num_samples, len(d.eval)) == (70, 3, 30, 2)
    train, evaluation = epoch(d.train, 0), epoch(d.eval, 0)
    assert [len(y) for _, y in train] == [32, 32, 6]  # the last partial batch is kept
    x, y = train[0]
    assert (x.dtype, x.shape, y.dtype) == (torch.float32, (32, 1, 28, 28), torch.int64)
    # evaluation: in file order, normalised with the set's own constants
    assert_close(torch.cat([x for x, _ in evaluation]), normalised(written["t10k_x"].unsqueeze(1), name))
    assert torch.equal(torch.cat([y for _, y in evaluation]), written["t10k_y"].long())
    # training: a permutation of the same normalised samples (the MNIST family is not augmented)
    expected = [(normalised(written["train_x"].unsqueeze(1), name), written["train_y"].long())]
    assert samples(train) == samples(expected)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_reads_torchvision_pickles_and_normalises(tmp_path, monkeypatch, name):
    written = write_cifar(tmp_path, name, monkeypatch)
    spec = DataSpec(name, root=str(tmp_path), batch_size=16, eval_batch_size=8, augment=False)
    d = build_data(spec, seed=0)
    n_train = len(written["train_y"])
    assert (d.num_classes, d.input_shape) == (CIFAR[name][-1], (3, 32, 32))
    assert (d.train.num_samples, len(d.train), d.eval.num_samples, len(d.eval)) == (n_train, -(-n_train // 16), 20, 3)
    images = torch.from_numpy(written["test_x"]).view(-1, 3, 32, 32)  # rows are channel planes
    evaluation = epoch(d.eval, 0)
    assert_close(torch.cat([x for x, _ in evaluation]), normalised(images, name))
    assert torch.cat([y for _, y in evaluation]).tolist() == written["test_y"]
    train_images = torch.from_numpy(written["train_x"]).view(-1, 3, 32, 32)
    expected = [(normalised(train_images, name), torch.tensor(written["train_y"]))]
    assert samples(epoch(d.train, 0)) == samples(expected)


def test_a_corrupted_cifar_file_is_a_data_error(tmp_path, monkeypatch):
    write_cifar(tmp_path, "cifar10", monkeypatch)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_3", "ab") as f:
        f.write(b"\0")
    with pytest.raises(DataError, match="cifar10 not found, incomplete or corrupted in "):
        build_data(DataSpec("cifar10", root=str(tmp_path)), seed=0)


@pytest.mark.realdata
@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="needs apt-get install dataset-fashion-mnist")
def test_fashion_mnist_falls_back_to_debians_copy(tmp_path):
    d = build_data(DataSpec("fashion_mnist", root=str(tmp_path / "empty")), seed=0)
    assert (d.train.num_samples, d.eval.num_samples) == (60000, 10000)
    assert (d.num_classes, d.input_shape) == (10, (1, 28, 28))
    x, y = next(d.eval.batches(0))
    assert x.shape == (512, 1, 28, 28) and 0 <= y.min() and y.max() <= 9


# --- exact resume and augmentation ----------------------------------------------------


@pytest.fixture
def cifar_tiny(tmp_path, monkeypatch):
    """A tiny CIFAR-10 with augmentation on: 60 training samples in batches of 16, 16, 16, 12."""
    write_cifar(tmp_path, "cifar10", monkeypatch)

    def build(seed: int = 7, **options):
        return build_data(DataSpec("cifar10", root=str(tmp_path), batch_size=16, **options), seed=seed)

    return build


def test_resume_at_any_batch_is_bitwise(cifar_tiny):
    train = cifar_tiny().train
    for e in (0, 3):
        full = epoch(train, e)
        for k in range(len(train) + 1):
            assert_same_batches(epoch(train, e, start=k), full[k:])


def test_order_and_augmentation_depend_on_seed_and_epoch_alone(cifar_tiny):
    train = cifar_tiny().train
    assert_same_batches(epoch(train, 2), epoch(cifar_tiny().train, 2))  # a rebuilt loader too
    other_epoch, other_seed = epoch(train, 3), epoch(cifar_tiny(seed=8).train, 2)
    for other in (other_epoch, other_seed):
        assert not torch.equal(torch.cat([y for _, y in other]), torch.cat([y for _, y in epoch(train, 2)]))


def test_iterating_leaves_the_global_rng_alone(cifar_tiny):
    d = cifar_tiny()
    state = torch.get_rng_state()
    epoch(d.train, 0), epoch(d.train, 1, start=2), epoch(d.eval, 0)
    assert torch.equal(torch.get_rng_state(), state)


def test_evaluation_is_neither_shuffled_nor_augmented(cifar_tiny):
    d = cifar_tiny()
    assert_same_batches(epoch(d.eval, 0), epoch(d.eval, 5))
    assert_same_batches(epoch(d.eval, 0), epoch(cifar_tiny(augment=False).eval, 0))


def test_cifar_crops_are_shifts_of_the_padded_image_and_half_are_flipped(cifar_tiny):
    augmented, plain = cifar_tiny(), cifar_tiny(augment=False)
    mean, std = (torch.tensor(v).view(-1, 1, 1) for v in MEAN_STD["cifar10"])
    flips, offsets = [], set()
    for e in range(4):  # the order is the same with and without augmentation: sample by sample
        x_aug = torch.cat([x for x, _ in epoch(augmented.train, e)])
        x_plain = torch.cat([x for x, _ in epoch(plain.train, e)])
        for sample, original in zip(x_aug, x_plain):
            # zero padding of the uint8 image is (0 - mean) / std once normalised
            padded = ((torch.zeros(3, 40, 40) - mean) / std).clone()
            padded[:, 4:36, 4:36] = original
            matches = [(dy, dx, flip) for dy in range(9) for dx in range(9) for flip in (False, True)
                       if torch.equal(sample, (lambda c: c.flip(2) if flip else c)(padded[:, dy:dy + 32, dx:dx + 32]))]
            assert len(matches) == 1
            offsets.add(matches[0][:2])
            flips.append(matches[0][2])
    assert 0.35 < sum(flips) / len(flips) < 0.65
    assert len(offsets) > 40  # of 81: offsets are drawn per sample


# --- subset, synthetic, options -------------------------------------------------------


def test_train_subset_keeps_the_first_samples(tmp_path):
    written = write_mnist(tmp_path, "mnist")
    d = build_data(DataSpec("mnist", root=str(tmp_path), batch_size=4, train_subset=10), seed=0)
    assert (d.train.num_samples, len(d.train), d.eval.num_samples) == (10, 3, 30)
    expected = [(normalised(written["train_x"][:10].unsqueeze(1), "mnist"), written["train_y"][:10].long())]
    assert samples(epoch(d.train, 0)) == samples(expected)


def test_holdout_evaluates_on_the_last_training_samples_instead_of_the_test_split(tmp_path):
    written = write_mnist(tmp_path, "mnist")  # 70 training samples, 30 test samples
    d = build_data(DataSpec("mnist", root=str(tmp_path), batch_size=4, holdout=20, train_subset=10), seed=0)
    assert (d.train.num_samples, d.eval.num_samples) == (10, 20)
    train_x, train_y = written["train_x"].unsqueeze(1), written["train_y"].long()
    assert samples(epoch(d.train, 0)) == samples([(normalised(train_x[:10], "mnist"), train_y[:10])])
    assert_same_batches(epoch(d.eval, 0), [(normalised(train_x[50:], "mnist"), train_y[50:])])


def test_holdout_of_synthetic_data_comes_out_of_its_training_samples():
    d = build_data(DataSpec("synthetic", synthetic_train_size=100, holdout=30), seed=0)
    whole = build_data(DataSpec("synthetic", synthetic_train_size=100), seed=0)
    assert (d.train.num_samples, d.eval.num_samples) == (70, 30)
    assert samples(epoch(d.train, 0)) + samples(epoch(d.eval, 0)) == samples(epoch(whole.train, 0))


def test_a_holdout_that_leaves_no_training_samples_is_a_data_error(tmp_path):
    write_mnist(tmp_path, "mnist")
    with pytest.raises(DataError, match="data.holdout 70 leaves no training samples: mnist has 70; hold out fewer"):
        build_data(DataSpec("mnist", root=str(tmp_path), holdout=70), seed=0)


def test_synthetic_data_is_shaped_as_asked_and_reproducible_by_seed():
    spec = DataSpec("synthetic", synthetic_shape=[3, 8, 8], synthetic_classes=5, synthetic_train_size=100,
                    synthetic_eval_size=30, batch_size=32, eval_batch_size=64)
    d = build_data(spec, seed=1)
    assert (d.num_classes, d.input_shape, len(d.train), len(d.eval)) == (5, (3, 8, 8), 4, 1)
    x, y = next(d.train.batches(0))
    assert (x.dtype, x.shape, y.dtype) == (torch.float32, (32, 3, 8, 8), torch.int64)
    assert set(torch.cat([y for _, y in epoch(d.train, 0)]).tolist()) == set(range(5))
    assert_same_batches(epoch(d.train, 0), epoch(build_data(spec, seed=1).train, 0))
    assert not torch.equal(next(d.eval.batches(0))[0], next(build_data(spec, seed=2).eval.batches(0))[0])


def test_synthetic_labels_are_learnable():
    d = build_data(DataSpec("synthetic", synthetic_train_size=512, batch_size=64), seed=0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def eval_loss() -> float:
        with torch.no_grad():
            return sum(nn.functional.cross_entropy(model(x), y, reduction="sum").item()
                       for x, y in d.eval.batches(0)) / d.eval.num_samples

    before = eval_loss()
    for x, y in d.train.batches(0):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert eval_loss() < 0.5 * before  # one epoch, and it carries over to the evaluation split


def test_import_and_synthetic_data_work_without_torchvision():
    code = (
        "import sys; sys.modules['torchvision'] = None\n"
        "from xnortrain.train.data import DataSpec, build_data\n"
        "print(len(build_data(DataSpec('synthetic'), seed=0).train))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "4"


@pytest.mark.parametrize("options, key", [
    ({"name": "svhn"}, "unknown data set 'svhn': choose one of cifar10, cifar100, mnist, fashion_mnist, imagenet"),
    ({"name": "mnist", "train_subset": 0}, "data.train_subset must be at least 1"),
    ({"name": "mnist", "holdout": 0}, "data.holdout must be at least 1"),
    ({"name": "imagenet", "holdout": 100}, "data.holdout is not supported for imagenet"),
    ({"name": "mnist", "batch_size": 0}, "data.batch_size must be at least 1"),
    ({"name": "mnist", "workers": -1}, "data.workers must be at least 0"),
    ({"name": "synthetic", "synthetic_shape": (1, 0, 4)}, "data.synthetic_shape"),
])
def test_bad_options_are_config_errors(options, key):
    with pytest.raises(ConfigError, match=key):
        DataSpec(**options)


# --- missing data ---------------------------------------------------------------------


@pytest.mark.parametrize("name, layout, fix", [
    ("mnist", "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte", "set data.download: true"),
    ("fashion_mnist", "FashionMNIST/raw/", "apt-get install dataset-fashion-mnist"),
    ("cifar10", "cifar-10-batches-py/{data_batch_1,", "set data.download: true"),
    ("cifar100", "cifar-100-python/{train,test,meta}", "set data.download: true"),
    ("imagenet", "/train/<class>/*.JPEG and ", "image-net.org"),
])
def test_missing_data_is_one_line_naming_the_path_and_the_fix(tmp_path, monkeypatch, name, layout, fix):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian-copy")
    with pytest.raises(DataError) as caught:
        build_data(DataSpec(name, root=str(tmp_path / "nowhere")), seed=0)
    message = str(caught.value)
    assert "\n" not in message
    assert f"{tmp_path / 'nowhere'}" in message and layout in message and fix in message


@pytest.mark.parametrize("name, dataset_class", [("mnist", "MNIST"), ("cifar10", "CIFAR10")])
def test_a_failed_download_is_a_data_error(tmp_path, monkeypatch, name, dataset_class):
    def offline(self):
        raise URLError("no network")

    monkeypatch.setattr(getattr(torchvision.datasets, dataset_class), "download", offline)
    with pytest.raises(DataError, match=f"{name} could not be downloaded .*no network.* in {tmp_path}"):
        build_data(DataSpec(name, root=str(tmp_path), download=True), seed=0)


# --- ImageNet layout ------------------------------------------------------------------


def test_imagenet_folders_give_seeded_resumable_batches(tmp_path):
    write_image_folders(tmp_path)
    spec = DataSpec("imagenet", root=str(tmp_path), batch_size=4, eval_batch_size=4)
    d = build_data(spec, seed=0)
    assert (d.num_classes, d.input_shape, len(d.train), len(d.eval)) == (2, (3, 224, 224), 2, 2)
    state = torch.get_rng_state()
    full = epoch(d.train, 1)
    assert torch.equal(torch.get_rng_state(), state)
    x, y = full[0]
    assert (x.dtype, x.shape, y.dtype) == (torch.float32, (4, 3, 224, 224), torch.int64)
    assert_same_batches(epoch(d.train, 1, start=1), full[1:])
    assert_same_batches(epoch(build_data(spec, seed=0).train, 1), full)
    assert torch.cat([y for _, y in epoch(d.eval, 0)]).tolist() == [0, 0, 0, 1, 1, 1]


def test_imagenet_batches_do_not_depend_on_the_number_of_workers(tmp_path):
    write_image_folders(tmp_path)
    spec = DataSpec("imagenet", root=str(tmp_path), batch_size=4)
    in_process = epoch(build_data(spec, seed=0).train, 0)
    with_workers = epoch(build_data(DataSpec("imagenet", root=str(tmp_path), batch_size=4, workers=2), seed=0).train, 0)
    assert_same_batches(with_workers, in_process)


def test_shards_split_each_epoch_like_distributed_sampler():
    labels = torch.arange(10)  # the label is the sample index
    whole = data._TensorBatches(torch.zeros(10, 1, 2, 2), labels, batch_size=6, prepare=lambda x, g: x, seed=3)
    shards = [whole.shard(rank, 3) for rank in range(3)]
    assert [len(s) for s in shards] == [1, 1, 1]  # ceil(10 / 3) = 4 samples each, batch 6
    seen = [y for s in shards for _, y in s.batches(epoch=1)]
    order = torch.randperm(10, generator=data._generator("order", 3, 1))
    padded = torch.cat([order, order[:2]])  # 12 = 3 x 4, wrapping around like DistributedSampler
    assert [t.tolist() for t in seen] == [padded[r::3].tolist() for r in range(3)]
    assert set(torch.cat(seen).tolist()) == set(range(10))
    assert len(whole) == 2 and whole.rank == 0  # sharding copies: the whole split is untouched


def test_indexed_batches_name_the_samples_of_each_batch_in_memory_and_from_folders(tmp_path, monkeypatch):
    write_cifar(tmp_path / "cifar", "cifar10", monkeypatch)
    write_image_folders(tmp_path / "imagenet")
    cifar = build_data(DataSpec("cifar10", root=str(tmp_path / "cifar"), batch_size=16, augment=False), seed=5).train
    for split in (cifar, cifar.shard(1, 2)):
        for e, start in ((0, 0), (2, 1)):
            batches = list(split.indexed_batches(e, start=start))
            assert_same_batches([(x, y) for _, x, y in batches], epoch(split, e, start))
            for index, x, y in batches:
                assert torch.equal(x, cifar.prepare(cifar.inputs[index], None)) and torch.equal(y, cifar.labels[index])
    folders = build_data(DataSpec("imagenet", root=str(tmp_path / "imagenet"), batch_size=4, augment=False), seed=0)
    unshuffled = list(folders.train.in_order().indexed_batches(0))
    assert torch.cat([index for index, _, _ in unshuffled]).tolist() == list(range(folders.train.num_samples))
    for (index, x, y), (x_seen, y_seen) in zip(folders.train.indexed_batches(1), epoch(folders.train, 1)):
        assert torch.equal(x, x_seen) and torch.equal(y, y_seen)
        assert y.tolist() == [folders.train.dataset[i][1] for i in index.tolist()]


def test_only_splits_without_random_augmentation_have_fixed_inputs(tmp_path, monkeypatch):
    write_cifar(tmp_path, "cifar10", monkeypatch)
    augmented, plain = (build_data(DataSpec("cifar10", root=str(tmp_path), augment=a), seed=0) for a in (True, False))
    assert (augmented.train.fixed_inputs, augmented.eval.fixed_inputs, plain.train.fixed_inputs) == (False, True, True)
    assert build_data(DataSpec("synthetic"), seed=0).train.fixed_inputs
    write_image_folders(tmp_path / "imagenet")
    assert not build_data(DataSpec("imagenet", root=str(tmp_path / "imagenet"), augment=False), seed=0).train.fixed_inputs
    shard = plain.train.shard(1, 3)
    whole = shard.in_order()
    assert (whole.seed, whole.world, whole.num_samples) == (None, 1, plain.train.num_samples)
    assert torch.cat([index for index, _, _ in whole.indexed_batches(4)]).tolist() == list(range(whole.num_samples))


def test_unpadded_shards_split_the_evaluation_set_exactly():
    labels = torch.arange(10)
    whole = data._TensorBatches(torch.zeros(10, 1, 2, 2), labels, batch_size=2, prepare=lambda x, g: x, seed=None)
    shards = [whole.shard(rank, 4, pad=False) for rank in range(4)]
    assert [len(s) for s in shards] == [2, 2, 1, 1]  # 3, 3, 2 and 2 samples, batch 2
    seen = [torch.cat([y for _, y in s.batches(epoch=0)]).tolist() for s in shards]
    assert seen == [list(range(rank, 10, 4)) for rank in range(4)]  # every sample once, none repeated
