"""Threads and determinism: what every result records (``meta["runtime"]``), and the
``--deterministic`` mode of ``fine train-collect``.

With a fixed seed, training is bit-identical from run to run at one thread count. Across
thread counts it is not: a multi-threaded matrix product or reduction sums its terms in
another order, float rounding differs in the last bits, and training amplifies those
differences over the epochs (on the embedded MNIST: 1e-5 of the largest value after 5
epochs between 1 and 2 threads; single entries up to 3.5% apart after a full run). The
deterministic mode therefore runs on one thread, whatever the machine has, and asks
torch for deterministic kernels (cuDNN without autotuning, a fixed cuBLAS workspace), so
that the same seed gives the same arrays on any machine with the same package versions
and device type. It is slower on machines with many cores.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# cuBLAS needs a fixed workspace for deterministic results (CUDA >= 10.2).
CUBLAS_WORKSPACE = ":4096:8"


def info() -> dict[str, Any]:
    """The threads and determinism settings in force: torch's intra- and inter-op
    threads, and whether deterministic algorithms are on."""
    import torch

    return {
        "threads": int(torch.get_num_threads()),
        "interop_threads": int(torch.get_num_interop_threads()),
        "deterministic": bool(torch.are_deterministic_algorithms_enabled()),
    }


@contextmanager
def deterministic(enabled: bool = True) -> Iterator[None]:
    """Inside: one thread and deterministic kernels (see the module text); restored after."""
    if not enabled:
        yield
        return
    import torch

    threads = torch.get_num_threads()
    algorithms = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.set_num_threads(1)
    # warn_only: an operation without a deterministic kernel warns instead of failing
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(algorithms, warn_only=warn_only)
        torch.backends.cudnn.benchmark = benchmark
