"""Start a framework worker in its own process, hand it a job, read back its result.

One process, one framework: importing tensorflow and then torch in one process segfaults here
(TF 2.21 + torch 2.14.1), and separate processes also give each side its own allocator and its
own peak memory. A job crosses as ``job.json``; a result comes back as ``result.json`` plus an
optional ``arrays.npz``, both written atomically by the worker (``bench.workerproto``).

A worker that crashes (segfault, out of memory, exception) becomes a :class:`WorkerError` naming
the framework, the exit status and the last lines the worker wrote on stderr; never a hang.
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from bench import atomic
from bench.errors import UserError, WorkerError
from bench.frameworks import ARMS, FRAMEWORK_LABELS, WORKER_MODULES

STDERR_TAIL_LINES = 15


@dataclass
class WorkerConfig:
    """How to start workers: which Python per framework, threads, extra environment."""

    tf_python: str = field(default_factory=lambda: os.environ.get("TWINBENCH_TF_PYTHON", sys.executable))
    torch_python: str = field(default_factory=lambda: os.environ.get("TWINBENCH_TORCH_PYTHON", sys.executable))
    threads: int | None = None  # intra-op threads on both sides; None: all cores
    quiet: bool = False  # do not echo the worker's stderr (progress) to ours
    env: dict[str, str] = field(default_factory=dict)
    # The worker gets SIGKILL when this process dies (Linux): a Ray task's worker must not outlive
    # the task's process when Ray kills it (node lost, task cancelled).
    die_with_parent: bool = False
    # Where jobs run (bench.executor: local subprocesses, or Ray tasks); None: here, in turn.
    # Jobs go through bench.executor.run_job; run_worker itself always starts a local process.
    executor: Any = field(default=None, repr=False, compare=False)

    def python(self, framework: str) -> str:
        return self.tf_python if framework == "tf" else self.torch_python  # keras-torch needs torch


@dataclass
class WorkerResult:
    result: dict[str, Any]
    arrays: dict[str, np.ndarray]
    job_dir: Path
    executor: dict[str, Any] = field(default_factory=dict)  # where it ran when not here (bench.executor)


def check_framework(framework: str) -> str:
    if framework not in ARMS:
        raise UserError(f"unknown framework {framework!r}: choose one of {', '.join(ARMS)}")
    return framework


# TensorFlow's start-up lines that TF_CPP_MIN_LOG_LEVEL does not reach (absl logs them before
# its log level is read): two per worker start, saying nothing the run record does not.
STARTUP_NOISE = (
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"),
    re.compile(r"^I\d{4} [\d:. ]+\d+ port\.cc:\d+\] oneDNN custom operations are on\."),
)


def is_startup_noise(line: str) -> bool:
    """A framework start-up line not worth echoing (it still enters the tail kept for errors)."""
    return any(p.match(line) for p in STARTUP_NOISE)


def worker_env(config: WorkerConfig) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ info lines drown the progress output
    # OMP_WAIT_POLICY stays the user's (unset: the OpenMP runtime spins). On a quiet 2-core
    # machine PASSIVE cost torch 8-10% of its training throughput at 224 px (5.6 vs 6.2 img/s
    # fp32, 10.6 vs 11.6 bf16); on cores shared with other work spinning threads made a torch
    # forward 80x slower. So: the default for measuring, PASSIVE when the machine is shared
    # (parity and the test suite set it; see bench.parity.parity_workers, tests/conftest.py).
    env.setdefault("PYTHONUNBUFFERED", "1")
    # TF enables its oneDNN kernels by default only on CPUs with AVX512_VNNI/BF16 or AMX; elsewhere
    # it uses Eigen's. Measured on a 2-core AMD EPYC Zen 3 (AVX2): a 32 px ResNet-50 Adam step at
    # batch 16 took 0.87 s with Eigen, 0.21 s with oneDNN (torch: 0.31-0.41 s). So the same kernels
    # on every x86 CPU, as torch does; a user's TF_ENABLE_ONEDNN_OPTS=0 wins (recorded per worker).
    env.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    if config.threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(config.threads)
        env["TWINBENCH_THREADS"] = str(config.threads)
    # The workers import bench and their own package from this source tree even when the
    # worker Python is another interpreter (--tf-python / --torch-python).
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(config.env)
    return env


def run_worker(
    framework: str,
    task: str,
    args: dict[str, Any],
    *,
    arrays: dict[str, np.ndarray] | None = None,
    job_dir: str | os.PathLike | None = None,
    config: WorkerConfig | None = None,
    timeout: float | None = None,
) -> WorkerResult:
    """Run ``task`` in the ``framework`` worker and return its result.

    ``args`` must be JSON-serialisable; ``arrays`` travel as ``inputs.npz`` beside the job.
    Raises WorkerError (the worker failed) or UserError (the worker rejected the input).
    """
    check_framework(framework)
    config = config or WorkerConfig()
    if job_dir is None:
        job_dir = Path(tempfile.mkdtemp(prefix=f"twinbench-{framework}-{task}-"))
    job_dir = Path(job_dir)
    job_path = write_job(job_dir, framework, task, args, arrays, config)
    label = FRAMEWORK_LABELS[framework]
    tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
    returncode = wait_for_worker(framework, task, job_path, config, timeout, tail)
    return read_result(job_dir, label, task, returncode, tail)


def write_job(job_dir: Path, framework: str, task: str, args: dict[str, Any],
              arrays: dict[str, np.ndarray] | None, config: WorkerConfig) -> Path:
    """``job.json`` (and ``inputs.npz``) in ``job_dir``, with any earlier result removed."""
    job_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("result.json", "arrays.npz"):
        (job_dir / stale).unlink(missing_ok=True)
    job = {"framework": framework, "task": task, "args": args, "threads": config.threads}
    if arrays:
        atomic.write_npz(job_dir / "inputs.npz", arrays)
        job["inputs"] = "inputs.npz"
    job_path = job_dir / "job.json"
    atomic.write_json(job_path, job)
    return job_path


def wait_for_worker(framework: str, task: str, job_path: Path, config: WorkerConfig, timeout: float | None,
                    tail: collections.deque[str]) -> int:
    """Start ``python -m {framework}_impl.worker JOB``, echo its output (keeping the last lines in
    ``tail``) and return its exit status; kill it past ``timeout``."""
    label = FRAMEWORK_LABELS[framework]
    cmd = [config.python(framework), "-m", WORKER_MODULES[framework], str(job_path)]
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=worker_env(config), text=True, errors="replace",
                                preexec_fn=_die_with_parent if config.die_with_parent else None)
    except OSError as exc:
        raise UserError(f"cannot start the {label} worker with {config.python(framework)!r}: {exc.strerror}; "
                        f"pass a working Python with --{framework}-python") from None

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line.rstrip("\n"))
            if not config.quiet and not is_startup_noise(line):
                sys.stderr.write(line)
                sys.stderr.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        returncode = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        reader.join(timeout=5)
        raise WorkerError(f"{label} worker ({task}) did not finish within {timeout:.0f} s and was killed; "
                          f"last output:\n" + "\n".join(tail)) from None
    except KeyboardInterrupt:
        # Ctrl-C reaches the worker too (same process group); give it a moment to stop cleanly.
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    reader.join(timeout=5)
    return returncode


def read_result(job_dir: Path, label: str, task: str, returncode: int, tail: Iterable[str]) -> WorkerResult:
    """The worker's ``result.json`` (and ``arrays.npz``), or the error it reported or died of."""
    tail = list(tail)
    result_path = job_dir / "result.json"
    payload: dict[str, Any] | None = None
    if result_path.exists():
        try:
            payload = json.loads(result_path.read_text())
        except (OSError, ValueError):
            payload = None
    if payload is not None and not payload.get("ok", False):
        message = payload.get("error", "unknown error")
        if payload.get("user_error"):
            raise UserError(message)
        raise WorkerError(f"{label} worker ({task}) failed: {message}{memory_hint(message, tail)}\n"
                          + "\n".join(tail), exit_code=1)
    if returncode != 0 or payload is None:
        raise WorkerError(f"{label} worker ({task}) {describe_exit(returncode)}{memory_hint('', tail)}; last output:\n"
                          + ("\n".join(tail) if tail else "(nothing)"), killed_by=signal_name(returncode))
    arrays_out: dict[str, np.ndarray] = {}
    if payload.get("arrays"):
        with np.load(job_dir / payload["arrays"], allow_pickle=False) as data:
            arrays_out = {k: data[k] for k in data.files}
    return WorkerResult(payload.get("result", {}), arrays_out, job_dir)


# What an allocation failure looks like from each side: Python, torch's CPU allocator, CUDA,
# TF's BFC allocator, oneDNN under a memory limit (measured here with ulimit -v), the loader.
MEMORY_SIGNS = ("MemoryError", "can't allocate memory", "out of memory", "OOM when allocating",
                "ResourceExhaustedError", "could not create a primitive", "failed to map segment")


def memory_hint(message: str, tail: Iterable[str]) -> str:
    """A hint when a worker failed for want of memory: the batch is never shrunk behind the user's back."""
    text = "\n".join([message, *list(tail)[-20:]])
    if any(sign in text for sign in MEMORY_SIGNS):
        return " (out of memory? lower --batch-size or --input-size, or free memory; nothing was retried smaller)"
    return ""


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the parent dies (prctl PR_SET_PDEATHSIG, Linux only)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: the worker may outlive a killed parent


def signal_name(returncode: int) -> str | None:
    if returncode >= 0:
        return None
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        name = signal_name(returncode)
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return f"was killed by {name}{hint}"
    if returncode == 0:
        return "exited without writing a result"
    return f"exited with code {returncode}"
