"""The user's own data: an image folder, an ``.npz`` file or a ``.csv`` file.

- ``folder``: ``data.root/<class>/<image>`` read through torchvision's ``ImageFolder``
  (classes = sorted subfolder names); with ``data.root/train/`` and ``data.root/test/``
  those are the splits, otherwise the images are split by ``data.test_fraction``. Images
  become (C, H, W): C = 1 when all are greyscale, else 3 (RGB). All must have one size, or
  ``data.image_size`` resizes them to a square. Normalised per channel with the mean and std
  of the training split: ``(x / 255 - mean_c) / std_c``.
- ``npz``: ``data.path`` holds ``x_train`` (n, ...) numeric and ``y_train`` (n,) integer
  class ids ``>= 0``, optionally ``x_test`` / ``y_test``; read with ``allow_pickle=False``.
- ``csv``: ``data.path`` with a header row; ``data.label_column`` holds the labels, every
  other column is a numeric feature. Labels that are all non-negative integers are the class
  ids; otherwise the distinct labels, sorted as strings, become ids 0..K-1.

npz and csv features are used as stored (float32), like ``synthetic``: standardise them
beforehand if their scales differ. n_classes is the largest class id + 1 (npz, integer
CSV labels) or the number of classes found.
"""

from __future__ import annotations

import csv
import re
import zipfile
from pathlib import Path

import numpy as np

from fine_cli.config import DataConfig
from fine_cli.data.raw import RawData, split_raw, stratified_split
from fine_cli.errors import ConfigError, InputFileError

GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")
# Images summed at a time for the training-split statistics (bounded float64 memory).
STATS_CHUNK = 1024
_INTEGER = re.compile(r"^\+?\d+$")


# ---------------------------------------------------------------- image folder


def _scan(folder: Path) -> tuple[list[tuple[str, int]], list[str]]:
    """(path, class id) per image, and the class names, as ImageFolder finds them."""
    from torchvision.datasets import ImageFolder

    try:
        found = ImageFolder(str(folder))
    except (FileNotFoundError, OSError) as err:
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise InputFileError(
            f"image folder '{folder}' holds no images in class subfolders ({detail}); "
            "arrange them as <data.root>/<class>/<image>.png."
        ) from err
    return list(found.samples), list(found.classes)


def _read_image(path: str, image_size: int | None) -> np.ndarray:
    """One image file -> (H, W, C) uint8, C = 1 (greyscale) or 3 (RGB)."""
    from PIL import Image

    try:
        with Image.open(path) as opened:
            img = opened.convert("L" if opened.mode in GREY_MODES else "RGB")
        if image_size is not None:
            img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
        pixels = np.asarray(img, dtype=np.uint8)
    except OSError as err:  # PIL's UnidentifiedImageError is an OSError
        raise InputFileError(
            f"image '{path}' could not be read ({type(err).__name__}); replace or remove it."
        ) from err
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def _read_images(
    samples: list[tuple[str, int]], image_size: int | None, ref: tuple[str, tuple[int, int]]
) -> tuple[np.ndarray, tuple[str, tuple[int, int]]]:
    """Stack the images into (n, H, W, C) uint8; every (H, W) must equal ref's (or the first)."""
    images = []
    for path, _ in samples:
        img = _read_image(path, image_size)
        size = (img.shape[0], img.shape[1])
        if not ref[0]:
            ref = (path, size)
        if size != ref[1]:
            raise InputFileError(
                f"images differ in size ('{ref[0]}' is {ref[1][1]}x{ref[1][0]}, '{path}' is "
                f"{size[1]}x{size[0]}); set data.image_size to resize them all to one size."
            )
        images.append(img)
    return _same_channels(images), ref


def _same_channels(images: list[np.ndarray]) -> np.ndarray:
    """[(H, W, C)] -> (n, H, W, C); greyscale images become RGB when any image is in colour."""
    if any(img.shape[2] == 3 for img in images):
        images = [_as_rgb(img) for img in images]
    return np.stack(images)


def _as_rgb(x: np.ndarray) -> np.ndarray:
    """(..., C) with C = 1 or 3 -> (..., 3)."""
    return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


def _channel_stats(x: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, H, W, C) uint8, (m,) rows -> per-channel mean and std of x[rows] / 255, (C,) each."""
    total = np.zeros(x.shape[3])
    squares = np.zeros(x.shape[3])
    for start in range(0, rows.size, STATS_CHUNK):
        chunk = x[rows[start : start + STATS_CHUNK]].astype(np.float64) / 255.0
        total += chunk.sum(axis=(0, 1, 2))
        squares += (chunk**2).sum(axis=(0, 1, 2))
    count = rows.size * x.shape[1] * x.shape[2]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    # A constant channel carries no information; dividing by 1 keeps it finite.
    std[std < 1e-6] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


class _ImageNormaliser:
    """(k, H, W, C) uint8 -> (k, C, H, W) float32, (x / 255 - mean_c) / std_c, with the
    statistics of the training rows ``rows`` of ``x``."""

    def __init__(self, x: np.ndarray, rows: np.ndarray) -> None:
        mean, std = _channel_stats(x, rows)
        self.mean = mean.reshape(1, -1, 1, 1)
        self.std = std.reshape(1, -1, 1, 1)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        chw = x.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        return np.ascontiguousarray((chw - self.mean) / self.std, dtype=np.float32)


def _check_classes(root: Path, classes: list[str]) -> None:
    if len(classes) < 2:
        raise InputFileError(
            f"image folder '{root}' has {len(classes)} class subfolder(s) {classes}; a "
            "classifier needs at least 2, one subfolder per class."
        )


def load_folder(cfg: DataConfig) -> RawData:
    """Images under ``data.root`` (see the module docstring)."""
    root = Path(cfg.root)
    if not root.is_dir():
        raise InputFileError(
            f"data.root='{cfg.root}' is not a directory; point it at a folder of images "
            "arranged as <data.root>/<class>/<image>.png."
        )
    train_dir, test_dir = root / "train", root / "test"
    if train_dir.is_dir() != test_dir.is_dir():
        have, lack = ("train", "test") if train_dir.is_dir() else ("test", "train")
        raise InputFileError(
            f"image folder '{root}' has a {have}/ but no {lack}/ subfolder; add {lack}/ with "
            "the same class subfolders, or move the class folders up into data.root."
        )
    if not train_dir.is_dir():
        samples, classes = _scan(root)
        _check_classes(root, classes)
        x, _ = _read_images(samples, cfg.image_size, ("", (0, 0)))
        y = np.asarray([c for _, c in samples], dtype=np.int64)
        # split_raw draws this same split again; the statistics need it first.
        train_rows, _ = stratified_split(y, cfg.test_fraction, cfg.subset_seed)
        prepare = _ImageNormaliser(x, train_rows)
        return split_raw(f"'{root}'", x, y, len(classes), cfg, prepare, tuple(classes))

    train_samples, classes = _scan(train_dir)
    _check_classes(train_dir, classes)
    test_samples, test_classes = _scan(test_dir)
    unknown = sorted(set(test_classes) - set(classes))
    if unknown:
        raise InputFileError(
            f"'{test_dir}' has classes {unknown} that '{train_dir}' lacks; give train/ and "
            "test/ the same class subfolders."
        )
    # test/ may lack classes, so its ids are remapped to train/'s by name.
    test_ids = np.asarray([classes.index(name) for name in test_classes], dtype=np.int64)
    x_train, ref = _read_images(train_samples, cfg.image_size, ("", (0, 0)))
    x_test, _ = _read_images(test_samples, cfg.image_size, ref)
    if x_test.shape[3] != x_train.shape[3]:  # one split greyscale, the other in colour
        x_train, x_test = (_as_rgb(x_train), _as_rgb(x_test))
    return RawData(
        x_train=x_train,
        y_train=np.asarray([c for _, c in train_samples], dtype=np.int64),
        x_test=x_test,
        y_test=test_ids[np.asarray([c for _, c in test_samples], dtype=np.int64)],
        n_classes=len(classes),
        prepare=_ImageNormaliser(x_train, np.arange(x_train.shape[0])),
        class_names=tuple(classes),
    )


# ---------------------------------------------------------------- npz and csv


def _prepare_features(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def _data_file(cfg: DataConfig) -> Path:
    path = Path(str(cfg.path))
    if not path.is_file():
        raise InputFileError(
            f"data.path='{cfg.path}' does not exist; give the path of your "
            f".{cfg.dataset} file (relative paths start from the current directory)."
        )
    return path


def _class_ids(y: np.ndarray, what: str) -> np.ndarray:
    """Integral labels >= 0 -> int64; anything else is an InputFileError."""
    is_number = np.issubdtype(y.dtype, np.number) or y.dtype == np.bool_
    if y.ndim != 1 or not is_number:
        raise InputFileError(
            f"{what} must be a one-dimensional array of integer class ids; got shape "
            f"{y.shape} of dtype {y.dtype}; store labels as integers 0..K-1."
        )
    if y.size and (not np.all(np.isfinite(y)) or np.any(y != np.round(y)) or y.min() < 0):
        raise InputFileError(
            f"{what} must hold integer class ids >= 0; found values in [{y.min()}, {y.max()}] "
            "that are not; map the labels to 0..K-1."
        )
    return y.astype(np.int64)


def _features(x: np.ndarray, what: str) -> np.ndarray:
    is_number = np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_
    if not is_number or np.issubdtype(x.dtype, np.complexfloating):
        raise InputFileError(
            f"{what} has dtype {x.dtype}, not a real number type; store the features as "
            "numbers (e.g. x.astype(np.float32))."
        )
    if x.ndim < 2:
        raise InputFileError(
            f"{what} has shape {x.shape}; it needs one row per point, shape (n, ...), e.g. "
            "x.reshape(-1, 1) for a single feature."
        )
    if not np.all(np.isfinite(x)):
        raise InputFileError(f"{what} holds NaN or infinite values; replace or drop them.")
    return x


def _npz_array(npz: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    try:
        return np.asarray(npz[key])
    except ValueError as err:  # numpy refuses object arrays when allow_pickle=False
        if "allow_pickle" in str(err) or "Object arrays" in str(err):
            raise InputFileError(
                f"array '{key}' of '{path}' holds pickled Python objects, which are never "
                "loaded (they can run code); save it as a numeric array instead."
            ) from err
        raise InputFileError(f"array '{key}' of '{path}' could not be read ({err}).") from err


def _check_pair(x: np.ndarray, y: np.ndarray, split: str, path: Path) -> None:
    if x.shape[0] != y.shape[0]:
        raise InputFileError(
            f"'{path}' has {x.shape[0]} rows in x_{split} but {y.shape[0]} labels in "
            f"y_{split}; give every point exactly one label."
        )


def _n_classes(name: str, *ys: np.ndarray) -> int:
    n = int(max(int(y.max()) for y in ys if y.size) + 1) if any(y.size for y in ys) else 0
    if n < 2:
        raise InputFileError(
            f"{name} has {n} class(es); a classifier needs labels of at least 2 classes."
        )
    return n


def load_npz(cfg: DataConfig) -> RawData:
    """Arrays x_train, y_train[, x_test, y_test] from ``data.path``."""
    path = _data_file(cfg)
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise InputFileError(
            f"data.path='{path}' is not a readable .npz file ({type(err).__name__}); save it "
            "with np.savez(path, x_train=..., y_train=...)."
        ) from err
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise InputFileError(
            f"data.path='{path}' holds a single array, not named arrays; save it with "
            "np.savez(path, x_train=..., y_train=...)."
        )
    with npz:
        keys = set(npz.files)
        wanted = {"x_train", "y_train"}
        if keys & {"x_test", "y_test"}:
            wanted |= {"x_test", "y_test"}
        missing = sorted(wanted - keys)
        if missing:
            raise InputFileError(
                f"'{path}' lacks the arrays {missing} (it has {sorted(keys)}); save x_train "
                "and y_train, and x_test with y_test or neither."
            )
        arrays = {key: _npz_array(npz, key, path) for key in sorted(wanted)}
    x = _features(arrays["x_train"], f"x_train of '{path}'")
    y = _class_ids(arrays["y_train"], f"y_train of '{path}'")
    _check_pair(x, y, "train", path)
    name = f"'{path}'"
    if "x_test" not in arrays:
        return split_raw(name, x, y, _n_classes(name, y), cfg, _prepare_features)
    x_test = _features(arrays["x_test"], f"x_test of '{path}'")
    y_test = _class_ids(arrays["y_test"], f"y_test of '{path}'")
    _check_pair(x_test, y_test, "test", path)
    if x_test.shape[1:] != x.shape[1:]:
        raise InputFileError(
            f"'{path}' has points of shape {x.shape[1:]} in x_train but {x_test.shape[1:]} in "
            "x_test; give both splits the same shape."
        )
    if x.shape[0] < 2 or x_test.shape[0] < 1:
        raise InputFileError(
            f"'{path}' has {x.shape[0]} training and {x_test.shape[0]} test points; give at "
            "least 2 and 1."
        )
    return RawData(
        x_train=x,
        y_train=y,
        x_test=x_test,
        y_test=y_test,
        n_classes=_n_classes(name, y, y_test),
        prepare=_prepare_features,
    )


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = [row for row in csv.reader(f) if row]
    except (UnicodeDecodeError, csv.Error) as err:
        raise InputFileError(
            f"data.path='{path}' is not a readable UTF-8 CSV file ({err}); save it as CSV."
        ) from err
    if len(rows) < 2:
        raise InputFileError(
            f"'{path}' has no data rows; it needs a header row and one row per point."
        )
    header = [name.strip() for name in rows[0]]
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise InputFileError(
                f"line {line} of '{path}' has {len(row)} fields but the header has "
                f"{len(header)}; give every row one value per column."
            )
    return header, rows[1:]


def _numeric_column(values: np.ndarray, name: str, path: Path) -> np.ndarray:
    try:
        return values.astype(np.float64)
    except ValueError:
        for line, value in enumerate(values, start=2):
            try:
                float(value)
            except ValueError:
                raise InputFileError(
                    f"column '{name}' of '{path}' is not numeric (line {line} holds "
                    f"{str(value)!r}); encode it as numbers or drop the column."
                ) from None
        raise


def _csv_labels(labels: list[str]) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """Class ids (n,) int64, and the class names when the labels are not integers."""
    if all(_INTEGER.match(label) for label in labels):
        return np.asarray([int(label) for label in labels], dtype=np.int64), None
    names = tuple(sorted(set(labels)))
    ids = {name: i for i, name in enumerate(names)}
    return np.asarray([ids[label] for label in labels], dtype=np.int64), names


def load_csv(cfg: DataConfig) -> RawData:
    """Numeric feature columns and ``data.label_column`` from ``data.path``."""
    path = _data_file(cfg)
    header, rows = _read_csv(path)
    if cfg.label_column not in header:
        raise ConfigError(
            f"data.label_column='{cfg.label_column}' is not a column of '{path}', whose "
            f"columns are {header}; set data.label_column to the one holding the labels."
        )
    if len(header) < 2:
        raise InputFileError(
            f"'{path}' has only the label column; it needs at least one feature column."
        )
    table = np.asarray(rows, dtype=str)  # (n, n_columns)
    label_at = header.index(cfg.label_column)
    columns = [
        _numeric_column(np.char.strip(table[:, j]), name, path)
        for j, name in enumerate(header)
        if j != label_at
    ]
    x = _features(np.stack(columns, axis=1), f"the features of '{path}'")
    y, class_names = _csv_labels([label.strip() for label in table[:, label_at]])
    name = f"'{path}'"
    n_classes = len(class_names) if class_names is not None else _n_classes(name, y)
    if n_classes < 2:
        raise InputFileError(f"{name} has labels of 1 class; a classifier needs at least 2.")
    return split_raw(name, x, y, n_classes, cfg, _prepare_features, class_names=class_names)
