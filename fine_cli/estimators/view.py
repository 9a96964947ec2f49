"""The numeric view of a :class:`fine_cli.results.Signals` result that methods read."""

from __future__ import annotations

from fine_cli.estimators import less, projected
from fine_cli.estimators.samples import SignalView
from fine_cli.results import Signals, check_shape, require_finite


def signal_view(signals: Signals) -> SignalView:
    """Validate ``signals`` (shapes, values) and build the view the methods use."""
    signals.validate()
    sig = SignalView(
        mode=signals.mode,
        lr=signals["lr"],
        probe_idx=signals["probe_idx"],
        sqnorm=signals["sqnorm"],
        ip=signals["ip"],
        probe_sqnorm=signals["probe_sqnorm"],
        loss=signals["loss"],
        margin=signals["margin"],
    )
    if signals.mode == "test":
        sig.gram, sig.test_ip = signals["gram"], signals["test_ip"]
        sig.test_sqnorm = signals["test_sqnorm"]
        if "group_ptr" in signals:
            sig.group_ptr, sig.group_members = signals["group_ptr"], signals["group_members"]
    projected.attach(signals, sig)  # trak / if features, when train-collect stored them
    less.attach(signals, sig)  # LESS's preconditioned inner products (fine_cli/llm/collect.py)
    _attach_optional(signals, sig)
    return sig


def _attach_optional(signals: Signals, sig: SignalView) -> None:
    """The arrays that train-collect stores only when asked for: out-of-fold probabilities
    (confident), held-out loss per checkpoint (--checkpoints auto) and the probe batches'
    second moments (rb); shapes and values checked here."""
    n, c = sig.n_train, sig.n_checkpoints
    sig.labels = signals["labels"]
    if "oof_probs" in signals:
        check_shape(signals, "oof_probs", (n, None))
        sig.oof_probs = signals["oof_probs"]
    if "heldout_loss" in signals:
        check_shape(signals, "heldout_loss", (c,))
        sig.heldout_loss = signals["heldout_loss"]
    if "ip2" in signals:
        check_shape(signals, "ip2", sig.ip.shape[1:])  # (C, R, 2, n): main model
        sig.ip2 = signals["ip2"]
    require_finite(signals, ("oof_probs", "heldout_loss", "ip2"))
