"""The per-check figures of the parity records beside this script, as one markdown table:
for each check the cell nearest its limit (its cross error / its limit) and the verdict.

    python reports/keras-torch/parity/summary.py > reports/keras-torch/parity/summary.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from bench.parity_table import check_summary  # noqa: E402

HERE = Path(__file__).resolve().parent
ORDER = ["tf_keras-torch", "keras-torch_torch", "tf_torch"]


def main() -> None:
    rows = []
    for path in sorted(HERE.glob("*.json"), key=lambda p: (ORDER.index(p.stem.rsplit("-float", 1)[0]), p.stem)):
        result = json.loads(path.read_text())
        arms = result["arms"]
        cells = {col: f"{s['value']:.1e} / {s['limit']:.1e}" if s["value"] is not None else "-"
                 for col, s in check_summary(result).items()}
        rows.append({"reference": arms["reference"], "candidate": arms["candidate"], "dtype": result["config"]["dtype"],
                     "record": path.name, "verdict": result["verdict"], **cells,
                     "seconds": result["seconds"]["total"]})
    frame = pd.DataFrame(rows)
    print("Worst cell per check: cross error / its limit (float32: calibrated, K x the larger own error; "
          "float64: the fixed table). 224 px, batch 2, seed 0, calibrated random weights.\n")
    print("| " + " | ".join(frame.columns) + " |")
    print("|" + " --- |" * len(frame.columns))
    for row in frame.astype(str).itertuples(index=False):
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
