"""The numeric view of a :class:`fine_cli.results.Signals` result that methods read."""

from __future__ import annotations

from fine_cli.estimators import projected
from fine_cli.estimators.samples import SignalView
from fine_cli.results import Signals


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
    return sig
