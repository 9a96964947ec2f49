"""Markdown rows (mean ± sd over seeds) from validate JSON reports."""

import json
import sys

import numpy as np

for path in sys.argv[1:]:
    with open(path) as fh:
        rep = json.load(fh)
    print(f"\n{path}: checkpoints {rep['checkpoints']}")
    for m in rep["methods"]:
        s, a = np.array(m["spearman_mu"]), np.array(m["auroc"])
        cells = [m["label"], f"{s.mean():.3f} +- {s.std(ddof=1):.3f}"]
        cells += [f"{a.mean():.3f} +- {a.std(ddof=1):.3f}", f"{m['jaccard']:.3f}"]
        print("| " + " | ".join(cells) + " |")
