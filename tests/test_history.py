"""``twinbench history``: one row per run and framework in time order, a plot, and bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
from PIL import Image

from bench.history import history_frame
from bench.runset import load_runs

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "records"
TWINBENCH = [sys.executable, "-m", "bench.cli"]


def test_rows_per_run_and_framework_in_time_order():
    runs = load_runs([FIXTURES])
    frame = history_frame(runs)
    assert len(runs) == 2 and len(frame) == 4
    assert list(frame["framework"]) == ["tf", "torch", "tf", "torch"]
    assert frame["when"].is_monotonic_increasing
    sessions = sorted((json.loads((d / "session.json").read_text()) for d in FIXTURES.glob("repeat-*")),
                      key=lambda s: s["created"])
    assert list(dict.fromkeys(frame["run"])) == [s["run_id"] for s in sessions]
    # The figures are the records' own.
    record = json.loads(next((FIXTURES / "repeat-a").rglob("run.json")).read_text())
    run_a = json.loads((FIXTURES / "repeat-a" / "session.json").read_text())["run_id"]
    row = frame[(frame["run"] == run_a) & (frame["framework"] == "torch")].iloc[0]
    assert row["val_accuracy"] == record["frameworks"]["torch"]["final"]["val_accuracy"]
    assert row["parity"] in ("pass", "fail") and row["parity_worst"] > 0
    assert row["bench_train_img_s_lo"] <= row["bench_train_img_s"] <= row["bench_train_img_s_hi"]


def test_history_command_writes_table_plot_and_csv(tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(FIXTURES, runs)
    out = subprocess.run([*TWINBENCH, "history", str(runs), "-o", str(tmp_path / "h")], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "2 run(s), oldest first" in out.stdout
    assert out.stdout.count("tf ") >= 2 and out.stdout.count("torch ") >= 2
    csv = pd.read_csv(tmp_path / "h" / "history.csv")
    assert len(csv) == 4 and {"commit", "val_accuracy", "bench_train_img_s", "parity_worst"} <= set(csv.columns)
    with Image.open(tmp_path / "h" / "history.png") as im:
        assert im.width > 500 and im.height > 500


def test_history_of_nothing_exits_2(tmp_path):
    out = subprocess.run([*TWINBENCH, "history", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "holds no twinbench run records" in out.stderr
    out = subprocess.run([*TWINBENCH, "history", str(FIXTURES), "--model", "resnet50_c3"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "resnet50_c3" in out.stderr
