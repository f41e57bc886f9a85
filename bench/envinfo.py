"""Where a number was measured: machine, CPU, Python, commit. Framework-free; each worker adds
its framework's versions, devices and threads."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def cpu_info() -> dict:
    model, flags = platform.processor() or "unknown", []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("unknown", "", platform.processor()):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    notable = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "fma") if f in flags]
    return {"model": model, "cores": os.cpu_count(), "flags": notable, "arch": platform.machine()}


def commit_info() -> dict:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    commit = git("rev-parse", "HEAD")
    return {"id": commit or None, "dirty": bool(git("status", "--porcelain")) if commit else None,
            "branch": git("rev-parse", "--abbrev-ref", "HEAD") or None, "time": git("log", "-1", "--format=%cI") or None}


# Environment variables that change speed or numerics; recorded with every result.
RECORDED_ENV = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_ENABLE_ONEDNN_OPTS",
                "CUDA_VISIBLE_DEVICES")


def machine_info() -> dict:
    return {"node": socket.gethostname(), "system": platform.system(), "release": platform.release(),
            "python": platform.python_version(), "cpu": cpu_info(),
            "env": {k: os.environ.get(k) for k in RECORDED_ENV}}
