"""``twinbench run``: run directories, the session record, bad input, concurrent runs, Ctrl-C, and
(slow) the whole thing end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.run import STEPS, create_run_dir

TWINBENCH = [sys.executable, "-m", "bench.cli"]
NO_WORKERS = ["--skip", "datacheck", "--skip", "parity", "--skip", "train", "--skip", "bench", "--skip", "residuals"]


def tiny_folder(root: Path, per_class: int = 5) -> Path:
    rng = np.random.default_rng(0)
    for name in ("circles", "squares"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / name / f"{i}.jpg")
    return root


def test_run_directories_are_unique_under_concurrency(tmp_path):
    made: list[Path] = []
    threads = [threading.Thread(target=lambda: made.append(create_run_dir(tmp_path))) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 16 and len(set(made)) == 16 and all(p.is_dir() for p in made)


def test_two_concurrent_runs_into_one_directory_use_distinct_ids(tmp_path):
    data = tiny_folder(tmp_path / "data")
    procs = [subprocess.Popen([*TWINBENCH, "run", "--data", str(data), "--out", str(tmp_path / "runs"), *NO_WORKERS,
                               "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    sessions = sorted((tmp_path / "runs").glob("run-*/session.json"))
    assert len(sessions) == 2
    docs = [json.loads(s.read_text()) for s in sessions]
    assert docs[0]["run_id"] != docs[1]["run_id"]
    for session_path, doc in zip(sessions, docs):
        run_dir = session_path.parent
        assert doc["status"] == "complete"
        steps = {st["name"]: st["status"] for st in doc["steps"]}
        assert list(steps) == list(STEPS)
        assert steps["manifest"] == "done" and steps["report"] == "done" and steps["train"] == "skipped"
        assert (run_dir / "manifest.json").is_file() and (run_dir / "report" / "report.html").is_file()
        # Each report comes from its own run only.
        assert doc["run_id"] in (run_dir / "report" / "report.md").read_text()
    for out, _ in outs:
        assert "report:" in out


def test_bad_data_exits_2_with_one_line(tmp_path):
    out = subprocess.run([*TWINBENCH, "run", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "runs")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith("twinbench: error")]
    assert len(errors) == 1 and "missing" in errors[0] and "Traceback" not in out.stderr
    session = json.loads(next((tmp_path / "runs").glob("run-*/session.json")).read_text())
    assert session["status"] == "failed" and session["steps"][0]["status"] == "failed"


def test_train_and_bench_steps_call_their_commands_functions(tmp_path, monkeypatch):
    """The train and bench steps call bench.train.train and bench.benchmark.bench (what the
    commands call) with those commands' own defaults plus the run's values, and report the paths
    those functions return; no twinbench child process is started, nothing is globbed."""
    from bench import benchmark, run, train
    from bench.run import command_arguments

    calls: dict[str, object] = {}

    def fake_train(args, run_dir):
        calls["train"] = (args, run_dir)
        (run_dir / "repeat-0").mkdir()
        return run_dir / "repeats.json"

    def fake_bench(args):
        calls["bench"] = args
        return Path(args.out) / "bench-x" / "bench.json", 0

    real_popen = subprocess.Popen

    def no_children(argv, *a, **k):
        assert "bench.cli" not in argv, f"a twinbench child process was started: {argv}"
        return real_popen(argv, *a, **k)  # machine info (uname, git) may still ask

    monkeypatch.setattr(train, "train", fake_train)
    monkeypatch.setattr(benchmark, "bench", fake_bench)
    monkeypatch.setattr(subprocess, "Popen", no_children)
    data = tiny_folder(tmp_path / "data")
    args = command_arguments(run.register, ["--data", str(data), "--out", str(tmp_path / "runs"), "--threads", "2",
                                            "--seed", "200"])
    run_dir = run.create_run_dir(tmp_path / "runs")
    session = run.Session(run_dir, run_dir.name, "quick", "resnet50", ["twinbench", "run"])
    pipe = run.Pipeline(args, session, run.PROFILES["quick"])
    pipe.data()
    pipe.write_manifest()
    out = pipe.train()
    targs, train_dir = calls["train"]
    assert out == str(train_dir / "repeats.json") and train_dir.parent == run_dir
    assert pipe.train_dir == train_dir / "repeat-0"
    assert (targs.profile, targs.repeats, targs.chaos, targs.seed, targs.threads) == ("quick", 3, True, 200, 2)
    assert targs.manifest == str(run_dir / "manifest.json") and targs.verify == "size"
    assert targs.learning_rate is None and targs.resume is None  # the rest: twinbench train's own defaults
    assert pipe.bench() == str(run_dir / "bench-x" / "bench.json")
    bargs = calls["bench"]
    assert bargs.profile == "quick" and bargs.no_save and bargs.out == str(run_dir) and bargs.threads == 2
    assert (run_dir / "logs" / "train.log").is_file() and (run_dir / "logs" / "bench.log").is_file()
    # One executor for every step (--executor ray: one cluster), lent: a step's command leaves it open.
    assert pipe.workers.executor is not None and pipe.workers.executor.name == "local"
    for step_args in (targs, bargs):
        assert step_args._executor is pipe.workers.executor and step_args._executor_owned is False


def test_command_arguments_refuses_an_option_the_command_lacks():
    from bench import train
    from bench.run import command_arguments

    assert command_arguments(train.register, ["--epochs", "3"], seed=5).epochs == 3
    with pytest.raises(TypeError, match="no option reps"):
        command_arguments(train.register, reps=3)


def _wait_for(predicate, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.5)
    return False


@pytest.mark.slow
def test_ctrl_c_keeps_finished_results_and_builds_the_report(tmp_path):
    """SIGINT while training: exit 130, the parity record kept, the report built from what exists."""
    proc = subprocess.Popen([*TWINBENCH, "run", "--out", str(tmp_path / "runs"), "--skip", "bench",
                             "--skip", "datacheck"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)

    def training() -> bool:
        sessions = list((tmp_path / "runs").glob("run-*/session.json"))
        if not sessions:
            return False
        try:
            steps = {st["name"]: st["status"] for st in json.loads(sessions[0].read_text())["steps"]}
        except ValueError:
            return False
        runs = [*sessions[0].parent.glob("train-*/run.json"), *sessions[0].parent.glob("train-*/repeat-0/run.json")]
        return steps.get("train") == "running" and bool(runs)  # one run, or a set's first repeat

    assert _wait_for(training, 900), proc.stderr.read() if proc.poll() is not None else "training never started"
    time.sleep(20)  # into the first epoch
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group, workers too
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err[-3000:]
    run_dir = next((tmp_path / "runs").glob("run-*"))
    session = json.loads((run_dir / "session.json").read_text())
    steps = {st["name"]: st["status"] for st in session["steps"]}
    assert session["status"] == "interrupted"
    assert steps["parity"] in ("done", "failed") and steps["train"] == "interrupted"
    assert steps["residuals"] == "skipped" and steps["report"] == "done"
    assert (run_dir / "parity.json").is_file()
    md = (run_dir / "report" / "report.md").read_text()
    assert "## Parity" in md and "parity.png" in md
    assert "interrupted" in out


@pytest.mark.slow
def test_make_run_end_to_end(tmp_path):
    """The whole ``twinbench run`` on the demo data: every step done, the report complete."""
    started = time.monotonic()
    out = subprocess.run([*TWINBENCH, "run", "--out", str(tmp_path / "runs")], capture_output=True, text=True,
                         timeout=1800)
    wall = time.monotonic() - started
    print(f"twinbench run took {wall:.0f} s")
    run_dir = next((tmp_path / "runs").glob("run-*"))
    session = json.loads((run_dir / "session.json").read_text())
    assert {st["name"]: st["status"] for st in session["steps"]} == {name: "done" for name in STEPS}, out.stderr[-3000:]
    assert out.returncode == 0 and session["status"] == "complete"
    md = (run_dir / "report" / "report.md").read_text()
    for section in ("Summary", "Training", "Parity", "Performance", "Residual structure"):
        assert f"## {section}" in md
    assert "report:" in out.stdout and "final validation accuracy" in out.stdout


@pytest.mark.slow
def test_run_on_ray_runs_every_step_on_one_cluster(tmp_path):
    """``twinbench run --executor ray``: one local cluster for every step (started once), every
    step done, the training cells and the jobs on Ray, the report built."""
    data = tiny_folder(tmp_path / "data", per_class=12)
    out = subprocess.run([*TWINBENCH, "run", "--data", str(data), "--out", str(tmp_path / "runs"), "--epochs", "1",
                          "--repeats", "2", "--threads", "1", "--skip", "bench", "--executor", "ray", "--ray-cpus", "2"],
                         capture_output=True, text=True, timeout=1800)
    run_dir = next((tmp_path / "runs").glob("run-*"))
    session = json.loads((run_dir / "session.json").read_text())
    steps = {st["name"]: st["status"] for st in session["steps"]}
    assert steps == {**{name: "done" for name in STEPS}, "bench": "skipped"}, out.stderr[-3000:]
    assert out.returncode == 0 and session["status"] == "complete"
    assert out.stderr.count("ray: 1 node(s), 2 CPUs") == 1  # started once, shared by the steps
    doc = json.loads(next(run_dir.glob("train-*/repeats.json")).read_text())
    assert [r["attempts"] for r in doc["repeats"]] == [{"tf": 1, "torch": 1}] * 2

