"""`fine estimate` at 60,000 points x 100 checkpoints with freed memory kept during the
estimate (fine_cli/allocator.py, the default) and without, alternating in one process.

    .venv/bin/python benchmarks/stage2_allocator.py [--repeats 8]

Prints, per estimate (the defaults; the defaults with --permutations 999), the median
seconds with their range and spread (max - min) / median.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench import PERMUTATIONS, fake_signals
from fine_cli.stages import estimate


@contextlib.contextmanager
def allocator_defaults() -> Iterator[bool]:
    yield False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=8)
    args = ap.parse_args()
    art = fake_signals(60_000, 100)
    opts = {
        "defaults": estimate.EstimateOptions(),
        f"--permutations {PERMUTATIONS}": estimate.EstimateOptions(permutations=PERMUTATIONS),
    }
    modes = {"kept": estimate.keep_freed_memory, "allocator defaults": allocator_defaults}
    for o in opts.values():  # warm-up
        estimate.run(art, "fine", o)
    times: dict[tuple[str, str], list[float]] = {(k, m): [] for k in opts for m in modes}
    for r in range(args.repeats):
        for mode in list(modes) if r % 2 == 0 else list(modes)[::-1]:
            estimate.keep_freed_memory = modes[mode]  # type: ignore[assignment]
            for name, o in opts.items():
                t0 = time.perf_counter()
                estimate.run(art, "fine", o)
                times[(name, mode)].append(time.perf_counter() - t0)
    for (name, mode), t in times.items():
        med = statistics.median(t)
        print(
            f"{name:>20} | {mode:<18} | {med:.2f} s [{min(t):.2f} - {max(t):.2f}], "
            f"spread {(max(t) - min(t)) / med:.0%}"
        )


if __name__ == "__main__":
    main()
