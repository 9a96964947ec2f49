"""Keep freed memory in the process while Stage 2 runs (glibc only; elsewhere a no-op).

Stage 2 allocates and frees large work arrays block after block. glibc serves such
arrays from fresh pages (``mmap``) and gives them back when they are freed, so every block
pays the page faults of memory the process has just released; on virtual machines those
are slow and uneven. Inside :func:`keep_freed_memory` freed memory stays in the
allocator's heap and the next block reuses it; on leaving, the defaults are restored and
the heap is trimmed, so the process ends up with no more memory than before.
docs/performance.md ("Stage 2") has the measurements: at 60,000 points x 100
checkpoints, the estimate with p-values took 0.75 s instead of 1.07 s, the defaults 0.39 s
instead of 0.46 s (`benchmarks/stage2_allocator.py`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# mallopt parameters (glibc's malloc.h) and glibc's documented defaults.
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536
# The largest trim threshold (a C int, 2 GiB): freed memory is not given back while kept.
KEEP_TRIM_THRESHOLD = 2**31 - 1

_lock = threading.Lock()
_depth = 0


@functools.cache
def _libc() -> Any:
    """glibc's handle with mallopt and malloc_trim, or None (another C library)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
    except (OSError, AttributeError, TypeError):
        return None
    return libc


@contextmanager
def keep_freed_memory() -> Iterator[bool]:
    """Within the block, freed memory is kept for reuse (no ``mmap`` allocations, no
    trimming); yields whether the allocator could be told so. Nested and concurrent uses
    share one setting, restored when the last leaves."""
    global _depth
    libc = _libc()
    if libc is None:
        yield False
        return
    with _lock:
        _depth += 1
        ok = True
        if _depth == 1:
            ok = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(
                libc.mallopt(M_TRIM_THRESHOLD, KEEP_TRIM_THRESHOLD)
            )
    try:
        yield ok
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
                libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
                libc.malloc_trim(0)
