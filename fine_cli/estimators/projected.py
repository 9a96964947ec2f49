"""The projected features that TRAK and influence functions read from a signals file.

``train-collect`` stores them (``fine_cli/features.py``) only when the config lists
``trak`` or ``if``; this module checks them and says what to do when they are missing.

Dimension names: ``E`` models with features, ``n`` training points, ``m`` test points,
``k`` sketch dimension.
"""

from __future__ import annotations

import numpy as np

from fine_cli.errors import InputFileError
from fine_cli.estimators.samples import SignalView
from fine_cli.results import Result, check_shape, require_finite

FEATURE_ARRAYS = ("proj_grad", "one_minus_p", "ggn", "test_proj_grad", "test_one_minus_p")


def attach(art: Result, sig: SignalView) -> None:
    """Check the feature arrays of ``art`` (if any) and set them on ``sig``."""
    if "proj_grad" not in art:
        return
    n = sig.n_train
    check_shape(art, "proj_grad", (None, n, None))
    e, _, k = art["proj_grad"].shape
    if e < 1 or k < 1 or "one_minus_p" not in art:
        raise InputFileError(
            "signals hold an empty or partial set of projected features; "
            "re-create them with train-collect.",
        )
    check_shape(art, "one_minus_p", (e, n))
    if "ggn" in art:
        check_shape(art, "ggn", (k, k))
    present = [a for a in FEATURE_ARRAYS if a in art]
    if sig.mode == "test":
        m = sig.n_queries
        for key, shape in (("test_proj_grad", (e, m, k)), ("test_one_minus_p", (e, m))):
            if key not in art:
                raise InputFileError(
                    f"test-mode signals with projected features lack '{key}'; "
                    "re-create them with train-collect.",
                )
            check_shape(art, key, shape)
    require_finite(art, tuple(present))
    for key in present:
        setattr(sig, key, art[key])


def require(sig: SignalView, method: str, curvature: bool = False) -> None:
    """Refuse, with the fix, signals collected without what ``method`` needs."""
    missing = sig.proj_grad is None or sig.one_minus_p is None
    if sig.mode == "test":
        missing = missing or sig.test_proj_grad is None or sig.test_one_minus_p is None
    if missing:
        raise InputFileError(
            f"method '{method}' needs projected gradients, which these signals lack: "
            "train-collect stores them only when the config lists the method; re-run it "
            f"with --set 'experiment.methods=[fine, tracin, {method}]' (or add '{method}' to "
            "experiment.methods in the config).",
        )
    if curvature and sig.ggn is None:
        raise InputFileError(
            f"method '{method}' needs the Gauss-Newton curvature, which these signals lack "
            "(their features were collected for trak only); add 'if' to experiment.methods "
            "and re-run train-collect.",
        )


def query_rows(a: np.ndarray, queries: slice | None) -> np.ndarray:
    """``a[:, queries]`` of an ``(E, m, ...)`` test-point array."""
    return a[:, queries or slice(None)]
