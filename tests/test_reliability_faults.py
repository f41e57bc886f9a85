"""Reliability matrix, the faults that need real workers or timing: out of memory, a second process
on a live run, disk full at a checkpoint, Ctrl-C of ``twinbench run``, repeatable parity numbers.

Each test is a row of CASES in tests/test_reliability.py (``covered_by``), so docs/reliability.md
lists it. Non-slow: out of memory and the second process, about 15 s together. Slow ones
(``make test-slow``), measured on 2 cores shared with other jobs (load ~7): disk full at a
checkpoint 263 s (three 1-epoch trainings), Ctrl-C of ``run`` 60 s, two parity runs 46 s.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import results
from tests.data_fixtures import make_class_folder
from tests.test_reliability import REPO, TRAIN_TINY, TWINBENCH, error_message, twinbench


def wrapper_python(path: Path, line: str) -> str:
    """A worker 'Python' that applies ``line`` (e.g. a ulimit) then runs this Python."""
    path.write_text(f"#!/usr/bin/env bash\n{line}\nexec {sys.executable} \"$@\"\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


@pytest.fixture()
def tiny(tmp_path: Path) -> Path:
    """tmp_path/data (2 classes x 6 JPEGs) and its manifest tmp_path/m.json."""
    from bench.dataset import build_manifest

    make_class_folder(tmp_path / "data", {"cats": 6, "dogs": 6})
    build_manifest(tmp_path / "data").save(tmp_path / "m.json")
    return tmp_path


def only_run(out: Path) -> Path:
    dirs = sorted(out.glob("train-*"))
    assert len(dirs) == 1, dirs
    return dirs[0]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def no_leftovers(root: Path) -> None:
    leftovers = list(root.rglob(".*.tmp"))
    assert not leftovers, f"half-written files left: {leftovers}"


# ---- out of memory -----------------------------------------------------------------------------------
def test_out_of_memory_is_a_recorded_failure_not_a_smaller_batch(tiny: Path) -> None:
    """2.5 GB of address space for the PyTorch worker: here torch cannot even map its libraries; with
    a little more (4 GB, measured) oneDNN fails in the first backward pass. Either way: a failed run
    that says 'out of memory?' and what to do, batch 4 in the record, no epoch, no final figures."""
    py = wrapper_python(tiny / "small-python", "ulimit -v 2500000")
    proc = twinbench(["train", "--framework", "torch", "--manifest", "m.json", *TRAIN_TINY, "--torch-python", py,
                      "--out", "runs", "--quiet"], tiny)
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("twinbench: error: PyTorch: PyTorch worker (train)")
    assert "out of memory?" in last and "lower --batch-size" in last and "nothing was retried smaller" in last
    record = results.load_record(only_run(tiny / "runs"))
    run = record.framework("torch")
    assert record.status == "failed" and run["status"] == "failed" and "out of memory?" in run["message"]
    assert record.config["batch_size"] == 4  # never a silently smaller batch
    assert run["history"] == [] and run["final"] == {} and run["epochs_completed"] == 0
    no_leftovers(tiny)


# ---- a second process on a live run ------------------------------------------------------------------
def test_second_process_on_a_live_run_is_refused(tiny: Path) -> None:
    """While one ``train`` works on a run (its worker here a stand-in that sleeps), a ``--resume`` of
    the same run is refused with the owner's pid, and changes nothing."""
    sleeper = wrapper_python(tiny / "sleepy-python", "sleep 60")
    first = subprocess.Popen([*TWINBENCH, "train", "--framework", "torch", "--manifest", "m.json", *TRAIN_TINY,
                              "--torch-python", sleeper, "--out", "runs", "--quiet"], cwd=tiny,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not list((tiny / "runs").glob("train-*/torch/job")):
            time.sleep(0.2)
        run_dir = only_run(tiny / "runs")
        time.sleep(0.5)
        before = sha(run_dir / "run.json")
        second = twinbench(["train", "--resume", str(run_dir), "--quiet"], tiny)
        assert second.returncode == 2, second.stderr[-2000:]
        message = error_message(second.stderr)
        assert f"is in use by twinbench process {first.pid}" in message and "wait for it" in message
        assert len(message.splitlines()) == 1 and "Traceback" not in second.stderr
        assert sha(run_dir / "run.json") == before
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the group: the sleeping stand-in worker too
        first.communicate(timeout=30)


# ---- disk full at a checkpoint -----------------------------------------------------------------------
@pytest.mark.slow
def test_disk_full_at_a_checkpoint_keeps_the_previous_one(tiny: Path) -> None:
    """Epoch 1 trains normally; the resumed epoch 2 runs with 'ulimit -f' (files past 1 MB fail with
    EFBIG, as on a full disk) and cannot write its checkpoint. Epoch 1's checkpoint and the record
    survive intact, the message names the file, and a resume with space finishes the run."""
    first = twinbench(["train", "--framework", "torch", "--manifest", "m.json", *TRAIN_TINY, "--out", "runs",
                       "--quiet"], tiny)
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = only_run(tiny / "runs")
    kept = {p: sha(p) for p in (run_dir / "torch").glob("ckpt-epoch-001*")}
    assert kept, list((run_dir / "torch").iterdir())

    full = wrapper_python(tiny / "full-disk-python", "ulimit -f 1024")
    proc = twinbench(["train", "--resume", str(run_dir), "--epochs", "2", "--torch-python", full, "--quiet"], tiny)
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "ckpt-epoch-002" in last and "cannot write" in last and "--resume" in last, last
    assert {p: sha(p) for p in kept} == kept
    assert not list((run_dir / "torch").glob("ckpt-epoch-002*"))
    record = results.load_record(run_dir)
    assert record.status == "failed" and [e["epoch"] for e in record.history("torch")] == [1]
    no_leftovers(tiny)

    again = twinbench(["train", "--resume", str(run_dir), "--epochs", "2", "--quiet"], tiny)
    assert again.returncode == 0, again.stderr[-3000:]
    record = results.load_record(run_dir)
    assert record.status == "complete" and [e["epoch"] for e in record.history("torch")] == [1, 2]


# ---- Ctrl-C of twinbench run ---------------------------------------------------------------------------
@pytest.mark.slow
def test_ctrl_c_of_run_keeps_results_and_builds_the_report(tiny: Path) -> None:
    """SIGINT to the process group (a terminal's Ctrl-C) while training: exit 130, the session says
    interrupted, the manifest and the training record are kept, the report is built from them."""
    proc = subprocess.Popen([*TWINBENCH, "run", "--data", "data", "--out", "runs", "--epochs", "20",
                             "--skip", "datacheck", "--skip", "parity", "--skip", "bench", "--skip", "residuals"],
                            cwd=tiny, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 300
        # state.json appears once a worker has started training: FW/state.json of one run, or
        # repeat-N/FW/state.json of the set of repeats `twinbench run` trains by default.
        while time.monotonic() < deadline and not list((tiny / "runs").glob("run-*/train-*/**/state.json")):
            time.sleep(0.5)
        assert list((tiny / "runs").glob("run-*/train-*/**/state.json")), "training never started"
        time.sleep(2)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    assert "interrupted; finished results and the report are kept" in err.strip().splitlines()[-1]
    run_dir, = (tiny / "runs").glob("run-*")
    session = json.loads((run_dir / "session.json").read_text())
    steps = {st["name"]: st["status"] for st in session["steps"]}
    assert session["status"] == "interrupted" and steps["train"] == "interrupted"
    assert steps["manifest"] == "done" and steps["report"] == "done"
    assert (run_dir / "manifest.json").is_file() and (run_dir / "report" / "report.html").is_file()
    train_dir = only_run(run_dir)
    record = results.load_record(train_dir if (train_dir / "run.json").is_file() else train_dir / "repeat-0")
    assert record.status == "interrupted"
    assert any("interrupted" in (r.get("message") or "") for r in record.frameworks.values())
    no_leftovers(tiny)


# ---- determinism ---------------------------------------------------------------------------------------
def _numbers(doc, prefix: str = "") -> dict[str, float]:
    """Every number in a JSON document by its path, timing and dates left out."""
    if isinstance(doc, dict):
        out: dict[str, float] = {}
        for key, value in doc.items():
            if any(word in key for word in ("time", "seconds", "created", "elapsed", "_s")):
                continue
            out.update(_numbers(value, f"{prefix}.{key}"))
        return out
    if isinstance(doc, list):
        out = {}
        for i, value in enumerate(doc):
            out.update(_numbers(value, f"{prefix}[{i}]"))
        return out
    if isinstance(doc, (int, float)) and not isinstance(doc, bool):
        return {prefix: doc}
    return {}


@pytest.mark.slow
def test_two_parity_runs_give_identical_numbers(tmp_path: Path) -> None:
    argv = ["parity", "--checks", "forward", "--input-size", "32", "--pooling", "global", "--batch", "2",
            "--quiet"]
    docs = []
    for name in ("p1.json", "p2.json"):
        proc = twinbench([*argv, "--json", name], tmp_path)
        assert proc.returncode in (0, 1), proc.stderr[-3000:]
        docs.append(json.loads((tmp_path / name).read_text()))
    a, b = (_numbers(d) for d in docs)
    assert len(a) > 20 and a.keys() == b.keys()
    assert a == b, {k: (a[k], b[k]) for k in a if a[k] != b[k]}
