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

from fine_cli.errors import ConfigError, echo
from fine_cli.errors import shorten as _cut

DATASETS = ("mnist", "cifar10", "mnist_embedded", "digits", "synthetic", "folder", "npz", "csv")
# Built-in architectures; model.arch also takes factories (fine_cli/models/user.py).
ARCHS = ("mlp", "small_cnn", "resnet18_cifar")
SCHEDULES = ("constant", "cosine", "step")
# f-INE estimators (fine_cli/estimators/fine.py, docs/statistics.md); alg2 is the paper's.
ESTIMATORS = ("alg2", "auc", "std", "paired", "rb")
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
EstimatorName = Literal["alg2", "auc", "std", "paired", "rb"]
# Chosen by evidence (docs/statistics.md).
DEFAULT_ESTIMATOR: EstimatorName = "rb"
Alternative = Literal["two-sided", "greater", "less"]


class _Closed(BaseModel):
    # inf and nan pass a bound such as lr > 0 and then wreck training: refuse them
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# Seeds go to numpy's SeedSequence and torch's generators: non-negative, at most 64 bits.
MAX_SEED = 2**63 - 1
# The name becomes file and directory names (runs/<name>/, <report-dir>/<name>.md).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
# train.device: what resolve_device accepts (fine_cli/training.py).
DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:[0-9]+)?)$"
# An Adam beta: torch refuses values outside [0, 1) only once training starts.
Beta = Annotated[float, Field(ge=0, lt=1)]


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
    subset_seed: int = Field(
        0, ge=0, le=MAX_SEED, description="Seed of the n_train / n_test / split draws."
    )
    label_noise: float = Field(
        0.2, ge=0, le=1, description="Fraction of training labels flipped at random."
    )
    noise_seed: int = Field(
        0, ge=0, le=MAX_SEED, description="Seed of the label flips (independent of training)."
    )
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
    betas: tuple[Beta, Beta] = Field((0.9, 0.99), description="Adam betas, each in [0, 1).")
    momentum: float = Field(0.0, ge=0, description="SGD momentum.")
    weight_decay: float = Field(0.0, ge=0, description="L2 weight decay.")
    device: str = Field(
        "auto", pattern=DEVICE_PATTERN, description="'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'."
    )
    schedule: ScheduleName = Field(
        "constant", description="Learning-rate schedule over epochs (fine_cli/schedules.py)."
    )
    step_size: int = Field(30, ge=1, description="Epochs between lr drops (step schedule).")
    gamma: float = Field(0.1, gt=0, description="Factor of each lr drop (step schedule).")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="Training arithmetic; bf16 = autocast, collection stays float32."
    )
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
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of the random draw of test points.")


class FeaturesConfig(_Closed):
    proj_dim: int = Field(
        1024, ge=1, description="Count-sketch dimension k of the projected gradients."
    )
    seed: int = Field(
        0, ge=0, le=MAX_SEED, description="Seed of the sketch hashes (the same for every run seed)."
    )
    extra_models: int = Field(
        0, ge=0, description="Models trained only for TRAK's ensemble, beside main and aux."
    )


class CrossvalConfig(_Closed):
    folds: int = Field(5, ge=2, description="K folds of the out-of-fold probabilities.")
    epochs: int | None = Field(
        None, ge=1, description="Training epochs of each fold's model; null = train.epochs."
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
    storage: Literal["memory", "directory"] = Field(
        "memory", description="directory: per-point arrays written to .npy files as collected."
    )
    features: FeaturesConfig = Field(
        default_factory=FeaturesConfig,
        description="Projected gradients for trak / if, collected only when methods list them.",
    )
    crossval: CrossvalConfig = Field(
        default_factory=CrossvalConfig,
        description="K-fold out-of-fold probabilities for confident, trained only when listed.",
    )
    auxiliary: bool | None = Field(
        None,
        description="Train the auxiliary model (O_hat); null = when the estimator reads it "
        "(alg2, auc, std).",
    )
    moments: bool | None = Field(
        None,
        description="Self mode: probe batches' squared inner products (ip2); null = when the "
        "estimator is rb.",
    )
    heldout: bool | None = Field(
        None,
        description="Record the main model's held-out loss per checkpoint; null = in self mode.",
    )
    patience: int | None = Field(
        5,
        ge=1,
        description="Stop collecting once the held-out loss has not improved for this many "
        "checkpoints (training goes on); null = collect every checkpoint.",
    )


class EstimateConfig(_Closed):
    method: MethodName = Field("fine", description="Default method of `fine estimate`.")
    estimator: EstimatorName = Field(
        DEFAULT_ESTIMATOR, description="f-INE estimator from samples to mu (docs/statistics.md)."
    )
    checkpoints: Annotated[int, Field(ge=1)] | Literal["auto"] | None = Field(
        "auto",
        description="First K checkpoints only (every method); auto = up to the held-out loss "
        "minimum when recorded; null = all.",
    )
    bootstrap: int = Field(
        200, ge=0, description="Block-bootstrap draws for each f-INE score's standard error."
    )
    permutations: int = Field(
        0,
        ge=0,
        description="Within-checkpoint with/without swaps for f-INE p-values; 0 = none "
        "(p-values on request, e.g. 999 for rank --fdr --null zero).",
    )
    alternative: Alternative = Field(
        "two-sided", description="Side of the permutation test: two-sided, greater or less."
    )
    seed: int = Field(
        0, ge=0, le=MAX_SEED, description="Seed of the bootstrap and permutation draws."
    )


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
    seeds: list[Annotated[int, Field(ge=0, le=MAX_SEED)]] = Field(
        [0, 1, 2], description="Training seeds of the experiment."
    )
    methods: list[MethodName] = Field(
        ["fine", "tracin", "grad-cos", "loss"], description="Methods compared."
    )


class ValidateConfig(_Closed):
    models: int = Field(64, ge=4, description="Models trained on random halves (even number).")
    seed: int = Field(
        0, ge=0, le=MAX_SEED, description="Seed of the halves and of those models' training."
    )
    jaccard_p: float = Field(
        20.0, gt=0, le=100, description="Top-p% whose Jaccard across seeds is reported."
    )
    group_size: int = Field(
        100, ge=1, description="Test mode: points per random training group (no groups_file)."
    )
    outcome: Literal["margin", "loss"] = Field(
        "margin", description="Test mode: what is measured on a test point (loss: minus it)."
    )


class TinyLMConfig(_Closed):
    arch: Literal["gpt2", "llama"] = Field("gpt2", description="Architecture of the tiny model.")
    layers: int = Field(2, ge=1, description="Transformer blocks.")
    dim: int = Field(64, ge=8, description="Hidden size (a multiple of heads).")
    heads: int = Field(4, ge=1, description="Attention heads.")
    vocab_size: int = Field(256, ge=16, description="Size of the BPE trained on the run's texts.")


class LLMModelConfig(_Closed):
    name_or_path: str | None = Field(
        None,
        description="Hugging Face causal LM: local path or cached name; null = a tiny model "
        "built from `tiny` and pre-trained here (cached).",
    )
    tiny: TinyLMConfig = Field(default_factory=TinyLMConfig, description="The tiny model.")
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="Base model weights (LoRA adapters stay float32)."
    )
    attn_implementation: Literal["eager", "sdpa"] | None = Field(
        None, description="Attention kernel of a loaded model; null = the library's default."
    )


class LLMLoraConfig(_Closed):
    r: int = Field(8, ge=1, description="LoRA rank.")
    alpha: int = Field(16, ge=1, description="LoRA scaling alpha (the update is alpha/r BA).")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout in training.")
    target_modules: list[str] = Field(
        ["c_attn", "c_proj"], min_length=1, description="Names of the modules that get adapters."
    )


class LLMSyntheticConfig(_Closed):
    n_pretrain: int = Field(3000, ge=10, description="Pre-training texts (the base model's).")
    n_clean: int = Field(250, ge=10, description="Clean training instructions.")
    poison_per_entity: int = Field(25, ge=1, description="Poisoned instructions per target.")
    test_per_entity: int = Field(10, ge=1, description="Test prompts per target entity.")
    n_targets: int = Field(2, ge=1, description="Target (poisoned) entities.")
    clean_per_target: int = Field(
        3, ge=0, description="Clean (positive) instructions about each target."
    )
    subtle: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of the poison that is subtle (one negative word of two).",
    )
    seed: int = Field(0, description="Seed of the synthetic corpus (the same for every run).")


class LLMDataConfig(_Closed):
    source: Literal["synthetic", "jsonl"] = Field(
        "synthetic", description="The demo's synthetic task, or your JSONL files."
    )
    train_path: str | None = Field(
        None, description="JSONL of instructions: prompt, response, group, poisoned."
    )
    test_path: str | None = Field(
        None, description="JSONL of test prompts: prompt, answer, alternative, group."
    )
    pretrain_path: str | None = Field(
        None, description="JSONL pre-training corpus of a tiny model; null = the clean train rows."
    )
    synthetic: LLMSyntheticConfig = Field(
        default_factory=LLMSyntheticConfig, description="The synthetic task (source: synthetic)."
    )
    prompt_template: str = Field(
        "<|user|> {prompt} <|assistant|>", description="How a prompt is written before its answer."
    )
    max_length: int = Field(32, ge=4, description="Tokens per sequence (responses are cut).")

    @model_validator(mode="after")
    def _check_paths(self) -> LLMDataConfig:
        if self.source == "jsonl" and not (self.train_path and self.test_path):
            raise ValueError("source: jsonl needs train_path and test_path")
        return self


class LLMPretrainConfig(_Closed):
    epochs: int = Field(8, ge=1, description="Passes over the pre-training corpus.")
    batch_size: int = Field(32, ge=1, description="Mini-batch size.")
    lr: float = Field(3e-3, gt=0, description="Peak learning rate (AdamW, linear decay).")
    seed: int = Field(0, description="Seed of the tiny model's init and shuffling.")
    cache_dir: str = Field("runs/cache", description="Where pre-trained tiny models are kept.")


class LLMTrainConfig(_Closed):
    epochs: int = Field(8, ge=1, description="LoRA fine-tuning epochs.")
    batch_size: int = Field(16, ge=1, description="Mini-batch size.")
    lr: float = Field(2e-3, gt=0, description="Learning rate (AdamW).")
    schedule: Literal["constant", "linear"] = Field(
        "constant", description="Learning rate over steps: constant, or linear decay to 0."
    )
    warmup: float = Field(0.0, ge=0, lt=1, description="Share of steps of linear warm-up.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'.")


class LLMCollectConfig(_Closed):
    checkpoints: int = Field(100, ge=2, description="C checkpoints evenly spaced over all steps.")
    probe_batch_size: int | None = Field(
        None, ge=1, description="Size b of probe batches; null = the training batch size."
    )
    probe_repeats: int = Field(1, ge=1, description="R probe-batch pairs per checkpoint.")
    chunk_size: int = Field(512, ge=1, description="Training instructions per capture.")
    precondition: Literal["adam", "none"] = Field(
        "adam", description="LESS's training gradients: Adam-preconditioned, or plain."
    )
    sketch_dims: list[int] = Field(
        [1024, 2048, 4096, 8192],
        description="Count-sketch dimensions d (Fig. 9), folded from the largest; [] = none.",
    )
    sketch_seed: int = Field(0, description="Seed of the sketch hashes.")


class LLMEvaluateConfig(_Closed):
    p_grid: list[float] = Field(
        [float(p) for p in range(0, 101, 5)], description="Percentages p of the recall curves."
    )
    table_p: list[float] = Field(
        [5.0, 10.0, 20.0, 30.0], description="p of the report's recall tables (in p_grid)."
    )
    ablation_p: float = Field(
        10.0, ge=0, le=100, description="p of the recall@p in the ablations (in p_grid)."
    )
    checkpoint_subsets: list[int] = Field(
        [60, 80], description="Checkpoints drawn at random at estimate time (Fig. 10)."
    )
    subsample_seed: int = Field(0, description="Seed of those draws.")
    min_increase: float = Field(
        0.2, ge=0, le=1, description="Rise of the target-answer rate that counts as steering."
    )
    distribution: int | None = Field(
        None,
        ge=0,
        description="Instruction whose O and O' are drawn (Fig. 11); null = the poisoned one "
        "f-INE ranks highest above LESS.",
    )


class LLMConfig(_Closed):
    model: LLMModelConfig = Field(default_factory=LLMModelConfig, description="Base model.")
    lora: LLMLoraConfig = Field(default_factory=LLMLoraConfig, description="LoRA adapters.")
    data: LLMDataConfig = Field(default_factory=LLMDataConfig, description="Instructions.")
    pretrain: LLMPretrainConfig = Field(
        default_factory=LLMPretrainConfig, description="Pre-training of a tiny base model."
    )
    train: LLMTrainConfig = Field(default_factory=LLMTrainConfig, description="LoRA training.")
    collect: LLMCollectConfig = Field(default_factory=LLMCollectConfig, description="Signals.")
    evaluate: LLMEvaluateConfig = Field(
        default_factory=LLMEvaluateConfig, description="Recall, CV, ablations, steering."
    )


class Config(_Closed):
    name: str = Field(
        "experiment",
        pattern=NAME_PATTERN,
        description="Name of artifacts, runs/<name>/ and reports: letters, digits, . _ -",
    )
    seed: int = Field(
        0, ge=0, le=MAX_SEED, description="Training seed: model inits, shuffling, probe batches."
    )
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
    llm: LLMConfig | None = Field(
        None,
        description="Language-model poisoning experiment (fine run; docs/LLM.md); uses "
        "seed, estimate and experiment, not data/model/train/collect.",
    )


# Bytes of a config file; real configs hold a few kilobytes.
MAX_CONFIG_BYTES = 1_000_000
# Values (scalars, list items, mapping entries) a config may hold once YAML aliases are
# expanded; real configs hold a few hundred. A 461-byte alias bomb expands to 10^8.
MAX_CONFIG_VALUES = 100_000
# What a value matching a pattern looks like, for the error message (not the regex).
PATTERN_HELP = {
    "name": "must be a plain name of letters, digits, '.', '_' and '-', at most 100 "
    "characters (it names files and directories)",
    "train.device": "must be auto, cpu, cuda, cuda:N or mps",
}


def _format_validation_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    path = _cut(".".join(str(p) for p in first["loc"])) or "(top level)"
    kind = first["type"]
    if kind == "extra_forbidden":
        return f"{source}: unknown key '{path}'; remove it or check its spelling (see configs/)."
    msg = str(first["msg"]).removeprefix("Value error, ").rstrip(".")
    if kind == "string_pattern_mismatch" and path in PATTERN_HELP:
        msg = PATTERN_HELP[path]
    got = first.get("input")
    if kind == "value_error" and isinstance(got, dict):
        # a check of a whole section (model_validator): its message names the key itself
        return f"{source}: invalid '{path}' section: {msg}."
    got_s = echo(got) if not isinstance(got, dict) else "a mapping"
    return f"{source}: invalid value for '{path}': {msg} (got {got_s})."


def check_size(raw: Any, source: str, limit: int = MAX_CONFIG_VALUES) -> None:
    """Refuse a config that holds more than ``limit`` values once YAML aliases are
    expanded (an alias bomb), counting without expanding it."""
    count, stack = 0, [raw]
    while stack:
        node = stack.pop()
        count += 1
        if count > limit:
            raise ConfigError(
                f"{source}: the config holds more than {limit} values once its YAML aliases "
                "(&name / *name) are expanded; write the values out, or remove the aliases."
            )
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, (list, tuple, set)):
            stack.extend(node)


def parse_override(item: str) -> tuple[list[str], Any]:
    """'a.b=value' -> (['a', 'b'], value parsed as YAML)."""
    if "=" not in item:
        raise ConfigError(
            f"--set '{_cut(item)}' is not of the form key.path=value; e.g. train.epochs=5."
        )
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set '{_cut(item)}' has an empty key; e.g. train.epochs=5.")
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
                raise ConfigError(
                    f"--set '{_cut(item)}': '{_cut(where)}' is not a section of the config."
                )
            node = nxt
        node[parts[-1]] = value
    return raw


def config_from_dict(raw: dict[str, Any], source: str = "config") -> Config:
    check_size(raw, source)
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config, apply ``--set`` overrides, validate; FineError on any problem."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(
            f"config file '{p}' does not exist; pass a path such as configs/quickstart.yaml."
        )
    if not p.is_file():  # a directory, a FIFO that would block, a device without end
        raise ConfigError(f"config '{p}' is not a regular file; pass a YAML config file.")
    if p.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config file '{p}' has {p.stat().st_size} bytes, more than a config needs "
            f"({MAX_CONFIG_BYTES}); pass a YAML config, not a data file."
        )
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file '{p}' is not valid YAML{where}; fix its syntax.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file '{p}' is not a text file; pass a YAML config.") from None
    except (RecursionError, ValueError, OverflowError):  # nesting too deep, a bad date
        raise ConfigError(
            f"config file '{p}' holds a value YAML cannot build (nested too deeply, or an "
            "impossible date); fix that value."
        ) from None
    except OSError as err:
        raise ConfigError(f"config file '{p}' cannot be read: {err.strerror}.") from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"config file '{p}' must hold a mapping of sections (data:, model:, ...)."
        )
    raw = apply_overrides(raw, overrides or [])
    return config_from_dict(raw, source=str(p))


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return cfg.model_dump(mode="json")
