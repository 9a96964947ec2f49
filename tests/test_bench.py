"""`make bench`'s bookkeeping: repeated ratios, the phases of a train-collect run, and the
checkpoints that collect.patience would keep (the collector's own rule)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from benchmarks.bench import Ratio, default_checkpoints, phase_seconds
from fine_cli.batches import TensorPairs
from fine_cli.collector import Collector


def test_ratio_reports_median_range_and_spread() -> None:
    r = Ratio([1.0, 1.2, 1.1, 1.05, 1.3])
    assert r.median == pytest.approx(1.1)
    assert r.spread == pytest.approx(0.3 / 1.1)
    assert r.text() == "1.10 [1.00 - 1.30]"


def test_phase_seconds_split_epochs_from_checkpoints() -> None:
    marks = [
        ("training", 0.0),
        ("collecting", 2.0),
        ("recorded", 2.5),
        ("training", 2.5),
        ("collecting", 4.5),
        ("recorded", 5.25),
        ("done", 6.0),
    ]
    assert phase_seconds(marks) == ([2.0, 2.0], [0.5, 0.75])


@pytest.mark.parametrize("seed", range(20))
def test_default_checkpoints_follow_the_collectors_stopping_rule(seed: int) -> None:
    rng = np.random.default_rng(seed)
    losses = np.cumsum(rng.normal(0.0, 1.0, 30)).tolist()
    patience = int(rng.integers(1, 6))
    data = TensorPairs(torch.randn(4, 2), torch.zeros(4, dtype=torch.long))
    col = Collector(nn.Linear(2, 2), None, data, probe_batch_size=2, patience=patience)
    kept = None
    for c in range(len(losses) + 1):
        if col.stopped:
            kept = c
            break
        if c < len(losses):
            col.heldout_loss.append(losses[c])  # what a checkpoint records
    assert default_checkpoints(losses, patience) == kept
