"""The user's own models (factories, files, torchvision), data (folder, npz, csv),
augmentations and learning-rate schedules, through the real config and loaders; every
fixture file is written by the test itself."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fine_cli.augment import build_augment
from fine_cli.config import DataConfig, ModelConfig, TrainConfig, config_from_dict, config_to_dict
from fine_cli.data import load_data
from fine_cli.errors import ConfigError, InputFileError
from fine_cli.models import build_model
from fine_cli.schedules import lr_at, set_lr

# float32 normalisation of a few hundred pixels: mean 0 / std 1 up to rounding.
STATS_ATOL = 1e-4
LR_RTOL = 1e-12

FACTORY_SOURCE = """
from torch import nn


def make(input_shape, n_classes, width=4):
    n_in = 1
    for d in input_shape:
        n_in *= d
    layers = [nn.Flatten(), nn.Linear(n_in, width), nn.ReLU(), nn.Linear(width, n_classes)]
    return nn.Sequential(*layers)


def boom(input_shape, n_classes):
    raise ZeroDivisionError("width must not be zero")


def not_a_model(input_shape, n_classes):
    return [1, 2, 3]


def fixed(input_shape, n_classes):
    return nn.Linear(4, 2)


NOT_CALLABLE = 3
"""


def _write_module(folder: Path, name: str, source: str = FACTORY_SOURCE) -> Path:
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return path


def _config_error(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    return str(info.value)


# ---------------------------------------------------------------- models


def test_factory_in_a_file_builds_seeded(tmp_path: Path) -> None:
    path = _write_module(tmp_path, "my_model")
    cfg = ModelConfig(arch=f"{path}:make", kwargs={"width": 6})
    model = build_model(cfg, (2, 3), n_classes=5, seed=1)
    assert model(torch.randn(7, 2, 3)).shape == (7, 5)
    assert model[1].out_features == 6  # model.kwargs reached the factory
    again = build_model(cfg, (2, 3), n_classes=5, seed=1)
    other = build_model(cfg, (2, 3), n_classes=5, seed=2)
    assert torch.equal(model[1].weight, again[1].weight)
    assert not torch.equal(model[1].weight, other[1].weight)


def test_relative_model_file_is_found_from_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "models").mkdir()
    _write_module(tmp_path / "models", "net")
    monkeypatch.chdir(tmp_path)
    model = build_model(ModelConfig(arch="models/net.py:make"), (4,), n_classes=3, seed=0)
    assert model(torch.randn(2, 4)).shape == (2, 3)


def test_factory_as_import_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_module(tmp_path, "fine_test_user_models")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = config_from_dict({"model": {"arch": "fine_test_user_models:make"}}).model
    model = build_model(cfg, (1, 4, 4), n_classes=3, seed=0)
    assert model(torch.randn(5, 1, 4, 4)).shape == (5, 3)


def test_torchvision_resnet18_builds() -> None:
    cfg = config_from_dict({"model": {"arch": "torchvision:resnet18"}}).model
    model = build_model(cfg, (3, 32, 32), n_classes=4, seed=0)
    assert model.fc.out_features == 4
    model.eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)


@pytest.mark.parametrize(
    ("arch", "match"),
    [
        ("no_such_module_xyz.sub:make", r"'no_such_module_xyz.sub' does not import.*ModuleNot"),
        ("{dir}/my_model.py:missing", r"no attribute 'missing'"),
        ("{dir}/my_model.py:NOT_CALLABLE", r"not a callable"),
        ("{dir}/nowhere.py:make", r"nowhere.py' does not exist"),
        ("{dir}/my_model.py:boom", r"factory raised ZeroDivisionError: width must not be zero"),
        ("{dir}/my_model.py:not_a_model", r"returned a list, not a torch.nn.Module"),
        ("{dir}/broken.py:make", r"running model file .* failed \(NameError"),
    ],
)
def test_bad_factories_are_config_errors(tmp_path: Path, arch: str, match: str) -> None:
    _write_module(tmp_path, "my_model")
    _write_module(tmp_path, "broken", "undefined_name + 1\n")
    cfg = ModelConfig(arch=arch.format(dir=tmp_path))
    with pytest.raises(ConfigError, match=match):
        build_model(cfg, (4,), n_classes=3, seed=0)


@pytest.mark.parametrize(
    ("model", "match"),
    [
        ({"arch": "transformer"}, r"model.arch='transformer' is neither a built-in"),
        ({"arch": "torchvision:resnet99"}, r"torchvision has no classification model 'resnet99'"),
        ({"arch": "pkg.mod:not-a-name"}, r"'not-a-name' is not a Python name"),
        ({"arch": "bad path/x:make"}, r"neither a module path"),
        ({"arch": "mlp", "kwargs": {"width": 3}}, r"model.kwargs is only for factories"),
    ],
)
def test_bad_arch_fails_at_config_load(model: dict[str, Any], match: str) -> None:
    assert "model" in _config_error({"model": model})
    with pytest.raises(ConfigError, match=match):
        config_from_dict({"model": model})


def test_factory_models_are_checked_against_the_data(tmp_path: Path) -> None:
    cfg = ModelConfig(arch=f"{_write_module(tmp_path, 'my_model')}:fixed")
    with pytest.raises(ConfigError, match=r"cannot take inputs of shape \(3, 5\)"):
        build_model(cfg, (3, 5), 2, seed=0)
    with pytest.raises(ConfigError, match=r"gives outputs of shape \(2,\) .* not \(3,\)"):
        build_model(cfg, (4,), 3, seed=0)
    tv = ModelConfig(arch="torchvision:resnet18")
    with pytest.raises(ConfigError, match="cannot take inputs"):
        build_model(tv, (1, 8, 8), 3, seed=0)  # resnet18's stem wants 3 channels


# ---------------------------------------------------------------- npz


def _npz(path: Path, **arrays: Any) -> Path:
    np.savez(path, **arrays)
    return path


def test_npz_with_test_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = _npz(
        tmp_path / "d.npz",
        x_train=rng.standard_normal((40, 2, 3)),
        y_train=np.arange(40) % 4,
        x_test=rng.standard_normal((10, 2, 3)).astype(np.float32),
        y_test=np.arange(10) % 4,
    )
    cfg = DataConfig(dataset="npz", path=str(path), label_noise=0.25, n_train=20, n_test=5)
    data = load_data(cfg)
    assert data.input_shape == (2, 3) and data.n_classes == 4
    assert len(data.train) == 20 and len(data.test) == 5
    assert data.train.x.dtype == torch.float32
    assert data.flip_mask.sum() == 5  # 25% of 20
    flipped = data.flip_mask
    assert np.all(data.train.y.numpy()[flipped] != data.clean_train_y.numpy()[flipped])
    with np.load(path) as f:
        np.testing.assert_allclose(data.train.x.numpy(), f["x_train"][data.train.index], rtol=1e-6)
        np.testing.assert_array_equal(data.clean_train_y.numpy(), f["y_train"][data.train.index])
        np.testing.assert_array_equal(data.test.y.numpy(), f["y_test"][data.test.index])


def test_npz_without_test_arrays_is_split(tmp_path: Path) -> None:
    path = _npz(tmp_path / "d.npz", x_train=np.ones((50, 3)), y_train=np.arange(50) % 2)
    data = load_data(DataConfig(dataset="npz", path=str(path), test_fraction=0.2))
    assert len(data.train) == 40 and len(data.test) == 10 and data.n_classes == 2
    both = np.sort(np.concatenate([data.train.index, data.test.index]))
    np.testing.assert_array_equal(both, np.arange(50))


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"x_train": np.ones((4, 2))}, r"lacks the arrays \['y_train'\] \(it has \['x_train'\]\)"),
        (
            {"x_train": np.ones((4, 2)), "y_train": [0, 1], "x_test": np.ones((2, 2))},
            r"lacks the arrays \['y_test'\]",
        ),
        ({"x_train": np.ones((4, 2)), "y_train": [0, 1, 0]}, r"4 rows in x_train but 3 labels"),
        ({"x_train": np.full((4, 2), "a"), "y_train": [0, 1, 0, 1]}, r"not a real number type"),
        ({"x_train": np.ones((4, 2)), "y_train": ["a", "b", "a", "b"]}, r"integer class ids"),
        ({"x_train": np.ones((4, 2)), "y_train": [0.5, 1, 0, 1]}, r"integer class ids >= 0"),
        (
            {"x_train": np.array([{"a": 1}] * 4, dtype=object), "y_train": [0, 1, 0, 1]},
            r"pickled Python objects",
        ),
    ],
)
def test_bad_npz_files_are_input_file_errors(
    tmp_path: Path, arrays: dict[str, Any], match: str
) -> None:
    path = _npz(tmp_path / "d.npz", **arrays)
    with pytest.raises(InputFileError, match=match):
        load_data(DataConfig(dataset="npz", path=str(path)))


def test_missing_data_files(tmp_path: Path) -> None:
    for kind in ("npz", "csv"):
        with pytest.raises(InputFileError, match=r"data.path=.*nope.* does not exist"):
            load_data(DataConfig(dataset=kind, path=str(tmp_path / f"nope.{kind}")))
    assert "needs data.path" in _config_error({"data": {"dataset": "csv"}})


def test_not_an_npz_file(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    path.write_text("hello")
    with pytest.raises(InputFileError, match=r"not a readable \.npz"):
        load_data(DataConfig(dataset="npz", path=str(path)))


# ---------------------------------------------------------------- csv


def _csv(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def _iris_like(path: Path, n: int = 30) -> Path:
    names = ["setosa", "versicolor", "virginica"]
    rows = [f"{i * 0.5},{i % 7},{names[i % 3]}" for i in range(n)]
    return _csv(path, "\n".join(["length, width, species", *rows]) + "\n")


def test_csv_with_string_labels(tmp_path: Path) -> None:
    path = _iris_like(tmp_path / "iris.csv")
    cfg = DataConfig(
        dataset="csv", path=str(path), label_column="species", label_noise=0.2, test_fraction=0.2
    )
    data = load_data(cfg)
    assert data.input_shape == (2,) and data.n_classes == 3
    assert data.class_names == ("setosa", "versicolor", "virginica")
    assert len(data.train) == 24 and len(data.test) == 6
    assert data.flip_mask.sum() == round(0.2 * 24)
    # Row i: length i / 2, width i % 7, class i % 3 (sorted names give ids 0, 1, 2).
    rows = data.train.index
    np.testing.assert_allclose(data.train.x.numpy()[:, 0], rows * 0.5)
    np.testing.assert_allclose(data.train.x.numpy()[:, 1], rows % 7)
    np.testing.assert_array_equal(data.clean_train_y.numpy(), rows % 3)


def test_csv_with_integer_labels_keeps_them(tmp_path: Path) -> None:
    rows = [f"{i},{(i % 2) * 2}" for i in range(10)]  # classes 0 and 2
    path = _csv(tmp_path / "d.csv", "\n".join(["x,label", *rows]))
    data = load_data(DataConfig(dataset="csv", path=str(path), label_noise=0.0))
    assert data.n_classes == 3 and data.class_names is None
    np.testing.assert_array_equal(data.train.y.numpy(), (data.train.index % 2) * 2)


def test_csv_without_the_label_column_names_its_columns(tmp_path: Path) -> None:
    path = _iris_like(tmp_path / "iris.csv")
    with pytest.raises(ConfigError, match=r"\['length', 'width', 'species'\]"):
        load_data(DataConfig(dataset="csv", path=str(path)))


def test_csv_with_a_text_feature(tmp_path: Path) -> None:
    path = _csv(tmp_path / "d.csv", "a,b,label\n1,2,0\n3,x,1\n5,6,0\n7,8,1\n")
    with pytest.raises(InputFileError, match=r"column 'b' .* not numeric \(line 3 holds 'x'\)"):
        load_data(DataConfig(dataset="csv", path=str(path)))


def test_csv_with_ragged_rows(tmp_path: Path) -> None:
    path = _csv(tmp_path / "d.csv", "a,label\n1,0\n3\n")
    with pytest.raises(InputFileError, match="line 3"):
        load_data(DataConfig(dataset="csv", path=str(path)))


# ---------------------------------------------------------------- image folder


def _png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _image_folder(root: Path, per_class: int, size: int = 6, rgb: bool = True) -> None:
    rng = np.random.default_rng(1)
    shape = (size, size, 3) if rgb else (size, size)
    for cls in ("cat", "dog"):
        for i in range(per_class):
            _png(root / cls / f"{i}.png", rng.integers(0, 256, size=shape, dtype=np.uint8))


def test_folder_is_split_and_normalised_on_the_training_split(tmp_path: Path) -> None:
    _image_folder(tmp_path / "imgs", per_class=10)
    cfg = DataConfig(dataset="folder", root=str(tmp_path / "imgs"), label_noise=0.1)
    data = load_data(cfg)
    assert data.input_shape == (3, 6, 6) and data.n_classes == 2
    assert data.class_names == ("cat", "dog")
    assert len(data.train) == 16 and len(data.test) == 4
    assert data.flip_mask.sum() == 2
    # ImageFolder lists cat/0..9 then dog/0..9, so the position says the class.
    np.testing.assert_array_equal(data.clean_train_y.numpy(), data.train.index >= 10)
    x = data.train.x.numpy()
    np.testing.assert_allclose(x.mean(axis=(0, 2, 3)), 0.0, atol=STATS_ATOL)
    np.testing.assert_allclose(x.std(axis=(0, 2, 3)), 1.0, atol=STATS_ATOL)


def test_folder_with_train_and_test_subfolders(tmp_path: Path) -> None:
    _image_folder(tmp_path / "train", per_class=4, rgb=False)
    _png(tmp_path / "test" / "dog" / "a.png", np.zeros((6, 6), dtype=np.uint8))
    data = load_data(DataConfig(dataset="folder", root=str(tmp_path), label_noise=0.0))
    assert data.input_shape == (1, 6, 6)  # greyscale stays one channel
    assert len(data.train) == 8 and len(data.test) == 1
    assert data.test.y.tolist() == [1]  # test/ has only 'dog', still class 1 of train/


def test_folder_images_of_different_sizes(tmp_path: Path) -> None:
    _image_folder(tmp_path, per_class=3, size=6)
    _png(tmp_path / "dog" / "big.png", np.zeros((9, 7, 3), dtype=np.uint8))
    with pytest.raises(InputFileError, match=r"differ in size .* data.image_size"):
        load_data(DataConfig(dataset="folder", root=str(tmp_path)))
    data = load_data(DataConfig(dataset="folder", root=str(tmp_path), image_size=5))
    assert data.input_shape == (3, 5, 5) and len(data.train) + len(data.test) == 7


def test_folder_without_images_or_root(tmp_path: Path) -> None:
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(InputFileError, match="holds no images"):
        load_data(DataConfig(dataset="folder", root=str(tmp_path / "empty")))
    with pytest.raises(InputFileError, match="is not a directory"):
        load_data(DataConfig(dataset="folder", root=str(tmp_path / "missing")))


# ---------------------------------------------------------------- augment


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_augment_is_deterministic_per_generator_and_per_sample() -> None:
    aug = build_augment(["RandomHorizontalFlip", {"RandomCrop": {"size": 8, "padding": 2}}])
    assert aug is not None
    image = torch.arange(64, dtype=torch.float32).reshape(1, 8, 8)
    batch = image.expand(16, 1, 8, 8).clone()
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a, b, c = aug(batch, _gen(1)), aug(batch, _gen(1)), aug(batch, _gen(2))
    assert torch.equal(state, torch.get_rng_state())  # global RNG untouched
    assert a.shape == batch.shape
    assert torch.equal(a, b) and not torch.equal(a, c)
    distinct = {tuple(sample.flatten().tolist()) for sample in a}
    assert len(distinct) > 1  # identical inputs, independent draws


def test_augment_specs_are_checked() -> None:
    assert build_augment([]) is None
    with pytest.raises(ConfigError, match="'RandomFlop'"):
        build_augment(["RandomFlop"])
    with pytest.raises(ConfigError, match="'functional'"):
        build_augment(["functional"])
    with pytest.raises(ConfigError, match=r"RandomCrop does not accept .*'sz'"):
        build_augment([{"RandomCrop": {"sz": 3}}])
    with pytest.raises(ConfigError, match="one-key mapping"):
        build_augment([{"RandomCrop": {"size": 3}, "RandomHorizontalFlip": {}}])
    assert "RandomFlop" in _config_error({"train": {"augment": ["RandomFlop"]}})


def test_augment_refuses_inputs_it_cannot_keep_the_shape_of() -> None:
    crop = build_augment([{"RandomCrop": {"size": 4}}])
    assert crop is not None
    with pytest.raises(ConfigError, match=r"changes the input shape \(1, 8, 8\) to \(1, 4, 4\)"):
        crop(torch.zeros(2, 1, 8, 8), _gen(0))
    rotate = build_augment([{"RandomRotation": {"degrees": 10}}])
    assert rotate is not None
    with pytest.raises(ConfigError, match=r"RandomRotation failed on an input of shape \(5,\)"):
        rotate(torch.zeros(2, 5), _gen(0))


# ---------------------------------------------------------------- schedules


@pytest.mark.parametrize(
    ("train", "expected"),
    [
        ({"lr": 0.1}, [0.1, 0.1, 0.1, 0.1]),
        ({"lr": 0.1, "epochs": 4, "schedule": "cosine"}, [0.1, 0.085355339, 0.05, 0.014644661]),
        (
            {"lr": 0.1, "epochs": 4, "schedule": "step", "step_size": 2, "gamma": 0.5},
            [0.1, 0.1, 0.05, 0.05],
        ),
    ],
)
def test_lr_at_hand_computed(train: dict[str, Any], expected: list[float]) -> None:
    cfg = TrainConfig(**train)
    got = [lr_at(cfg, epoch) for epoch in range(4)]
    np.testing.assert_allclose(got, expected, rtol=1e-8)
    assert math.isclose(lr_at(cfg, 0), cfg.lr, rel_tol=LR_RTOL)


def test_step_schedule_defaults_and_set_lr() -> None:
    cfg = TrainConfig(lr=1.0, schedule="step")  # step_size 30, gamma 0.1
    assert [lr_at(cfg, e) for e in (0, 29, 30, 60)] == pytest.approx([1.0, 1.0, 0.1, 0.01])
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    set_lr(opt, 0.25)
    assert [g["lr"] for g in opt.param_groups] == [0.25]
    with pytest.raises(ValueError, match="epoch"):
        lr_at(cfg, -1)


def test_new_keys_survive_the_resolved_config(tmp_path: Path) -> None:
    raw = {
        "data": {"dataset": "csv", "path": "d.csv", "label_column": "y"},
        "model": {"arch": "torchvision:resnet18", "kwargs": {"zero_init_residual": True}},
        "train": {"schedule": "cosine", "augment": [{"RandomCrop": {"size": 8, "padding": 1}}]},
    }
    cfg = config_from_dict(raw)
    assert config_from_dict(config_to_dict(cfg)) == cfg
