"""The executor seam on Ray (``--executor ray``): the same histories as the local executor, the
data check on the node, a node lost in the middle of a sweep, Ctrl-C and resume.

Framework-free here: the workers run in subprocesses of Ray's workers. The Ray clusters are
local (loopback): ``twinbench train --executor ray`` starts one with ``--ray-cpus``, and the
multi-node test simulates three nodes on this machine with ``ray.cluster_utils.Cluster``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import nodedata, results
from bench.dataset import load_manifest
from bench.errors import UserError, WorkerError

from tests.test_train import REPO, TINY, cli, tiny  # noqa: F401  (tiny: the 2 x 12 JPEG manifest fixture)

ray = pytest.importorskip("ray")

KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "step_loss")
SWEEP = ["train", "--framework", "torch", *TINY, "--epochs", "1", "--threads", "1", "--deterministic",
         "--progress-interval", "0"]


def _histories(set_dir: Path, repeats: int) -> list:
    out = []
    for i in range(repeats):
        record = results.load_record(set_dir / f"repeat-{i}")
        out.append(([{k: e[k] for k in KEYS} for e in record.history("torch")], record.framework("torch")["predictions"]))
    return out


def _set_dir(out: Path) -> Path:
    (found,) = list(out.glob("train-*"))
    return found


def _corrupt_copy(tiny_manifest: Path, dest: Path) -> tuple[Path, str]:
    """A copy of the tiny data with one image changed (same size, other bytes); returns it and that file."""
    manifest = load_manifest(tiny_manifest, verify="none")
    victim = manifest.files[3].path
    for e in manifest.files:
        (dest / e.path).parent.mkdir(parents=True, exist_ok=True)
        (dest / e.path).write_bytes((Path(manifest.root) / e.path).read_bytes())
    data = bytearray((dest / victim).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (dest / victim).write_bytes(bytes(data))
    return dest, victim


def test_the_local_executor_is_the_default_and_never_imports_ray():
    code = ("import sys; from bench.cli import build_parser; from bench import executor; "
            "e = executor.from_args(build_parser().parse_args(['train'])); print(e.name, 'ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.stdout.split() == ["local", "False"], out.stderr[-2000:]
    out = cli("train", "--ray-address", "127.0.0.1:1", "--out", "/nonexistent-never-made")
    assert out.returncode == 2 and "--ray-address 127.0.0.1:1 needs --executor ray" in out.stderr


# ---- the node's data: no Ray needed ----------------------------------------------------------------
def test_node_fills_its_cache_once_and_refuses_a_copy_that_differs(tiny, tmp_path, monkeypatch):
    manifest = load_manifest(tiny, verify="none")
    monkeypatch.setenv(nodedata.CACHE_ENV, str(tmp_path / "cache"))
    fetched = []

    def fetch():
        fetched.append(1)
        return nodedata.pack_images(manifest)

    root = nodedata.node_images(manifest, node="a" * 56, fetch=fetch)
    assert nodedata.node_images(manifest, node="a" * 56, fetch=fetch) == root and fetched == [1]  # once per node
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg")) == sorted(e.path for e in manifest.files)

    shared, victim = _corrupt_copy(tiny, tmp_path / "shared")
    with pytest.raises(UserError) as err:
        nodedata.node_images(manifest, node="b" * 56, shared_root=shared)
    message = str(err.value)
    assert "\n" not in message and str(shared / victim) in message and "differs from the manifest" in message
    assert message.startswith("node bbbbbbbbbbbb: ")
    (shared / victim).unlink()
    with pytest.raises(UserError, match=f"{shared / victim} is missing"):
        nodedata.node_images(manifest, node="b" * 56, shared_root=shared)


def test_a_node_whose_copy_differs_refuses_with_one_line_naming_the_file(tiny, tmp_path):
    """End to end: the node's cache holds a changed image; the task refuses before any worker
    starts, the command exits 2 with one line, the record says why."""
    manifest = load_manifest(tiny, verify="none")
    cache = tmp_path / "node-cache"
    copy, victim = _corrupt_copy(tiny, cache / manifest.fingerprint[:32])
    (copy / nodedata.COMPLETE_NAME).write_text(manifest.fingerprint + "\n")
    env = {**os.environ, nodedata.CACHE_ENV: str(cache)}
    out = cli(*SWEEP, "--manifest", str(tiny), "--repeats", "2", "--executor", "ray", "--ray-cpus", "2",
              "--out", str(tmp_path / "runs"), "--quiet", env=env, timeout=300)
    assert out.returncode == 2, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("twinbench: error: node ") and f"{copy / victim} differs from the manifest" in last
    set_dir = _set_dir(tmp_path / "runs")
    refused = [results.load_record(set_dir / f"repeat-{i}").framework("torch") for i in range(2)]
    assert any(r["status"] == "failed" and victim in (r["message"] or "") for r in refused)
    assert not any(r["history"] for r in refused)  # no worker trained on it
    assert "[torch] epoch" not in out.stderr


# ---- the same numbers as the local executor ----------------------------------------------------------
@pytest.mark.slow
def test_ray_gives_the_local_executors_histories_bit_for_bit(tiny, tmp_path):
    local = cli(*SWEEP, "--manifest", str(tiny), "--repeats", "2", "--out", str(tmp_path / "local"), "--quiet")
    assert local.returncode == 0, local.stderr[-3000:]
    assert "ray:" not in local.stderr  # the local executor never starts Ray
    remote = cli(*SWEEP, "--manifest", str(tiny), "--repeats", "2", "--executor", "ray", "--ray-cpus", "2",
                 "--out", str(tmp_path / "ray"), "--quiet")
    assert remote.returncode == 0, remote.stderr[-3000:]
    a, b = _set_dir(tmp_path / "local"), _set_dir(tmp_path / "ray")
    assert _histories(a, 2) == _histories(b, 2)  # deterministic torch: bit-identical, predictions too
    doc = json.loads((b / "repeats.json").read_text())
    assert [r["attempts"] for r in doc["repeats"]] == [{"torch": 1}, {"torch": 1}]
    assert "attempts" not in json.loads((a / "repeats.json").read_text())["repeats"][0]
    # The record's files came back from the node: the checkpoint the record names is there.
    run = results.load_record(b / "repeat-1").framework("torch")
    assert (b / "repeat-1" / run["checkpoint"]).is_file() and (b / "repeat-1" / "torch" / "predictions.npz").is_file()
    # Two 1-thread cells at a time on 2 CPUs: both had started before either ended.
    lines = [line for line in remote.stderr.splitlines() if line.startswith("ray: repeat-")]
    assert [("started" in line) for line in lines[:2]] == [True, True], lines


# ---- the local executor, N cells at a time ------------------------------------------------------------
def test_local_parallel_runs_n_cells_at_a_time_and_one_callback_at_a_time(tmp_path, monkeypatch):
    import threading
    from types import SimpleNamespace

    from bench import runner
    from bench.executor import LocalExecutor

    active, peak, lock = [0], [0], threading.Lock()

    def fake_worker(framework, task, job, *, job_dir, config):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.2)
        with lock:
            active[0] -= 1
        if job["fail"]:
            raise WorkerError(f"{framework} worker (train) exited with code 1")
        return SimpleNamespace(result={"status": "complete", "n": job["n"]})

    monkeypatch.setattr(runner, "run_worker", fake_worker)
    cells = [SimpleNamespace(key=f"repeat-{n}/torch", framework="torch", job={"n": n, "fail": n == 2},
                             fw_dir=tmp_path / str(n), wconfig=None) for n in range(5)]
    inside, overlap, done = [0], [], {}

    def callback(name):
        def call(cell, outcome=None):
            inside[0] += 1
            overlap.append(inside[0])
            time.sleep(0.01)
            if outcome is not None:
                done[cell.key] = outcome
            inside[0] -= 1
        return call

    LocalExecutor(2).run(cells, on_start=callback("start"), on_done=callback("done"))
    assert peak[0] == 2  # two workers at a time, never three
    assert max(overlap) == 1  # the callbacks (they write the records) never overlap
    assert sorted(done) == [c.key for c in cells]
    assert done["repeat-2/torch"].error is not None and done["repeat-1/torch"].result["n"] == 1
    assert all(o.executor == {"name": "local", "parallel": 2} for o in done.values())
    assert LocalExecutor(2).concurrent and not LocalExecutor().concurrent


def test_parallel_is_the_local_executors_option():
    out = cli("train", "--executor", "ray", "--parallel", "2", "--manifest", "nowhere.json")
    assert out.returncode == 2 and "--parallel 2 is the local executor's" in out.stderr


@pytest.mark.slow
def test_local_parallel_gives_the_one_at_a_time_histories_bit_for_bit(tiny, tmp_path):
    one = cli(*SWEEP, "--manifest", str(tiny), "--repeats", "2", "--out", str(tmp_path / "one"), "--quiet")
    assert one.returncode == 0, one.stderr[-3000:]
    two = cli(*SWEEP, "--manifest", str(tiny), "--repeats", "2", "--parallel", "2", "--out", str(tmp_path / "two"),
              "--quiet")
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _set_dir(tmp_path / "one"), _set_dir(tmp_path / "two")
    assert _histories(a, 2) == _histories(b, 2)  # --threads 1 both ways, deterministic torch: bit-identical
    lines = [line for line in two.stderr.splitlines() if line.startswith("local: repeat-")]
    assert [("started" in line) for line in lines[:2]] == [True, True], lines  # side by side
    assert results.load_record(b / "repeat-1").framework("torch")["executor"] == {"name": "local", "parallel": 2}


# ---- faults -------------------------------------------------------------------------------------------
def _read_until(proc: subprocess.Popen, predicate, timeout: float, seen: list[str]) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if predicate(line):
            return line
    raise AssertionError("did not see the expected line; output:\n" + "".join(seen[-30:]))


@pytest.mark.slow
def test_a_node_removed_mid_sweep_loses_and_duplicates_no_repeat(tiny, tmp_path):
    from ray.cluster_utils import Cluster

    # Fast failure detection, so a lost node is noticed in seconds (Ray's own tests do the same).
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False,
        "_system_config": {"health_check_initial_delay_ms": 0, "health_check_period_ms": 1000,
                           "health_check_failure_threshold": 3}})
    try:
        nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        proc = subprocess.Popen([sys.executable, "-m", "bench.cli", *SWEEP, "--manifest", str(tiny), "--repeats", "3",
                                 "--executor", "ray", "--ray-address", cluster.address, "--ray-retries", "3",
                                 "--out", str(tmp_path), "--quiet"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        seen: list[str] = []
        try:
            victim = nodes[0]
            line = _read_until(proc, lambda s: s.startswith("ray: repeat-") and f"on node {victim.node_id[:12]}" in s,
                               240, seen)
            key = line.split()[1]
            time.sleep(4)  # its worker is starting or training: either way the node takes it down
            cluster.remove_node(victim, allow_graceful=False)
            stdout, rest = proc.communicate(timeout=600)
        finally:
            proc.kill()
        stderr = "".join(seen) + rest
        assert proc.returncode == 0, stderr[-4000:]
    finally:
        cluster.shutdown()
    set_dir = _set_dir(tmp_path)
    doc = json.loads((set_dir / "repeats.json").read_text())
    assert [r["index"] for r in doc["repeats"]] == [0, 1, 2] and {r["status"] for r in doc["repeats"]} == {"complete"}
    assert [r["seed"] for r in doc["repeats"]] == [123, 124, 125]
    assert doc["statistics"]["per_framework"]["torch"]["val_accuracy"]["n"] == 3  # each repeat counted once
    for i in range(3):
        run = results.load_record(set_dir / f"repeat-{i}").framework("torch")
        assert [e["epoch"] for e in run["history"]] == [1], i  # one epoch, once: nothing lost or duplicated
    hit = results.load_record(set_dir / key.split("/")[0]).framework("torch")["executor"]
    assert hit["attempts"] >= 2 and hit["nodes"][0] == victim.node_id[:12] and hit["node"] != victim.node_id[:12]
    assert f"ray: {key} started on node {nodes[1].node_id[:12]}" in stderr  # retried on the node that stayed


@pytest.mark.slow
def test_ctrl_c_keeps_finished_cells_and_resume_runs_only_the_missing_ones(tiny, tmp_path):
    # SIGINT back to its default in the child: under a shell's background job (nohup ... &) it is
    # ignored, Python then installs no KeyboardInterrupt handler, and the Ctrl-C would be lost.
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", *SWEEP, "--manifest", str(tiny), "--repeats", "3",
                             "--executor", "ray", "--ray-cpus", "1", "--out", str(tmp_path), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen: list[str] = []
    try:
        first = _read_until(proc, lambda s: s.startswith("ray: repeat-") and " ended (ok" in s, 300, seen)
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, "".join(seen)[-3000:] + rest[-3000:]
    done = first.split()[1].split("/")[0]
    set_dir = _set_dir(tmp_path)
    kept = (set_dir / done / "run.json").read_text()
    statuses = {i: results.load_record(set_dir / f"repeat-{i}").status for i in range(3)}
    assert statuses[int(done.split("-")[1])] == "complete"
    assert sorted(statuses.values()).count("complete") == 1 and set(statuses.values()) <= {"complete", "interrupted"}

    out = cli("train", "--resume", str(set_dir), "--executor", "ray", "--ray-cpus", "1", "--quiet")
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"repeat {done.split('-')[1]}: complete, skipped" in out.stderr
    assert "2 cell(s) to train on ray" in out.stderr  # only the missing cells ran again
    assert (set_dir / done / "run.json").read_text() == kept  # a finished record is left untouched
    doc = json.loads((set_dir / "repeats.json").read_text())
    assert {r["status"] for r in doc["repeats"]} == {"complete"}
    assert doc["statistics"]["per_framework"]["torch"]["val_accuracy"]["n"] == 3


# ---- every other worker job: bench rows, parity sides, the init export, ... ---------------------------
MARGS = {"model": "resnet50", "classes": 2, "input_size": 32, "pooling": "global"}


def test_a_job_runs_on_a_node_from_what_its_task_carries(tiny, tmp_path, monkeypatch):
    """Ray-free, the node side of a job (``run_job_here``) from the spec the driver builds
    (``job_spec``): the bundle it reads travels as bytes, the file it writes comes back as bytes
    (nothing is written at the driver's path on the node), the manifest's images come from the
    node's checked cache; the result is the local executor's, with the driver's paths in it."""
    from bench.executor import Job, LocalExecutor
    from bench.ray_executor import job_spec, run_job_here
    from bench.runner import WorkerConfig
    from bench.weights import WeightBundle

    monkeypatch.setenv(nodedata.CACHE_ENV, str(tmp_path / "cache"))
    config = WorkerConfig(quiet=True, threads=1)
    manifest = load_manifest(tiny, verify="none")
    local_out, node_out = tmp_path / "local.npz", tmp_path / "node.npz"
    LocalExecutor().call(Job("torch", "export", {**MARGS, "seed": 1, "out": str(local_out)}, outputs=("out",)), config)
    spec = job_spec(Job("torch", "export", {**MARGS, "seed": 1, "out": str(node_out)}, outputs=("out",)), config,
                    key="job-1/export/torch", data_root=None, job_dir=tmp_path / "j1")
    done = run_job_here(spec, None, node="n" * 56, attempt=1, fetch=None)
    assert not node_out.exists() and set(done["files"]) == {"out"} and done["result"] == {"out": str(node_out)}
    node_out.write_bytes(done["files"]["out"])
    a, b = WeightBundle.load(local_out).arrays, WeightBundle.load(node_out).arrays
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)

    images = {"manifest": str(tiny), "indices": [0, 1], "pipeline": {"image_size": 32}}
    job = Job("torch", "residual_ratios", {**MARGS, **images, "stages": {"init": str(local_out)}},
              inputs=("stages.init",), manifest="manifest")
    here = LocalExecutor().call(job, config).result
    fetched = []
    there = run_job_here(job_spec(job, config, key="job-2/residual_ratios/torch", data_root=None,
                                  job_dir=tmp_path / "j2"), None,
                         node="n" * 56, attempt=1, fetch=lambda: fetched.append(1) or nodedata.pack_images(manifest))
    assert fetched == [1] and (tmp_path / "cache" / manifest.fingerprint[:32] / nodedata.COMPLETE_NAME).is_file()
    assert there["result"] == here and here["stages"]["init"]["weights"] == str(local_out)

    # A node whose copy differs refuses before any worker starts, naming the file.
    victim = tmp_path / "cache" / manifest.fingerprint[:32] / manifest.files[0].path
    victim.write_bytes(victim.read_bytes()[::-1])
    refused = run_job_here(job_spec(job, config, key="job-3/residual_ratios/torch", data_root=None,
                                    job_dir=tmp_path / "j3"), None,
                           node="n" * 56, attempt=1, fetch=lambda: pytest.fail("a complete cache is not refilled"))
    assert "result" not in refused and f"{victim} differs from the manifest" in refused["user_error"]


@pytest.mark.slow
def test_bench_rows_and_parity_sides_on_ray_give_the_local_figures(tiny, tmp_path):
    """``twinbench bench`` and ``twinbench parity`` with ``--executor ray``: every row and side a Ray
    task (the rows all on one node, each row saying so); parity's errors bit-identical to the local
    run's (the same arrays on the same machine), the bench rows the same rows (times differ)."""
    bench = ["bench", "--frameworks", "torch", "--models", "ours", "--modes", "train", "--precision", "fp32",
             "--layout", "nhwc", "--compile", "eager", "--input-size", "32",
             "--pooling", "global", "--classes", "2", "--batch", "2", "--warmup", "1", "--repeats", "5", "--steps", "1",
             "--memory-steps", "1", "--peak-size", "64", "--threads", "1", "--data", str(tiny), "--no-save", "--quiet"]
    parity = ["parity", "--input-size", "32", "--pooling", "global", "--classes", "2", "--batch", "2",
              "--manifest", str(tiny), "--threads", "1", "--quiet"]
    runs = {}
    for name, extra in (("local", []), ("ray", ["--executor", "ray", "--ray-cpus", "2"])):
        b = cli(*bench, "--out", str(tmp_path / name), *extra, timeout=900)
        assert b.returncode == 0, b.stderr[-3000:]
        p = cli(*parity, "--json", str(tmp_path / f"{name}-parity.json"), *extra, timeout=900)
        assert p.returncode == 0, p.stderr[-3000:]
        (record,) = (tmp_path / name).glob("bench-*/bench.json")
        runs[name] = (json.loads(record.read_text()), json.loads((tmp_path / f"{name}-parity.json").read_text()))
    (lb, lp), (rb, rp) = runs["local"], runs["ray"]
    assert [r["id"] for r in lb["rows"]] == [r["id"] for r in rb["rows"]] and len(rb["rows"]) >= 2
    assert all(r["status"] == "ok" for r in lb["rows"] + rb["rows"])
    assert "executor" not in lb["rows"][0]
    nodes = {r["executor"]["node"] for r in rb["rows"]}
    assert len(nodes) == 1 and all(r["executor"]["name"] == "ray" for r in rb["rows"])
    assert rb["rows"][0]["executor"]["machine"]["cpu"]["cores"] == os.cpu_count()  # the node's machine, here
    pipeline = [r for r in rb["rows"] if r["input"] == "pipeline"]
    assert pipeline and pipeline[0]["manifest"] == str(tiny.resolve()) and "data_root" not in pipeline[0]

    def errors(doc):  # every cell of the table: its error and the limit it was judged by
        return {(row, col): (c["value"], c["limit"]) for row, cols in doc["table"].items()
                for col, c in cols.items() if c is not None}

    assert lp["verdict"] == rp["verdict"] == "pass"
    assert len(errors(lp)) > 20 and errors(lp) == errors(rp)
    # The calibrated bundle (written on the node, sent back) and the decoded batch are the same too.
    assert lp["calibration"] == rp["calibration"] and lp["inputs"] == rp["inputs"]


def test_a_records_machine_is_the_ray_nodes_that_ran_its_workers(tmp_path):
    """A report's conditions name the machines the workers ran on (the executor's record of each
    row or cell), not the driver's; a local record keeps its own machine."""
    from bench.report_records import machine_text
    from bench.runset import Record

    driver = {"node": "laptop", "cpu": {"model": "Driver CPU", "cores": 8}}
    node = {"node": "gpu-box-3", "cpu": {"model": "AMD EPYC 9654", "cores": 192}}
    local = Record("bench", tmp_path / "bench.json", {"machine": driver, "rows": [{"id": "a", "status": "ok"}]})
    assert machine_text(local) == "CPU; Driver CPU (8 cores)"
    rows = [{"id": i, "executor": {"name": "ray", "node": "53c6128b0097", "attempts": 1, "machine": node}} for i in "ab"]
    remote = Record("bench", tmp_path / "bench.json", {"machine": driver, "rows": rows})
    assert machine_text(remote) == "CPU; AMD EPYC 9654 (192 cores) (on Ray: 1 node(s), gpu-box-3)"
    other = {"node": "cpu-box-1", "cpu": {"model": "Intel Xeon", "cores": 2}}
    cells = {"tf": {"executor": {"machine": node}}, "torch": {"executor": {"machine": other}}}
    train = Record("train", tmp_path / "run.json", {"machine": driver, "frameworks": cells})
    assert "AMD EPYC 9654 (192 cores); Intel Xeon (2 cores) (on Ray: 2 node(s), gpu-box-3, cpu-box-1)" in machine_text(train)
