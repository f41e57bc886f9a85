"""Whether two sets of repeats (twinbench train --repeats N, one per executor) have the same
histories: per repeat and framework, every epoch's step losses, losses, accuracies and validation
figures, compared exactly (bit for bit) and as the largest relative difference.

    python reports/ray/compare_sweeps.py runs/ray-sweep/local runs/ray-sweep/ray
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

KEYS = ("step_loss", "loss", "accuracy", "val_loss", "val_accuracy")


def histories(folder: Path) -> dict[tuple[str, str], list[dict]]:
    (set_dir,) = [p.parent for p in folder.glob("train-*/repeats.json")]
    out = {}
    for run in sorted(set_dir.glob("repeat-*/run.json")):
        record = json.loads(run.read_text())
        for fw, r in record["frameworks"].items():
            out[(run.parent.name, fw)] = r["history"]
    return out


def main(a: str, b: str) -> int:
    ha, hb = histories(Path(a)), histories(Path(b))
    if set(ha) != set(hb):
        print(f"different cells: {sorted(ha)} vs {sorted(hb)}")
        return 1
    identical = True
    for cell in sorted(ha):
        worst = 0.0
        for ea, eb in zip(ha[cell], hb[cell], strict=True):
            for key in KEYS:
                x, y = np.atleast_1d(np.asarray(ea[key], float)), np.atleast_1d(np.asarray(eb[key], float))
                if x.shape != y.shape or not np.array_equal(x, y):
                    identical = False
                worst = max(worst, float(np.max(np.abs(x - y) / np.maximum(np.abs(x), 1e-300))))
        print(f"{cell[0]} {cell[1]}: {len(ha[cell])} epochs, max relative difference {worst:.3g}")
    print("bit-identical histories" if identical else "histories DIFFER")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
