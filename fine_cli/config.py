"""Typed, closed experiment configs: YAML + ``--set a.b=value`` overrides.

Every field has a one-line description; unknown keys and wrong types are errors
that name the key path. The resolved config (all defaults filled in) is stored in
every artifact, so an artifact says exactly what made it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from fine_cli.errors import ConfigError

DATASETS = ("mnist", "cifar10", "mnist_embedded", "digits", "synthetic", "folder", "npz", "csv")
# Built-in architectures; model.arch also takes factories (fine_cli/models/user.py).
ARCHS = ("mlp", "small_cnn", "resnet18_cifar")
SCHEDULES = ("constant", "cosine", "step")
# f-INE estimators (fine_cli/estimators/fine.py, docs/statistics.md); alg2 is the paper's.
ESTIMATORS = ("alg2", "auc", "std", "paired")
ALTERNATIVES = ("two-sided", "greater", "less")

DatasetName = Literal[
    "mnist", "cifar10", "mnist_embedded", "digits", "synthetic", "folder", "npz", "csv"
]
ArchName = Literal["mlp", "small_cnn", "resnet18_cifar"]
ScheduleName = Literal["constant", "cosine", "step"]


def _registered_method(name: str) -> str:
    """A method name of the registry (fine_cli.registry: built-ins and FINE_PLUGINS)."""
    from fine_cli import registry

    if name not in registry.methods():
        raise ValueError(f"unknown method '{name}'; choose one of {', '.join(registry.names())}")
    return name


# A registered method's name, checked when the config is loaded.
MethodName = Annotated[str, AfterValidator(_registered_method)]
EstimatorName = Literal["alg2", "auc", "std", "paired"]
# Chosen by evidence (docs/statistics.md).
DEFAULT_ESTIMATOR: EstimatorName = "paired"
Alternative = Literal["two-sided", "greater", "less"]


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SyntheticConfig(_Closed):
    n_samples: int = Field(2000, ge=4, description="Points generated (train + test).")
    n_features: int = Field(20, ge=1, description="Input dimension of each point.")
    n_classes: int = Field(3, ge=2, description="Number of Gaussian clusters / classes.")
    separation: float = Field(3.0, gt=0, description="Distance scale between class means.")


class DataConfig(_Closed):
    dataset: DatasetName = Field("mnist_embedded", description="Which dataset to load.")
    root: str = Field(
        "data", description="Directory of torchvision dataset files, or the image folder."
    )
    path: str | None = Field(None, description="The .npz or .csv file (npz and csv only).")
    label_column: str = Field("label", description="Name of the CSV's label column (csv only).")
    image_size: int | None = Field(
        None, ge=1, description="Resize folder images to this square size; null = keep."
    )
    download: bool = Field(False, description="Let torchvision download missing files.")
    n_train: int | None = Field(
        None, ge=2, description="Use a random subset of this many training points."
    )
    n_test: int | None = Field(
        None, ge=1, description="Use a random subset of this many test points."
    )
    test_fraction: float = Field(
        0.2, gt=0, lt=1, description="Held-out share for sets without a test split."
    )
    subset_seed: int = Field(0, description="Seed of the n_train / n_test / split draws.")
    label_noise: float = Field(
        0.2, ge=0, le=1, description="Fraction of training labels flipped at random."
    )
    noise_seed: int = Field(0, description="Seed of the label flips (independent of training).")
    synthetic: SyntheticConfig = Field(
        default_factory=SyntheticConfig, description="Shape of the synthetic dataset."
    )

    @model_validator(mode="after")
    def _check_path(self) -> DataConfig:
        if self.dataset in ("npz", "csv") and not self.path:
            raise ValueError(
                f"data.dataset={self.dataset} needs data.path, the file to read; "
                f"e.g. data.path=my_data.{self.dataset}"
            )
        return self


class ModelConfig(_Closed):
    arch: str = Field(
        "mlp", description="Built-in name, pkg.module:factory, file.py:factory or torchvision:name."
    )
    hidden: list[int] = Field([500], description="MLP hidden widths (mlp only).")
    channels: list[int] = Field([8, 16], description="Conv widths (small_cnn only).")
    kwargs: dict[str, Any] = Field(
        {}, description="Keyword arguments of a factory or torchvision model (not built-ins)."
    )

    @model_validator(mode="after")
    def _check_arch(self) -> ModelConfig:
        # Imported here: fine_cli.models imports this module.
        from fine_cli.models.user import check_arch

        check_arch(self.arch)  # a ValueError, which config_from_dict reports as a ConfigError
        if self.arch in ARCHS and self.kwargs:
            raise ValueError(
                f"model.kwargs is only for factories and torchvision models, not the built-in "
                f"{self.arch}; remove it or use model.hidden / model.channels"
            )
        return self


class TrainConfig(_Closed):
    epochs: int = Field(100, ge=1, description="Training epochs of each model.")
    batch_size: int = Field(100, ge=1, description="Mini-batch size.")
    optimizer: Literal["adam", "sgd"] = Field("adam", description="Optimiser.")
    lr: float = Field(0.005, gt=0, description="Learning rate.")
    betas: tuple[float, float] = Field((0.9, 0.99), description="Adam betas.")
    momentum: float = Field(0.0, ge=0, description="SGD momentum.")
    weight_decay: float = Field(0.0, ge=0, description="L2 weight decay.")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'.")
    schedule: ScheduleName = Field(
        "constant", description="Learning-rate schedule over epochs (fine_cli/schedules.py)."
    )
    step_size: int = Field(30, ge=1, description="Epochs between lr drops (step schedule).")
    gamma: float = Field(0.1, gt=0, description="Factor of each lr drop (step schedule).")
    augment: list[str | dict[str, dict[str, Any]]] = Field(
        [],
        description="torchvision transforms applied in training only, e.g. [RandomHorizontalFlip].",
    )

    @model_validator(mode="after")
    def _check_augment(self) -> TrainConfig:
        # Imported here so that configs without augmentation never import torchvision.
        if self.augment:
            from fine_cli.augment import build_augment

            try:
                build_augment(self.augment)
            except ConfigError as err:
                raise ValueError(str(err).rstrip(".")) from None
        return self


class TestPointsConfig(_Closed):
    source: Literal["test", "train"] = Field(
        "test", description="Split the test points come from (test mode)."
    )
    n: int = Field(10, ge=1, description="Number of test points, drawn at random.")
    indices: list[int] | None = Field(
        None, description="Explicit positions in the split (overrides n)."
    )
    seed: int = Field(0, description="Seed of the random draw of test points.")


class FeaturesConfig(_Closed):
    proj_dim: int = Field(
        1024, ge=1, description="Count-sketch dimension k of the projected gradients."
    )
    seed: int = Field(0, description="Seed of the sketch hashes (the same for every run seed).")
    extra_models: int = Field(
        0, ge=0, description="Models trained only for TRAK's ensemble, beside main and aux."
    )


class CollectConfig(_Closed):
    mode: Literal["self", "test"] = Field(
        "self", description="self: each training point its own test point; test: test points."
    )
    checkpoints: int | None = Field(
        None, ge=1, description="C evenly spaced checkpoints; null = after every epoch."
    )
    probe_batch_size: int | None = Field(
        None, ge=1, description="Size b of probe batches; null = the training batch size."
    )
    probe_repeats: int = Field(1, ge=1, description="R probe-batch pairs per checkpoint.")
    test_points: TestPointsConfig = Field(
        default_factory=TestPointsConfig, description="Test points (test mode)."
    )
    groups_file: str | None = Field(
        None, description="JSON/NPZ file of training-index groups (test mode); null = singletons."
    )
    chunk_size: int = Field(2048, ge=1, description="Points per engine call (memory vs speed).")
    features: FeaturesConfig = Field(
        default_factory=FeaturesConfig,
        description="Projected gradients for trak / if, collected only when methods list them.",
    )


class EstimateConfig(_Closed):
    method: MethodName = Field("fine", description="Default method of `fine estimate`.")
    estimator: EstimatorName = Field(
        DEFAULT_ESTIMATOR, description="f-INE estimator from samples to mu (docs/statistics.md)."
    )
    checkpoints: int | None = Field(
        None, ge=1, description="Use only the first K checkpoints (every method); null = all."
    )
    bootstrap: int = Field(
        200, ge=0, description="Block-bootstrap draws for each f-INE score's standard error."
    )
    permutations: int = Field(
        999, ge=0, description="Within-checkpoint with/without swaps for f-INE p-values."
    )
    alternative: Alternative = Field(
        "two-sided", description="Side of the permutation test: two-sided, greater or less."
    )
    seed: int = Field(0, description="Seed of the bootstrap and permutation draws.")


class EvaluateConfig(_Closed):
    p_grid: list[float] = Field(
        [float(p) for p in range(0, 101, 5)],
        description="Percentages p at which recall of the top-p% is reported.",
    )

    @model_validator(mode="after")
    def _check_grid(self) -> EvaluateConfig:
        if not self.p_grid or any(p < 0 or p > 100 for p in self.p_grid):
            raise ValueError("p_grid must be a non-empty list of percentages in [0, 100]")
        return self


class ExperimentConfig(_Closed):
    seeds: list[int] = Field([0, 1, 2], description="Training seeds of the experiment.")
    methods: list[MethodName] = Field(
        ["fine", "tracin", "grad-cos", "loss"], description="Methods compared."
    )


class ValidateConfig(_Closed):
    models: int = Field(64, ge=4, description="Models trained on random halves (even number).")
    seed: int = Field(0, description="Seed of the halves and of those models' training.")
    jaccard_p: float = Field(
        20.0, gt=0, le=100, description="Top-p% whose Jaccard across seeds is reported."
    )
    group_size: int = Field(
        100, ge=1, description="Test mode: points per random training group (no groups_file)."
    )
    outcome: Literal["margin", "loss"] = Field(
        "margin", description="Test mode: what is measured on a test point (loss: minus it)."
    )


class Config(_Closed):
    name: str = Field("experiment", description="Name written into artifacts and reports.")
    seed: int = Field(0, description="Training seed: model inits, shuffling, probe batches.")
    data: DataConfig = Field(default_factory=DataConfig, description="Dataset and label noise.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Architecture.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Training.")
    collect: CollectConfig = Field(default_factory=CollectConfig, description="Signals.")
    estimate: EstimateConfig = Field(default_factory=EstimateConfig, description="Stage 2.")
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig, description="Metrics.")
    experiment: ExperimentConfig = Field(
        default_factory=ExperimentConfig, description="Multi-seed experiment."
    )
    validation: ValidateConfig = Field(
        default_factory=ValidateConfig, description="Retraining ground truth (fine validate)."
    )


# Characters of a bad value echoed back in an error message.
MAX_ECHO = 80


def _format_validation_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    path = ".".join(str(p) for p in first["loc"]) or "(top level)"
    kind = first["type"]
    if kind == "extra_forbidden":
        return f"{source}: unknown key '{path}'; remove it or check its spelling (see configs/)."
    msg = str(first["msg"]).removeprefix("Value error, ").rstrip(".")
    got = first.get("input")
    if kind == "value_error" and isinstance(got, dict):
        # a check of a whole section (model_validator): its message names the key itself
        return f"{source}: invalid '{path}' section: {msg}."
    got_s = repr(got) if not isinstance(got, dict) else "a mapping"
    if len(got_s) > MAX_ECHO:  # never echo a huge value (a YAML alias bomb) back in full
        got_s = got_s[:MAX_ECHO] + "..."
    return f"{source}: invalid value for '{path}': {msg} (got {got_s})."


def parse_override(item: str) -> tuple[list[str], Any]:
    """'a.b=value' -> (['a', 'b'], value parsed as YAML)."""
    if "=" not in item:
        raise ConfigError(f"--set '{item}' is not of the form key.path=value; e.g. train.epochs=5.")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set '{item}' has an empty key; e.g. train.epochs=5.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        parts, value = parse_override(item)
        node: Any = raw
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = {}
                node[part] = nxt
            if not isinstance(nxt, dict):
                where = ".".join(parts[: i + 1])
                raise ConfigError(f"--set '{item}': '{where}' is not a section of the config.")
            node = nxt
        node[parts[-1]] = value
    return raw


def config_from_dict(raw: dict[str, Any], source: str = "config") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config, apply ``--set`` overrides, validate; FineError on any problem."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"config file '{p}' does not exist; pass a path such as configs/quickstart.yaml."
        )
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file '{p}' is not valid YAML{where}; fix its syntax.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file '{p}' is not a text file; pass a YAML config.") from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"config file '{p}' must hold a mapping of sections (data:, model:, ...)."
        )
    raw = apply_overrides(raw, overrides or [])
    return config_from_dict(raw, source=str(p))


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return cfg.model_dump(mode="json")
