"""Named, independent random streams derived from the seeds in the config."""

from __future__ import annotations

import numpy as np

# One stream per purpose, so that changing e.g. n_train does not move the test subset.
STREAM_SPLIT = 1
STREAM_TRAIN_SUBSET = 2
STREAM_TEST_SUBSET = 3
STREAM_SYNTHETIC = 4
STREAM_FLIP = 5

_UINT64 = (1 << 64) - 1


def stream_rng(seed: int, stream: int) -> np.random.Generator:
    """A generator determined by (seed, stream) alone; any int seed, negative included."""
    return np.random.default_rng([stream, seed & _UINT64])
