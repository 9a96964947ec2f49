"""Typed in-memory results that the stages pass to each other: :class:`Signals`,
:class:`Influence`, :class:`Ranking` and :class:`Truth`.

Each result is a set of plain numeric arrays and a JSON-able metadata dict that says what
made it (kind, schema version, resolved config, seeds, package versions, the content hash of
its input). A result owns its schema: the arrays it must have, their shapes, dtypes and
finiteness (:meth:`Result.validate`), and its content hash (:attr:`Result.sha256`: a digest
of the arrays' names, dtypes, shapes and bytes and of the metadata; the same in memory and
after a save and a load). Saving and loading is :mod:`fine_cli.artifacts`'; nothing here
touches a file.

Array shapes and meanings: docs/ARTIFACTS.md.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from fine_cli.errors import InputFileError

# Bump a kind's version whenever its arrays change meaning; readers refuse other versions.
SCHEMA_VERSIONS = {"signals": 1, "influence": 1, "ranking": 1, "truth": 1}
# Which stage makes each kind, for error messages that say what to run.
MADE_BY = {
    "signals": "fine train-collect",
    "influence": "fine estimate",
    "ranking": "fine rank",
    "truth": "fine validate --save-truth",
    "result": "a fine stage",  # a file read without saying which kind it must be
}


def versions() -> dict[str, str]:
    """Package versions worth recording for reproducibility."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("numpy", "torch", "scipy"):
        mod = sys.modules.get(name)
        if mod is None:
            try:
                mod = __import__(name)
            except ImportError:
                continue
        out[name] = str(getattr(mod, "__version__", "unknown"))
    try:
        out["fine_cli"] = version("fine-cli")
    except PackageNotFoundError:
        out["fine_cli"] = "unknown"
    return out


def make_meta(kind: str, **fields: Any) -> dict[str, Any]:
    """Metadata of a new result: kind, schema version, package versions, then ``fields``."""
    meta: dict[str, Any] = {
        "kind": kind,
        "schema_version": SCHEMA_VERSIONS[kind],
        "versions": versions(),
    }
    meta.update(fields)
    return meta


def content_hash(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> str:
    """sha256 of the arrays (name, dtype, shape, bytes, in name order) and the metadata."""
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(json.dumps([key, a.dtype.str, list(a.shape)]).encode())
        h.update(a.tobytes())
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    return h.hexdigest()


@dataclass
class Result:
    """Arrays plus metadata of one stage's output; subclasses fix ``kind`` and the schema."""

    kind: ClassVar[str] = ""
    # Arrays every file of this kind holds (more may be present).
    REQUIRED: ClassVar[tuple[str, ...]] = ()

    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]
    source: str = ""  # where it came from, for messages: a path, "standard input", "memory"
    _hash: str = field(default="", repr=False, compare=False)

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]

    def __contains__(self, key: str) -> bool:
        return key in self.arrays

    def get(self, key: str) -> np.ndarray | None:
        return self.arrays.get(key)

    @property
    def sha256(self) -> str:
        """Content hash (see :func:`content_hash`); results are treated as immutable."""
        if not self._hash:
            self._hash = content_hash(self.arrays, self.meta)
        return self._hash

    @property
    def name(self) -> str:
        return f"'{self.source}'" if self.source and self.source != "-" else "standard input"

    def validate(self, required: tuple[str, ...] | None = None) -> None:
        """Refuse, in one sentence, missing arrays; subclasses add shape and value checks."""
        need = self.REQUIRED if required is None else required
        missing = [k for k in need if k not in self.arrays]
        if missing:
            raise InputFileError(
                f"{self.kind} {self._where()} lacks the array(s) {', '.join(missing)}; it is "
                f"damaged or was edited; re-create it with {MADE_BY[self.kind]}."
            )

    def _where(self) -> str:
        return f"file '{self.source}'" if self.source not in ("", "-") else "result"

    def check_shape(self, key: str, shape: tuple[int | None, ...]) -> None:
        check_shape(self, key, shape)

    def require_finite(self, keys: tuple[str, ...]) -> None:
        require_finite(self, keys)


def require_finite(res: Result, keys: tuple[str, ...]) -> None:
    """Refuse NaN/inf in the named float arrays with a sentence naming the array."""
    for k in keys:
        a = res.arrays.get(k)
        if a is not None and a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
            raise InputFileError(
                f"{res.kind} array '{k}' holds {bad} NaN/inf value(s) (training diverged?); "
                "lower train.lr or re-run train-collect."
            )


def check_shape(res: Result, key: str, shape: tuple[int | None, ...]) -> None:
    """Refuse an array whose shape differs from ``shape`` (None = any size)."""
    a = res.arrays[key]
    ok = a.ndim == len(shape) and all(s is None or s == d for s, d in zip(shape, a.shape))
    if not ok:
        raise InputFileError(
            f"{res.kind} array '{key}' has shape {a.shape}, expected {shape} "
            f"(None = any); the file is inconsistent; re-create it with {MADE_BY[res.kind]}."
        )


@dataclass
class Signals(Result):
    """Stage 1's output: per-checkpoint gradient components of both models (Algorithm 1).

    Shapes (docs/ARTIFACTS.md): ``sqnorm``, ``loss``, ``margin`` ``(2, C, n)``; ``ip``
    ``(2, C, R, 2, n)``; ``probe_idx`` ``(C, R, 2, b)``; ``lr`` ``(C,)``; test mode adds
    ``gram`` ``(2, C, m, n)`` and the test points' ``test_*`` arrays.
    """

    kind: ClassVar[str] = "signals"
    REQUIRED: ClassVar[tuple[str, ...]] = (
        "train_index",
        "labels",
        "flip_mask",
        "lr",
        "probe_idx",
        "sqnorm",
        "ip",
        "probe_sqnorm",
        "loss",
        "margin",
    )
    TEST_REQUIRED: ClassVar[tuple[str, ...]] = ("test_index", "test_ip", "test_sqnorm", "gram")

    @property
    def mode(self) -> str:
        return str(self.meta.get("mode"))

    @property
    def n_train(self) -> int:
        return int(self.arrays["train_index"].shape[0])

    @property
    def n_checkpoints(self) -> int:
        return int(self.arrays["lr"].shape[0])

    def validate(self, required: tuple[str, ...] | None = None) -> None:
        """Arrays, shapes and values of a signals result (one sentence on any problem)."""
        super().validate(required)
        if self.mode not in ("self", "test"):
            raise InputFileError(
                f"signals {self._where()} has unknown mode {self.meta.get('mode')!r}; "
                "re-create it with train-collect."
            )
        if self.mode == "test":
            missing = [k for k in self.TEST_REQUIRED if k not in self]
            if missing:
                raise InputFileError(
                    f"test-mode signals lack {', '.join(missing)}; re-create them with "
                    "train-collect."
                )
        n, c = self.n_train, self.n_checkpoints
        r, b = self["probe_idx"].shape[1], self["probe_idx"].shape[3]
        self.check_shape("probe_idx", (c, r, 2, b))
        for k in ("sqnorm", "loss", "margin"):
            self.check_shape(k, (2, c, n))
        self.check_shape("ip", (2, c, r, 2, n))
        self.check_shape("probe_sqnorm", (2, c, r, 2))
        for k in ("labels", "flip_mask"):
            self.check_shape(k, (n,))
        if self["probe_idx"].min(initial=0) < 0 or self["probe_idx"].max(initial=0) >= n:
            raise InputFileError(
                "signals 'probe_idx' points outside the training set; the file is damaged."
            )
        self.require_finite(("lr", "sqnorm", "ip", "probe_sqnorm", "loss", "margin"))
        if self.mode == "test":
            m = self["test_index"].shape[0]
            self.check_shape("gram", (2, c, m, n))
            self.check_shape("test_ip", (2, c, r, 2, m))
            self.check_shape("test_sqnorm", (2, c, m))
            self.require_finite(("test_ip", "test_sqnorm", "gram"))
            if "group_ptr" in self:
                ptr, mem = self["group_ptr"], self["group_members"]
                if (
                    ptr[0] != 0
                    or ptr[-1] != mem.shape[0]
                    or np.any(np.diff(ptr) <= 0)
                    or (mem.size and (mem.min() < 0 or mem.max() >= n))
                ):
                    raise InputFileError(
                        "signals groups (group_ptr/group_members) are inconsistent."
                    )

    def summary(self) -> str:
        return f"{self.n_train} training points, {self.n_checkpoints} checkpoints, mode {self.mode}"


@dataclass
class Influence(Result):
    """Stage 2's output: ``scores`` ``(q, G)`` of every (query, subset) pair by one method,
    larger = more influential, with f-INE's ``stderr`` and ``pvalue`` when asked for."""

    kind: ClassVar[str] = "influence"
    REQUIRED: ClassVar[tuple[str, ...]] = (
        "scores",
        "query_index",
        "train_index",
        "labels",
        "flip_mask",
        "group_ptr",
        "group_members",
    )

    @property
    def scores(self) -> np.ndarray:
        return self.arrays["scores"]

    @property
    def method(self) -> str:
        return str(self.meta.get("method"))

    def summary(self) -> str:
        q, g = self.scores.shape
        what = f"fine/{self.meta.get('estimator')}" if self.method == "fine" else self.method
        extras = [k for k in ("stderr", "pvalue") if k in self]
        return f"influence ({what}): {q} quer{'y' if q == 1 else 'ies'} x {g} subsets" + (
            f", with {' and '.join(extras)}" if extras else ""
        )


@dataclass
class Ranking(Result):
    """Stage 3's output: subsets in decreasing order of influence (``order``, ``score``)."""

    kind: ClassVar[str] = "ranking"
    REQUIRED: ClassVar[tuple[str, ...]] = ("order", "score", "is_flipped")

    @property
    def order(self) -> np.ndarray:
        return self.arrays["order"]

    @property
    def method(self) -> str:
        return str(self.meta.get("method"))


@dataclass
class Truth(Result):
    """``fine validate``'s retraining ground truth (models on random halves)."""

    kind: ClassVar[str] = "truth"
    REQUIRED: ClassVar[tuple[str, ...]] = (
        "in_mask",
        "loss",
        "confidence",
        "mu_true",
        "mean_diff",
        "mu_lira",
        "flip_mask",
    )
    # test mode (fine_cli/stages/validate_test.py): retrainings on halves of groups
    TEST_REQUIRED: ClassVar[tuple[str, ...]] = (
        "design",
        "outcome",
        "mu_true",
        "test_index",
        "group_ptr",
        "group_members",
        "train_index",
    )

    def validate(self, required: tuple[str, ...] | None = None) -> None:
        if self.meta.get("mode") == "test" and required is None:
            required = self.TEST_REQUIRED
        super().validate(required)


RESULT_TYPES: dict[str, type[Result]] = {
    cls.kind: cls for cls in (Signals, Influence, Ranking, Truth)
}

__all__ = [
    "MADE_BY",
    "RESULT_TYPES",
    "SCHEMA_VERSIONS",
    "Influence",
    "Ranking",
    "Result",
    "Signals",
    "Truth",
    "check_shape",
    "content_hash",
    "make_meta",
    "require_finite",
    "versions",
]
