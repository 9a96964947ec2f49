"""fine_cli.allocator: freed memory kept while Stage 2 runs, the defaults restored after."""

from __future__ import annotations

import platform

import numpy as np
import pytest

from fine_cli import allocator


class FakeLibc:
    """Records mallopt and malloc_trim calls; mallopt answers ``answer`` (1: accepted)."""

    def __init__(self, answer: int = 1) -> None:
        self.calls: list[tuple] = []
        self.answer = answer

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append(("mallopt", param, value))
        return self.answer

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("malloc_trim", pad))
        return 1


KEEP = [
    ("mallopt", allocator.M_MMAP_MAX, 0),
    ("mallopt", allocator.M_TRIM_THRESHOLD, allocator.KEEP_TRIM_THRESHOLD),
]
RESTORE = [
    ("mallopt", allocator.M_MMAP_MAX, allocator.DEFAULT_MMAP_MAX),
    ("mallopt", allocator.M_TRIM_THRESHOLD, allocator.DEFAULT_TRIM_THRESHOLD),
    ("malloc_trim", 0),
]


def test_keep_then_restore_once_for_nested_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    libc = FakeLibc()
    monkeypatch.setattr(allocator, "_libc", lambda: libc)
    with allocator.keep_freed_memory() as outer:
        assert outer and libc.calls == KEEP
        with allocator.keep_freed_memory() as inner:
            assert inner and libc.calls == KEEP  # the setting is shared, not set again
        assert libc.calls == KEEP  # still inside the outer block
    assert libc.calls == KEEP + RESTORE


def test_restored_when_the_block_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    libc = FakeLibc()
    monkeypatch.setattr(allocator, "_libc", lambda: libc)
    with pytest.raises(RuntimeError), allocator.keep_freed_memory():
        raise RuntimeError("stage 2 failed")
    assert libc.calls == KEEP + RESTORE
    assert allocator._depth == 0


def test_refused_setting_and_other_c_libraries_are_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    libc = FakeLibc(answer=0)  # mallopt refuses
    monkeypatch.setattr(allocator, "_libc", lambda: libc)
    with allocator.keep_freed_memory() as ok:
        assert not ok
    assert libc.calls[-1] == ("malloc_trim", 0)
    monkeypatch.setattr(allocator, "_libc", lambda: None)  # no glibc: nothing to do
    with allocator.keep_freed_memory() as ok:
        assert not ok


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_glibc_accepts_the_setting_and_arrays_work_inside() -> None:
    with allocator.keep_freed_memory() as ok:
        assert ok
        total = sum(float(np.ones(2_000_000).sum()) for _ in range(3))  # 16 MB each
    assert total == 6_000_000.0
