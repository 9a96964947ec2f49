"""Retraining ground truth only (no signals): `fine validate`'s models on halves, saved.

python scripts/statistics/make_truth.py CONFIG OUT.npz [--set key=value ...]
"""

from __future__ import annotations

import argparse
import time

from fine_cli.artifacts import save
from fine_cli.config import load_config
from fine_cli.stages import validate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("out")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    args = ap.parse_args()
    cfg = load_config(args.config, args.sets)
    t0 = time.perf_counter()
    truth = validate.run_truth(cfg, lambda i, m: print(f"model {i}/{m}", flush=True))
    save(truth, args.out)
    print(f"{args.out}: {truth['in_mask'].shape[0]} models in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
