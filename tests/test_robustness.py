"""Every hostile input of tests/robustness_cases.py (the table of docs/ROBUSTNESS.md) gets
its documented exit code and one sentence, never a traceback, an internal error, a partial
output, a temporary file or a lock left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import write_config
from tests.robustness_cases import CASES, Case, Env, build_env, case_dir, run_case

# What a refused command may not leave in its directory.
LEFTOVER_SUFFIXES = (".tmp", ".lock")


@pytest.fixture(scope="module")
def env(tiny_signals: Path, tmp_path_factory: pytest.TempPathFactory) -> Env:
    root = tmp_path_factory.mktemp("robustness")
    return build_env(root, tiny_signals, write_config(root / "config.yaml"))


@pytest.mark.parametrize("case", CASES, ids=[f"{c.category}/{c.name}" for c in CASES])
def test_refused_cleanly(case: Case, env: Env) -> None:
    code, out = run_case(case, env)
    assert code == case.code, out
    assert case.needle.lower() in out.lower(), out
    assert "Traceback" not in out and "internal error" not in out, out
    here = case_dir(case, env)
    left = [p.name for p in here.rglob("*") if p.name.endswith(LEFTOVER_SUFFIXES)]
    assert left == [], left
    assert not (here / "out.npz").is_file()  # no output (a FIFO of that name stays one)


def test_the_table_lists_every_case() -> None:
    table = (Path(__file__).parents[1] / "docs" / "ROBUSTNESS.md").read_text()
    missing = [f"{c.category}/{c.name}" for c in CASES if f"`{c.category}/{c.name}`" not in table]
    assert missing == [], f"run scripts/robustness_table.py; missing {missing}"
