"""Reliability matrix: bad inputs and faults, through the real ``twinbench`` CLI in subprocesses.

    .venv/bin/pytest --framework none tests/test_reliability.py tests/test_reliability_faults.py
    TWINBENCH_UPDATE_DOCS=1 .venv/bin/pytest --framework none tests/test_reliability.py -k docs

CASES is the one table. A row either runs here (``argv``) or names the test that covers it
(``covered_by``: the heavy faults in tests/test_reliability_faults.py and the cases other test files
already drive end to end). Every row that runs checks: the exit code; the error line (from the first
``twinbench...: error`` line on) holds every fragment of ``says``; no traceback for exit 2 (bad
input) or for any case marked ``no_traceback``; each file of ``keeps`` is byte-identical afterwards;
nothing of ``absent`` exists (no work started); no half-written ``.*.tmp`` file is left anywhere.
docs/reliability.md is generated from CASES; a test fails when the committed file differs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest

from tests.data_fixtures import BAD_FILES, bad_file_bytes, image_bytes, make_class_folder, write

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "reliability.md"
TWINBENCH = [sys.executable, "-m", "bench.cli"]
TRAIN_TINY = ["--profile", "quick", "--input-size", "32", "--batch-size", "4", "--epochs", "1", "--init", "random"]


@dataclass(frozen=True)
class Case:
    """One row of the matrix."""

    name: str
    area: str
    what: str                                   # the situation, in words (docs)
    argv: tuple[str, ...] = ()                  # after ``twinbench``, run in the prepared workspace
    exit: int = 2
    says: tuple[str, ...] = ()                  # fragments of the error message
    keeps: tuple[str, ...] = ()                 # files that must survive byte for byte
    absent: tuple[str, ...] = ()                # paths that must not exist afterwards (no work started)
    shell: str = ""                             # bash prefix, e.g. a resource limit
    check: Callable[[Path, subprocess.CompletedProcess], None] | None = field(default=None, compare=False)
    covered_by: str = ""                        # "tests/file.py::test_name" when another test runs it
    slow: bool = False                          # (covered_by rows) the covering test is marked slow


# ---- the workspace every case starts from ---------------------------------------------------------------
def fake_python(path: Path, body: str) -> None:
    """An executable that stands in for a worker's Python (as in tests/test_isolation.py)."""
    path.write_text("#!/usr/bin/env bash\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def legacy_h5(path: Path, layers: dict[str, list[np.ndarray]]) -> None:
    """A legacy Keras .h5 (attrs layer_names / weight_names), as keras-applications files are."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [name.encode() for name in layers]
        for name, arrays in layers.items():
            group = f.create_group(name)
            group.attrs["weight_names"] = [f"{name}/w{i}:0".encode() for i in range(len(arrays))]
            for i, array in enumerate(arrays):
                group.create_dataset(f"{name}/w{i}:0", data=array)


def build_workspace(root: Path) -> Path:
    from bench import results
    from bench.dataset import build_manifest

    make_class_folder(root / "data", {"cats": 6, "dogs": 6})
    build_manifest(root / "data").save(root / "m.json")
    text = (root / "m.json").read_text()
    doc = json.loads(text)
    first = doc["files"][0]["path"]
    edits = {
        "truncated.json": text[: len(text) // 2],
        "label.json": text.replace('"label": 0', '"label": 7', 1),
        "escape.json": text.replace(f'"path": "{first}"', f'"path": "../{first}"', 1),
        "absolute.json": text.replace(f'"path": "{first}"', f'"path": "/etc/{first}"', 1),
        "newer.json": text.replace('"version": 1', '"version": 99', 1),
    }
    dup = json.loads(text)
    dup["files"][1].update(path=dup["files"][0]["path"], label=dup["files"][0]["label"])
    edits["duplicate.json"] = json.dumps(dup, indent=2)
    for name, edited in edits.items():
        assert edited != text, name
        (root / name).write_text(edited)
    (root / "notes.csv").write_text("path,label\ncats/000.jpg,0\n")

    # Bad folders: every data case of the data issue, each as its own --data folder.
    write(root / "no-classes" / "stray.jpg", image_bytes(0))
    write(root / "no-images" / "cats" / "notes.txt", b"x")
    make_class_folder(root / "too-few", {"a": 2, "b": 2})  # int(0.2 * 4) = 0 validation images
    for kind, (name, _, _) in BAD_FILES.items():
        make_class_folder(root / f"bad-{kind}", {"cats": 6, "dogs": 6})
        write(root / f"bad-{kind}" / "cats" / name, bad_file_bytes(kind))

    legacy_h5(root / "other-model.h5", {"dense_1": [np.zeros((3, 3), np.float32), np.zeros(3, np.float32)]})
    (root / "truncated.h5").write_bytes((root / "other-model.h5").read_bytes()[:1000])

    record = results.new_record("train-1", command=["twinbench", "train"],
                                config={"epochs": 1, "model": "resnet50"},
                                manifest={"fingerprint": "abc", "classes": ["cats", "dogs"]})
    run = results.new_framework_run()
    run.update({"status": "complete", "epochs_completed": 1, "history": [{"epoch": 1, "loss": 0.9}],
                "memory": {"measure": "cpu_peak_rss", "peak_bytes": 1, "label": "peak RSS"}})
    record.frameworks["torch"] = run
    record.status = "complete"
    results.save_record(record, root / "rec")
    doc = json.loads((root / "rec" / "run.json").read_text())
    for name, change in {"newer": {"version": 99}, "c3": {"run_id": "train-2"}}.items():
        (root / name).mkdir()
        d = {**doc, **change}
        if name == "c3":
            d["config"] = {**doc["config"], "model": "resnet50_c3"}
        (root / name / "run.json").write_text(json.dumps(d))
    (root / "cmp.json").write_text('{"kept": true}\n')
    (root / "a-file").write_text("not a folder\n")

    fake_python(root / "segv-python", 'echo "loading model"; echo "oneDNN exploded" >&2; kill -SEGV $$')
    fake_python(root / "exit3-python", 'echo "CUDA error: device-side assert triggered" >&2; exit 3')
    return root


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return build_workspace(tmp_path_factory.mktemp("reliability") / "w")


def twinbench(argv: tuple[str, ...] | list[str], cwd: Path, shell: str = "", timeout: float = 300
              ) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if shell:
        command = shell + "; exec " + " ".join(map(_quote, [*TWINBENCH, *argv]))
        return subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                              env=env)
    return subprocess.run([*TWINBENCH, *argv], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def error_message(stderr: str) -> str:
    """From the first ``twinbench: error`` / ``twinbench CMD: error`` line to the end."""
    lines = stderr.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"twinbench( [a-z ]+)?: error: ", line):
            return "\n".join(lines[i:])
    return ""


# ---- checks used by single rows -----------------------------------------------------------------------------
def _record_of(w: Path, out: str):
    from bench import results

    dirs = sorted((w / out).glob("train-*"))
    assert len(dirs) == 1, dirs
    return results.load_record(dirs[0])


def _check_failed_worker_record(w: Path, proc: subprocess.CompletedProcess) -> None:
    record = _record_of(w, "runs")
    run = record.framework("torch")
    assert record.status == "failed" and run["status"] == "failed"
    assert "CUDA error" in run["message"] and "exited with code 3" in run["message"]
    assert run["history"] == [] and run["final"] == {}  # nothing reported that was not measured


def _check_failed_init_record(w: Path, proc: subprocess.CompletedProcess) -> None:
    record = _record_of(w, "runs")
    assert record.status == "failed"
    assert all(r["status"] == "failed" and "SIGSEGV" in r["message"] for r in record.frameworks.values())


def _check_run_session(w: Path, proc: subprocess.CompletedProcess) -> None:
    session_path, = (w / "runs").glob("run-*/session.json")
    session = json.loads(session_path.read_text())
    steps = {st["name"]: st["status"] for st in session["steps"]}
    assert session["status"] == "failed"
    assert steps["manifest"] == "done" and steps["datacheck"] == "failed" and steps["train"] == "failed"
    assert steps["report"] == "done" and (session_path.parent / "report" / "report.html").is_file()
    assert (session_path.parent / "manifest.json").is_file()  # finished results are kept
    # Each failed step says why, with the framework and the worker's last lines, even with --quiet.
    assert ("twinbench run: datacheck: failed: TensorFlow worker (data_check) was killed by SIGSEGV; "
            "last output: loading model | oneDNN exploded") in proc.stderr


def _check_data_run_session(w: Path, proc: subprocess.CompletedProcess) -> None:
    session_path, = (w / "runs").glob("run-*/session.json")
    session = json.loads(session_path.read_text())
    assert session["status"] == "failed" and session["steps"][1]["status"] in ("failed", "pending")
    assert not list(session_path.parent.glob("train-*"))  # no worker started


def _check_manifest_repeatable(w: Path, proc: subprocess.CompletedProcess) -> None:
    first = (w / "m1.json").read_bytes()
    again = twinbench(["manifest", "data", "-o", "m2.json", "--quiet"], w)
    assert again.returncode == 0, again.stderr
    assert (w / "m2.json").read_bytes() == first and len(first) > 1000


def _check_no_run_dir(w: Path, proc: subprocess.CompletedProcess) -> None:
    assert not (w / "runs").exists() or not any((w / "runs").iterdir())


# ---- the table -------------------------------------------------------------------------------------------
def _data_cases() -> list[Case]:
    cases = [
        Case("run-data-missing", "data", "`--data` folder does not exist",
             ("run", "--data", "nope", "--out", "runs", "--quiet"), 2, ("--data nope", "no such folder"),
             check=_check_data_run_session),
        Case("run-data-no-classes", "data", "folder holds images but no class subfolders",
             ("run", "--data", "no-classes", "--out", "runs", "--quiet"), 2, ("no-classes", "no class subfolders")),
        Case("run-data-no-images", "data", "class folders hold no images",
             ("run", "--data", "no-images", "--out", "runs", "--quiet"), 2, ("no-images", "no images")),
        Case("run-data-too-few", "data", "so few images that the validation split is empty",
             ("run", "--data", "too-few", "--out", "runs", "--quiet"), 2, ("too-few", "validation set empty")),
    ]
    for kind, (name, _, words) in BAD_FILES.items():
        cases.append(Case(f"run-data-{kind}", "data", f"a bad image ({kind}) among good ones",
                          ("run", "--data", f"bad-{kind}", "--out", "runs", "--quiet"), 2,
                          (f"bad-{kind}/cats/{name}", words, "replace or remove it"),
                          check=_check_data_run_session))
    return cases


CASES: list[Case] = [
    *_data_cases(),
    # ---- manifests ----
    Case("manifest-exists", "manifest", "`-o` names an existing manifest (no `--force`)",
         ("manifest", "data", "-o", "m.json", "--quiet"), 2, ("m.json", "--force"), keeps=("m.json",)),
    Case("manifest-output-is-folder", "manifest", "`-o` names a folder",
         ("manifest", "data", "-o", "data", "--quiet"), 2, ("data is a folder", "pass a file name")),
    Case("manifest-invalid-json", "manifest", "hand-edited manifest cut short (invalid JSON)",
         ("train", "--manifest", "truncated.json", *TRAIN_TINY, "--out", "runs"), 2,
         ("truncated.json", "not valid JSON", "twinbench manifest DATA_DIR -o"), keeps=("truncated.json",),
         absent=("runs",)),
    Case("manifest-csv", "manifest", "a CSV file passed as the manifest",
         ("manifest", "verify", "notes.csv"), 2, ("notes.csv", "not valid JSON")),
    Case("manifest-label-out-of-range", "manifest", "hand-edited label outside the class list",
         ("data", "check", "label.json"), 2, ("label.json", "label 7 out of range 0..1", "rebuild it")),
    Case("manifest-duplicate-path", "manifest", "hand-edited manifest lists one file twice",
         ("manifest", "verify", "duplicate.json"), 2, ("duplicate.json", "duplicate path")),
    Case("manifest-path-escapes-root", "manifest", "hand-edited path `../x.jpg`",
         ("manifest", "verify", "escape.json"), 2, ("escape.json", "escapes the data root")),
    Case("manifest-absolute-path", "manifest", "hand-edited absolute path `/etc/...`",
         ("train", "--manifest", "absolute.json", *TRAIN_TINY, "--out", "runs"), 2,
         ("absolute.json", "escapes the data root"), absent=("runs",)),
    Case("manifest-newer-version", "manifest", "manifest written by a newer twinbench",
         ("manifest", "verify", "newer.json"), 2, ("newer.json", "newer than this twinbench")),
    Case("manifest-missing", "manifest", "manifest path does not exist",
         ("data", "check", "nope.json"), 2, ("nope.json", "no such manifest", "twinbench manifest DATA_DIR")),
    # ---- weights ----
    Case("weights-other-model", "weights", "legacy .h5 of another model",
         ("train", "--manifest", "m.json", *TRAIN_TINY, "--weights", "other-model.h5", "--out", "runs"), 2,
         ("other-model.h5", "dense_1", "is this a resnet50 weight file")),
    Case("weights-truncated-h5", "weights", "truncated .h5 (interrupted download)",
         ("weights", "convert", "truncated.h5", "out.npz"), 2,
         ("truncated.h5", "not a readable HDF5 file", "download or export it again"), absent=("out.npz",)),
    Case("weights-missing", "weights", "`--weights` file does not exist",
         ("train", "--manifest", "m.json", *TRAIN_TINY, "--weights", "nope.h5", "--out", "runs"), 2,
         ("--weights nope.h5", "no such file"), absent=("runs",)),
    # ---- run records ----
    Case("record-newer-schema-report", "records", "`report` on a record of a newer schema version",
         ("report", "newer", "-o", "rep", "--quiet"), 2, ("newer/run.json", "newer", "upgrade twinbench"),
         absent=("rep/report.html",)),
    Case("record-newer-schema-compare", "records", "`compare` against a record of a newer schema",
         ("compare", "rec", "newer"), 2, ("newer/run.json", "upgrade twinbench")),
    Case("record-newer-schema-history", "records", "`history` over a record of a newer schema",
         ("history", "newer"), 2, ("newer/run.json", "upgrade twinbench")),
    Case("compare-different-models", "records", "`compare` of resnet50 with resnet50_c3 records",
         ("compare", "rec", "c3"), 2, ("resnet50_c3", "same model")),
    Case("compare-missing", "records", "`compare` with a path that does not exist",
         ("compare", "rec", "nope"), 2, ("nope", "no such file")),
    Case("resume-not-a-run", "records", "`train --resume` of a folder that is not a run",
         ("train", "--resume", "data"), 2, ("--resume data", "not a twinbench training run")),
    # ---- nonsense options: rejected before any work (no run directory appears) ----
    Case("option-negative-batch", "options", "`--batch-size -1`",
         ("train", "--manifest", "m.json", "--batch-size", "-1", "--out", "runs"), 2,
         ("--batch-size", "positive integer", "-1"), absent=("runs",)),
    Case("option-zero-epochs", "options", "`--epochs 0`",
         ("train", "--manifest", "m.json", "--epochs", "0", "--out", "runs"), 2,
         ("--epochs", "positive integer", "0"), absent=("runs",)),
    Case("option-run-zero-epochs", "options", "`twinbench run --epochs 0`",
         ("run", "--epochs", "0", "--out", "runs"), 2, ("--epochs", "positive integer"), absent=("runs",)),
    Case("option-image-too-small", "options", "image size too small for ResNet-50",
         ("train", "--manifest", "m.json", "--profile", "quick", "--input-size", "16", "--out", "runs"), 2,
         ("input size 16", "too small", "at least 32"), absent=("runs",)),
    Case("option-size-vs-avg7", "options", "`--input-size 100` with the seed's AveragePooling2D(7)",
         ("parity", "--input-size", "100"), 2, ("input size 100", "--pooling global")),
    Case("option-unknown-framework", "options", "`--framework jax`",
         ("train", "--manifest", "m.json", "--framework", "jax", "--out", "runs"), 2,
         ("--framework", "invalid choice: 'jax'"), absent=("runs",)),
    Case("option-unknown-precision", "options", "`--precision fp8`",
         ("train", "--manifest", "m.json", "--precision", "fp8", "--out", "runs"), 2,
         ("--precision", "'fp8'"), absent=("runs",)),
    Case("option-bench-batch", "options", "`bench --batch -1`", ("bench", "--batch", "-1"), 2,
         ("--batch", "'-1'")),
    Case("option-bench-framework", "options", "`bench --frameworks jax`", ("bench", "--frameworks", "jax"), 2,
         ("--frameworks", "'jax'")),
    Case("option-parity-batch", "options", "`parity --batch 0`", ("parity", "--batch", "0"), 2,
         ("--batch", "positive integer")),
    Case("option-parity-batch-1", "options", "`parity --batch 1` (batch norm in training mode needs 2 images)",
         ("parity", "--batch", "1", "--input-size", "32", "--pooling", "global"), 2,
         ("--batch 1", "at least 2 images")),
    Case("option-missing-python", "options", "`--tf-python` that does not exist",
         ("info", "--tf-python", "/nonexistent/python"), 2, ("/nonexistent/python", "--tf-python")),
    # ---- worker faults (fake worker Pythons: no framework is loaded) ----
    Case("worker-segfault", "faults", "the TensorFlow worker segfaults",
         ("info", "--tf-python", "./segv-python"), 1,
         ("TensorFlow worker", "SIGSEGV", "oneDNN exploded", "loading model")),
    Case("worker-exit-code-train", "faults", "the PyTorch worker exits 3 during `train`",
         ("train", "--framework", "torch", "--manifest", "m.json", *TRAIN_TINY, "--torch-python",
          "./exit3-python", "--out", "runs", "--quiet"), 1,
         ("PyTorch worker (train) exited with code 3", "CUDA error", "--resume"),
         check=_check_failed_worker_record),
    Case("worker-segfault-init", "faults", "the worker exporting the starting weights segfaults",
         ("train", "--manifest", "m.json", "--profile", "quick", "--input-size", "32", "--tf-python",
          "./segv-python", "--out", "runs", "--quiet"), 1, ("TensorFlow worker (export)", "SIGSEGV"),
         check=_check_failed_init_record),
    Case("run-workers-crash", "faults", "`twinbench run` whose workers crash: later steps go on, report built",
         ("run", "--data", "data", "--out", "runs", "--skip", "bench", "--tf-python", "./segv-python",
          "--torch-python", "./exit3-python", "--quiet"), 1,
         ("4 step(s) failed (datacheck, parity, train, residuals)", "the report are kept in runs/run-"),
         check=_check_run_session),
    Case("disk-full-manifest", "faults", "disk full while overwriting a manifest (`ulimit -f 0`)",
         ("manifest", "data", "-o", "m.json", "--force", "--quiet"), 1,
         ("m.json", "cannot write", "the previous file is kept", "free disk space"),
         keeps=("m.json",), shell="ulimit -f 0"),
    Case("disk-full-compare-json", "faults", "disk full while writing `compare --json`",
         ("compare", "rec", "rec", "--json", "cmp.json"), 1, ("cmp.json", "cannot write", "previous file is kept"),
         keeps=("cmp.json", "rec/run.json"), shell="ulimit -f 0"),
    Case("output-under-a-file", "faults", "`-o` inside a path that is a file, not a folder",
         ("manifest", "data", "-o", "a-file/m.json", "--quiet"), 1,
         ("a-file/m.json", "cannot write", "nothing was written"), keeps=("a-file",)),
    # ---- determinism ----
    Case("manifest-byte-identical", "determinism", "two `twinbench manifest` runs on one folder",
         ("manifest", "data", "-o", "m1.json", "--quiet"), 0, (), check=_check_manifest_repeatable),
    # ---- covered by heavier tests (real framework workers) ----
    Case("parity-identical-numbers", "determinism", "two `twinbench parity` runs on the same inputs",
         exit=0, says=("identical JSON numbers",),
         covered_by="tests/test_reliability_faults.py::test_two_parity_runs_give_identical_numbers", slow=True),
    Case("sigkill-train-resume", "faults", "SIGKILL of the PyTorch worker mid-epoch, then `--resume`",
         exit=1, says=("SIGKILL", "continue with: twinbench train --resume"),
         covered_by="tests/test_train.py::test_sigkill_mid_epoch_then_resume_gives_the_straight_history"),
    Case("sigint-run", "faults", "Ctrl-C (SIGINT to the process group) of `twinbench run` while training",
         exit=130, says=("interrupted", "finished results and the report are kept"),
         covered_by="tests/test_reliability_faults.py::test_ctrl_c_of_run_keeps_results_and_builds_the_report",
         slow=True),
    Case("oom-worker", "faults", "worker out of memory (`ulimit -v` on the worker's Python)",
         exit=1, says=("out of memory?", "lower --batch-size", "nothing was retried smaller"),
         covered_by="tests/test_reliability_faults.py::test_out_of_memory_is_a_recorded_failure_not_a_smaller_batch"),
    Case("disk-full-checkpoint", "faults", "disk full while the worker writes a checkpoint",
         exit=1, says=("ckpt-epoch-002", "cannot write", "--resume"),
         covered_by="tests/test_reliability_faults.py::test_disk_full_at_a_checkpoint_keeps_the_previous_one",
         slow=True),
    Case("two-runs-one-dir", "faults", "two `twinbench run` at once into one `--out`",
         exit=0, says=("distinct run ids, no shared files",),
         covered_by="tests/test_run.py::test_two_concurrent_runs_into_one_directory_use_distinct_ids"),
    Case("two-trains-one-run", "faults", "a second process on a live training run directory",
         exit=2, says=("in use by process",),
         covered_by="tests/test_reliability_faults.py::test_second_process_on_a_live_run_is_refused"),
    Case("nan-loss", "faults", "the loss becomes NaN (`--learning-rate 1e30`)",
         exit=1, says=("PyTorch: loss became", "at epoch 1, step"),
         covered_by="tests/test_train.py::test_nan_loss_in_a_real_worker_stops_the_run"),
    Case("nan-loss-checkpoint", "faults", "NaN after a good epoch: the last good checkpoint is the result",
         exit=1, says=("training stopped", "epoch 1 (ckpt-epoch-001)"),
         covered_by="tests/test_train.py::test_nan_loss_stops_and_keeps_the_last_good_checkpoint"),
]

RUN_HERE = [c for c in CASES if not c.covered_by]


# ---- the tests ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", RUN_HERE, ids=[c.name for c in RUN_HERE])
def test_case(case: Case, base: Path, tmp_path: Path) -> None:
    w = tmp_path / "w"
    shutil.copytree(base, w, symlinks=True)
    before = {name: (w / name).read_bytes() for name in case.keeps}
    proc = twinbench(case.argv, w, case.shell)
    context = f"\n$ twinbench {' '.join(case.argv)}\n--- stderr:\n{proc.stderr[-3000:]}"
    assert proc.returncode == case.exit, context
    message = error_message(proc.stderr)
    if case.exit != 0:
        assert message, "no 'twinbench: error:' line" + context
        for words in case.says:
            assert words in message, f"{words!r} not in the message" + context
    if case.exit == 2 or case.name.startswith(("disk-full", "output-under")):
        assert "Traceback" not in proc.stderr, context
    if case.exit == 2 and not case.argv[0] == "run":
        assert len(message.splitlines()) == 1, "the error is not one line" + context
    for name, data in before.items():
        assert (w / name).read_bytes() == data, f"{name} changed" + context
    for name in case.absent:
        assert not (w / name).exists(), f"{name} exists: work started" + context
    leftovers = [p for p in w.rglob(".*.tmp")]
    assert not leftovers, f"half-written files left: {leftovers}" + context
    if case.check:
        case.check(w, proc)


def test_covering_tests_exist() -> None:
    """Rows covered elsewhere name a test that exists (a renamed test makes this fail)."""
    for case in CASES:
        if case.covered_by:
            path, _, name = case.covered_by.partition("::")
            source = (REPO / path).read_text()
            assert re.search(rf"^def {re.escape(name)}\(", source, re.M), case.covered_by
            if case.slow:
                before = source[: source.index(f"def {name}(")].rstrip().splitlines()[-3:]
                assert any("mark.slow" in line for line in before), f"{case.covered_by} is not marked slow"


def test_case_names_are_unique() -> None:
    names = [c.name for c in CASES]
    assert len(names) == len(set(names))


# ---- the documentation table ---------------------------------------------------------------------------------
AREAS = {
    "data": "Bad data, end to end through `twinbench run --data DIR`",
    "manifest": "Manifests (missing, hand-edited, of another version)",
    "weights": "Weight files",
    "records": "Run records",
    "options": "Nonsense options (rejected before any work starts)",
    "faults": "Faults: crashes, signals, memory, disk, concurrency, NaN",
    "determinism": "Determinism",
}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_docs() -> str:
    lines = [
        "# Reliability: what the user sees when things go wrong",
        "",
        "Generated from `CASES` in `tests/test_reliability.py`; `make test` fails when this file is out of",
        "date (regenerate with `TWINBENCH_UPDATE_DOCS=1 .venv/bin/pytest --framework none "
        "tests/test_reliability.py -k docs`).",
        "",
        "Every case runs the real `twinbench` command in a subprocess. Checked each time: the exit code",
        "(0 success, 1 a failed check or a crash, 2 bad input, 130 Ctrl-C); the error message, which",
        "contains every fragment listed (it names the file, value or framework and what to do); no",
        "traceback for bad input; the files listed under *kept* byte for byte identical afterwards; no",
        "half-written `.*.tmp` file left behind. Commands run in a workspace holding a small image folder",
        "(`data/`, 2 classes x 6 JPEGs), its manifest `m.json`, hand-edited copies of it, bad folders,",
        "weight files, run records and fake worker Pythons (`segv-python` kills itself with SIGSEGV,",
        "`exit3-python` exits 3). Rows marked *(slow)* run with `make test-slow`.",
        "",
    ]
    for area, title in AREAS.items():
        rows = [c for c in CASES if c.area == area]
        lines += [f"## {title}", "", "| case | command | exit | the message contains | kept | test |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for c in rows:
            command = f"`twinbench {' '.join(c.argv)}`" if c.argv else ""
            if c.shell:
                command = f"`{c.shell};` " + command
            cell = f"{_cell(c.what)}<br>{command}" if command else _cell(c.what)
            says = " ... ".join(f"`{_cell(s)}`" for s in c.says) or "(success)"
            kept = ", ".join(f"`{k}`" for k in c.keeps) or ""
            test = (f"`{c.covered_by.split('::')[0].split('/')[-1]}::{c.covered_by.split('::')[1]}`"
                    + (" (slow)" if c.slow else "")) if c.covered_by else f"`test_case[{c.name}]`"
            lines.append(f"| {c.name} | {cell} | {c.exit} | {says} | {kept} | {test} |")
        lines.append("")
    return "\n".join(lines)


def test_docs_table_is_current() -> None:
    text = render_docs()
    if os.environ.get("TWINBENCH_UPDATE_DOCS") == "1":
        DOCS.parent.mkdir(exist_ok=True)
        DOCS.write_text(text)
    assert DOCS.is_file(), f"{DOCS} missing: run with TWINBENCH_UPDATE_DOCS=1"
    assert DOCS.read_text() == text, f"{DOCS} is out of date: rerun with TWINBENCH_UPDATE_DOCS=1"
    assert all(f"| {c.name} |" in text for c in CASES)
    assert "(docs/reliability.md)" in (REPO / "README.md").read_text(), "README no longer links the table"
