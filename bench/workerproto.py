"""The worker side of the job protocol, shared by ``tf_impl.worker`` and ``torch_impl.worker``.

Framework-free on purpose: each worker imports its own framework first, then calls
:func:`serve` with its task table. A task is ``fn(args, inputs, job_dir) -> (result, arrays)``
where ``result`` is a JSON-able dict and ``arrays`` a dict of numpy arrays (or None).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bench import atomic
from bench.errors import UserError

TaskFn = Callable[[dict[str, Any], dict[str, np.ndarray], Path], "tuple[dict[str, Any], dict[str, np.ndarray] | None]"]


def resolve(target: str) -> TaskFn:
    """``"package.module:function"`` -> the function (imported only when the task runs)."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def serve(tasks: dict[str, str], argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m X_impl.worker JOB.json", file=sys.stderr)
        return 2
    job_path = Path(argv[0])
    job_dir = job_path.parent
    job = json.loads(job_path.read_text())
    inputs: dict[str, np.ndarray] = {}
    if job.get("inputs"):
        with np.load(job_dir / job["inputs"], allow_pickle=False) as data:
            inputs = {k: data[k] for k in data.files}
    task = job["task"]
    if task not in tasks:
        _write(job_dir, {"ok": False, "error": f"unknown task {task!r}; known: {', '.join(sorted(tasks))}"})
        return 1
    try:
        result, arrays = resolve(tasks[task])(job.get("args", {}), inputs, job_dir)
    except UserError as exc:
        _write(job_dir, {"ok": False, "user_error": True, "error": str(exc)})
        return 2
    except KeyboardInterrupt:
        _write(job_dir, {"ok": False, "error": "interrupted (Ctrl-C)"})
        return 130
    except Exception as exc:  # our own bug or a framework failure: keep the traceback
        traceback.print_exc()
        _write(job_dir, {"ok": False, "error": f"{type(exc).__name__}: {exc}"})
        return 1
    payload: dict[str, Any] = {"ok": True, "result": result}
    if arrays:
        atomic.write_npz(job_dir / "arrays.npz", arrays)
        payload["arrays"] = "arrays.npz"
    _write(job_dir, payload)
    return 0


def _write(job_dir: Path, payload: dict[str, Any]) -> None:
    atomic.write_json(job_dir / "result.json", payload)


def threads_from_env() -> int | None:
    value = os.environ.get("TWINBENCH_THREADS")
    return int(value) if value else None
