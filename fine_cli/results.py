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

from fine_cli.errors import InputFileError, echo

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
    """Metadata of a new result: kind, schema version, package versions, the threads and
    determinism settings in force (:func:`fine_cli.runtime.info`), then ``fields``."""
    from fine_cli.runtime import info

    meta: dict[str, Any] = {
        "kind": kind,
        "schema_version": SCHEMA_VERSIONS[kind],
        "versions": versions(),
        "runtime": info(),
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
    # Each known array's dtype kinds (BOOL, INT, FLOAT) and number of dimensions, checked
    # whenever the array is present: a text flip mask or a 0-d index is refused at load.
    ARRAYS: ClassVar[dict[str, tuple[str, int]]] = {}

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
        """Refuse, in one sentence, missing arrays, arrays of the wrong dtype or number of
        dimensions, and metadata of the wrong type; subclasses add shapes and values."""
        require_arrays(self, self.REQUIRED if required is None else required)
        check_meta(self, self.meta, META_TYPES, "")
        for key, (kinds, ndim) in self.array_spec().items():
            if key in self.arrays:
                check_array(self, key, kinds, ndim)

    def array_spec(self) -> dict[str, tuple[str, int]]:
        """:attr:`ARRAYS`, which a subclass may vary with the mode."""
        return self.ARRAYS

    def _where(self) -> str:
        return f"file '{self.source}'" if self.source not in ("", "-") else "result"

    def check_shape(self, key: str, shape: tuple[int | None, ...]) -> None:
        check_shape(self, key, shape)

    def require_finite(self, keys: tuple[str, ...]) -> None:
        require_finite(self, keys)


def require_arrays(res: Result, keys: tuple[str, ...]) -> None:
    """Refuse, in one sentence, a result that lacks any of the arrays ``keys``."""
    missing = [k for k in keys if k not in res.arrays]
    if missing:
        raise InputFileError(
            f"{res.kind} {res._where()} lacks the array(s) {', '.join(missing)}; it is "
            f"damaged or was edited; re-create it with {MADE_BY[res.kind]}."
        )


def require_finite(res: Result, keys: tuple[str, ...]) -> None:
    """Refuse NaN/inf in the named float arrays with a sentence naming the array.

    NaN is accepted in an array that the metadata declares undefined in places, with the
    reason (``meta["undefined"][key]``, e.g. standard errors from too few samples)."""
    undefined = res.meta.get("undefined") or {}
    for k in keys:
        a = res.arrays.get(k)
        if a is None or a.dtype.kind not in "fc":
            continue
        bad_mask = np.isinf(a) if k in undefined else ~np.isfinite(a)
        if np.any(bad_mask):
            bad = int(np.count_nonzero(bad_mask))
            what = "infinite" if k in undefined else "NaN/inf"
            raise InputFileError(
                f"{res.kind} array '{k}' holds {bad} {what} value(s) (training diverged?); "
                "lower train.lr or re-run train-collect."
            )


# dtype kinds of arrays (numpy's dtype.kind letters).
BOOL, INT, FLOAT = "b", "iu", "f"
_KIND_NAMES = {BOOL: "bool", INT: "integer", FLOAT: "float"}
_DTYPE_WORDS = {"U": "text", "S": "bytes", "O": "objects", "V": "records", "c": "complex"}


def check_array(res: Result, key: str, kinds: str, ndim: int) -> None:
    """Refuse an array whose dtype is not of ``kinds`` or that has not ``ndim`` dimensions."""
    a = res.arrays[key]
    if a.dtype.kind not in kinds:
        got = _DTYPE_WORDS.get(a.dtype.kind, a.dtype.name)
        raise InputFileError(
            f"{res.kind} array '{key}' has dtype {a.dtype.str} ({got}), expected "
            f"{_KIND_NAMES[kinds]}; the file is damaged or was edited; re-create it with "
            f"{MADE_BY[res.kind]}."
        )
    if a.ndim != ndim:
        raise InputFileError(
            f"{res.kind} array '{key}' has {a.ndim} dimension(s) (shape {echo(a.shape)}), "
            f"expected {ndim}; the file is damaged or was edited; re-create it with "
            f"{MADE_BY[res.kind]}."
        )


def check_groups(res: Result, n: int) -> None:
    """``group_ptr`` (G+1,) and ``group_members`` (total,): a CSR list of non-empty
    subsets of positions 0..n-1."""
    ptr, mem = res.arrays["group_ptr"], res.arrays["group_members"]
    ok = (
        ptr.shape[0] >= 2
        and ptr[0] == 0
        and ptr[-1] == mem.shape[0]
        and bool(np.all(np.diff(ptr) > 0))
        and (mem.size == 0 or (mem.min() >= 0 and mem.max() < n))
    )
    if not ok:
        raise InputFileError(
            f"{res.kind} groups (group_ptr/group_members) are inconsistent or point outside "
            f"the {n} training points; the file is damaged; re-create it with "
            f"{MADE_BY[res.kind]}."
        )


def check_range(res: Result, key: str, low: float, high: float) -> None:
    """Refuse values of ``key`` outside [low, high] (NaN passes; require_finite sees it)."""
    a = res.arrays[key]
    if a.size and (np.any(a < low) or np.any(a > high)):
        raise InputFileError(
            f"{res.kind} array '{key}' holds values outside [{low:g}, {high:g}]; the file is "
            f"damaged or was edited; re-create it with {MADE_BY[res.kind]}."
        )


_NUM = (int, float)
_OPT_STR = (str, type(None))
# Types of the metadata fields that stages read (a dict: a mapping, or null, with these
# fields); fields not listed are not read by any stage and pass as they are.
META_TYPES: dict[str, Any] = {
    "versions": {},
    "runtime": {"threads": int, "interop_threads": int, "deterministic": bool},
    "config": {},
    "seeds": {},
    "mode": _OPT_STR,
    "method": _OPT_STR,
    "estimator": _OPT_STR,
    "dataset": _OPT_STR,
    "query": (str, int, type(None)),
    "timing": {"train_s": _NUM, "collect_s": _NUM, "train_extra_s": _NUM},
    "features": {"timing": {}},
    "bootstrap": {"draws": int, "block": int},
    "permutations": {"draws": int, "alternative": str},
    "undefined": {},
    "warnings": list,
    "signals_sha256": _OPT_STR,
    "influence_sha256": _OPT_STR,
    "n_models": int,
    "n_samples": int,
    "model_seeds": list,
    "fdr": {},
}


def check_meta(res: Result, meta: dict[str, Any], spec: dict[str, Any], where: str) -> None:
    """Refuse metadata fields of the wrong type (``spec`` as :data:`META_TYPES`)."""
    for key, want in spec.items():
        if key not in meta:
            continue
        value, name = meta[key], f"{where}{key}"
        if isinstance(want, dict):
            if value is None:
                continue
            if not isinstance(value, dict):
                _bad_meta(res, name, value, "a mapping")
            check_meta(res, value, want, f"{name}.")
        elif not isinstance(value, want) or (isinstance(value, bool) and bool not in _types(want)):
            _bad_meta(res, name, value, " or ".join(_TYPE_WORDS[t] for t in _types(want)))


_TYPE_WORDS: dict[type, str] = {
    str: "text",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    list: "a list",
    type(None): "null",
}


def _types(want: type | tuple[type, ...]) -> tuple[type, ...]:
    return want if isinstance(want, tuple) else (want,)


def _bad_meta(res: Result, name: str, value: Any, expected: str) -> None:
    raise InputFileError(
        f"{res.kind} {res._where()} has metadata '{name}' = {echo(value)}, expected "
        f"{expected}; the file was edited or damaged; re-create it with {MADE_BY[res.kind]}."
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
    ARRAYS: ClassVar[dict[str, tuple[str, int]]] = {
        "train_index": (INT, 1),
        "labels": (INT, 1),
        "clean_labels": (INT, 1),
        "flip_mask": (BOOL, 1),
        "checkpoint_epoch": (INT, 1),
        "lr": (FLOAT, 1),
        "probe_idx": (INT, 4),
        "sqnorm": (FLOAT, 3),
        "ip": (FLOAT, 5),
        "probe_sqnorm": (FLOAT, 4),
        "loss": (FLOAT, 3),
        "margin": (FLOAT, 3),
        "test_index": (INT, 1),
        "test_labels": (INT, 1),
        "test_sqnorm": (FLOAT, 3),
        "test_ip": (FLOAT, 5),
        "test_loss": (FLOAT, 3),
        "test_margin": (FLOAT, 3),
        "gram": (FLOAT, 4),
        "group_ptr": (INT, 1),
        "group_members": (INT, 1),
        "proj_grad": (FLOAT, 3),
        "one_minus_p": (FLOAT, 2),
        "ggn": (FLOAT, 2),
        "test_proj_grad": (FLOAT, 3),
        "test_one_minus_p": (FLOAT, 2),
    }

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
                f"signals {self._where()} has unknown mode {echo(self.meta.get('mode'))}; "
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
        if min(n, c, r, b) < 1:
            raise InputFileError(
                f"signals {self._where()} is empty ({n} training points, {c} checkpoints, "
                f"{r} probe pairs of {b} points); re-create it with train-collect."
            )
        self.check_shape("probe_idx", (c, r, 2, b))
        # models: main and auxiliary, or the main model alone (collect.auxiliary)
        mdl = self["sqnorm"].shape[0] if self["sqnorm"].ndim == 3 else 2
        if mdl not in (1, 2):
            raise InputFileError(
                f"signals array 'sqnorm' has {mdl} models, expected 1 (main) or 2 (main and "
                "auxiliary); the file is inconsistent; re-create it with fine train-collect."
            )
        for k in ("sqnorm", "loss", "margin"):
            self.check_shape(k, (mdl, c, n))
        self.check_shape("ip", (mdl, c, r, 2, n))
        self.check_shape("probe_sqnorm", (mdl, c, r, 2))
        for k in ("labels", "flip_mask", "clean_labels"):
            if k in self:
                self.check_shape(k, (n,))
        if self["probe_idx"].min(initial=0) < 0 or self["probe_idx"].max(initial=0) >= n:
            raise InputFileError(
                "signals 'probe_idx' points outside the training set; the file is damaged."
            )
        self.require_finite(("lr", "sqnorm", "ip", "probe_sqnorm", "loss", "margin"))
        if self.mode == "test":
            m = self["test_index"].shape[0]
            if m < 1:
                raise InputFileError(
                    "test-mode signals have no test points; re-create them with train-collect."
                )
            self.check_shape("gram", (mdl, c, m, n))
            self.check_shape("test_ip", (mdl, c, r, 2, m))
            self.check_shape("test_sqnorm", (mdl, c, m))
            self.require_finite(("test_ip", "test_sqnorm", "gram"))
            if "group_ptr" in self or "group_members" in self:
                require_arrays(self, ("group_ptr", "group_members"))
                check_groups(self, n)

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
    ARRAYS: ClassVar[dict[str, tuple[str, int]]] = {
        "scores": (FLOAT, 2),
        "query_index": (INT, 1),
        "train_index": (INT, 1),
        "labels": (INT, 1),
        "flip_mask": (BOOL, 1),
        "group_ptr": (INT, 1),
        "group_members": (INT, 1),
        "stderr": (FLOAT, 2),
        "pvalue": (FLOAT, 2),
    }

    @property
    def scores(self) -> np.ndarray:
        return self.arrays["scores"]

    def validate(self, required: tuple[str, ...] | None = None) -> None:
        """Arrays, shapes and values: scores (q, G) of G subsets of n training points,
        finite; stderr and pvalue like scores, p-values in [0, 1]."""
        super().validate(required)
        a = self.arrays
        n = a["train_index"].shape[0] if "train_index" in a else None
        for k in ("labels", "flip_mask"):
            if k in a and n is not None:
                self.check_shape(k, (n,))
        g = None
        if "group_ptr" in a and "group_members" in a:
            check_groups(self, n if n is not None else int(np.iinfo(np.int64).max))
            g = a["group_ptr"].shape[0] - 1
        if "scores" not in a:
            return
        self.check_shape("scores", (None, g))
        q = a["scores"].shape[0]
        if a["scores"].size == 0:
            raise InputFileError(
                f"influence {self._where()} holds no scores; re-create it with fine estimate."
            )
        if "query_index" in a:
            self.check_shape("query_index", (q,))
        for k in ("stderr", "pvalue"):
            if k in a:
                self.check_shape(k, a["scores"].shape)
        self.require_finite(("scores", "stderr", "pvalue"))
        if "pvalue" in a:
            check_range(self, "pvalue", 0.0, 1.0)
        if "stderr" in a:
            check_range(self, "stderr", 0.0, np.inf)

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
    ARRAYS: ClassVar[dict[str, tuple[str, int]]] = {
        "order": (INT, 1),
        "score": (FLOAT, 1),
        "train_index": (INT, 1),
        "is_flipped": (BOOL, 1),
        "label": (INT, 1),
        "group_size": (INT, 1),
        "stderr": (FLOAT, 1),
        "pvalue": (FLOAT, 1),
        "qvalue": (FLOAT, 1),
        "pvalue_typical": (FLOAT, 1),
        "selected": (BOOL, 1),
    }

    def validate(self, required: tuple[str, ...] | None = None) -> None:
        """Every array (G,) like ``order``, whose entries are subset positions 0..G-1."""
        super().validate(required)
        if "order" not in self:
            return
        g = self["order"].shape[0]
        for k in self.ARRAYS:
            if k in self:
                self.check_shape(k, (g,))
        check_range(self, "order", 0, g - 1)

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

    ARRAYS: ClassVar[dict[str, tuple[str, int]]] = {
        "in_mask": (BOOL, 2),
        "loss": (FLOAT, 2),
        "confidence": (FLOAT, 2),
        "mu_true": (FLOAT, 1),
        "mean_diff": (FLOAT, 1),
        "mu_lira": (FLOAT, 1),
        "train_index": (INT, 1),
        "labels": (INT, 1),
        "flip_mask": (BOOL, 1),
    }
    TEST_ARRAYS: ClassVar[dict[str, tuple[str, int]]] = {
        "design": (BOOL, 2),
        "outcome": (FLOAT, 2),
        "mu_true": (FLOAT, 2),
        "test_index": (INT, 1),
        "group_ptr": (INT, 1),
        "group_members": (INT, 1),
        "train_index": (INT, 1),
        "flip_mask": (BOOL, 1),
    }

    @property
    def test_mode(self) -> bool:
        return self.meta.get("mode") == "test"

    def array_spec(self) -> dict[str, tuple[str, int]]:
        return self.TEST_ARRAYS if self.test_mode else self.ARRAYS

    def validate(self, required: tuple[str, ...] | None = None) -> None:
        """Arrays and shapes: self mode (M, n) per model and (n,) per point; test mode
        design (M, G), outcome (M, m) and mu_true (m, G) of G groups of n points."""
        if self.test_mode and required is None:
            required = self.TEST_REQUIRED
        super().validate(required)
        a = self.arrays
        n = a["train_index"].shape[0] if "train_index" in a else None
        if "flip_mask" in a and n is not None:
            self.check_shape("flip_mask", (n,))
        if self.test_mode:
            self._validate_test(n)
            return
        if "in_mask" not in a:
            return
        m, n_in = a["in_mask"].shape
        if m < 2 or n_in < 1:
            raise InputFileError(
                f"truth {self._where()} has {m} model(s) of {n_in} points; re-create it with "
                f"{MADE_BY['truth']}."
            )
        for k in ("loss", "confidence"):
            if k in a:
                self.check_shape(k, (m, n_in))
        for k in ("mu_true", "mean_diff", "mu_lira", "train_index", "labels", "flip_mask"):
            if k in a:
                self.check_shape(k, (n_in,))
        self.require_finite(("loss", "confidence", "mu_true", "mean_diff", "mu_lira"))

    def _validate_test(self, n: int | None) -> None:
        a = self.arrays
        check_groups(self, n if n is not None else int(np.iinfo(np.int64).max))
        g = a["group_ptr"].shape[0] - 1
        m = a["test_index"].shape[0]
        self.check_shape("design", (None, g))
        self.check_shape("outcome", (a["design"].shape[0], m))
        self.check_shape("mu_true", (m, g))
        self.require_finite(("outcome", "mu_true"))


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
