"""Run every hostile case of tests/robustness_cases.py and write their table (exit code and
message) into docs/ROBUSTNESS.md, between the markers.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/robustness_table.py

Cases run through the CLI in this process, each in its own temporary directory, whose path
the table shows as ``DIR``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import write_config  # noqa: E402
from tests.robustness_cases import CASES, build_env, first_message, run_case  # noqa: E402

DOC = ROOT / "docs" / "ROBUSTNESS.md"
BEGIN, END = "<!-- cases: begin -->", "<!-- cases: end -->"
# Characters of a message shown in the table.
MAX_MESSAGE = 400


def main() -> int:
    import torch

    import fine_cli

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="fine-robustness-") as tmp:
        root = Path(tmp)
        cfg = write_config(root / "tiny.yaml")
        signals = root / "tiny-signals.npz"
        fine_cli.save(fine_cli.train_collect(str(cfg)), str(signals))
        env = build_env(root / "env", signals, cfg)
        rows, failed = [], []
        for case in CASES:
            code, out = run_case(case, env)
            ok = code == case.code and case.needle.lower() in out.lower()
            ok = ok and "Traceback" not in out and "internal error" not in out
            if not ok:
                failed.append(f"{case.category}/{case.name}: {code} {out[-300:]}")
            msg = first_message(out).replace(str(env.dir), "DIR").replace(str(root), "DIR")
            if len(msg) > MAX_MESSAGE:
                msg = msg[: MAX_MESSAGE - 3] + "..."
            msg = msg.replace("|", "\\|")
            what = case.what.replace("|", "\\|")
            rows.append(f"| `{case.category}/{case.name}` | {what} | {code} | {msg} |")
    table = "\n".join(
        [
            BEGIN,
            f"{len(CASES)} cases, {len(CASES) - len(failed)} refused as documented.",
            "",
            "| case | input | exit | message |",
            "|---|---|---|---|",
            *rows,
            END,
        ]
    )
    text = DOC.read_text()
    start, stop = text.index(BEGIN), text.index(END) + len(END)
    DOC.write_text(text[:start] + table + text[stop:])
    for f in failed:
        print("NOT AS DOCUMENTED:", f, file=sys.stderr)
    print(f"{len(CASES)} cases, {len(failed)} not as documented -> {DOC}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
