"""Test layout: one process, one framework.

``tests/*.py`` run in a pytest process that imports no framework (framework work goes through
the real workers, in subprocesses). ``tests/tf/`` and ``tests/torch/`` import their framework
in-process and are collected only with ``--framework tf`` / ``--framework torch`` (the Makefile
runs the three sets as three pytest processes): importing tensorflow then torch in one process
segfaults here.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# The suite runs on shared CI cores: OpenMP threads that spin while waiting made torch workers
# up to 80x slower there (bench.runner.worker_env). Tests check results, not speed.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
FRAMEWORK_DIRS = ("tf", "torch")


def pytest_addoption(parser):
    parser.addoption("--framework", choices=("none", *FRAMEWORK_DIRS), default="none",
                     help="which test set to collect: none (framework-free, default), tf or torch")


def pytest_ignore_collect(collection_path, config):
    framework = config.getoption("--framework")
    try:
        parts = Path(collection_path).resolve().relative_to(TESTS).parts
    except ValueError:
        return None
    if not parts:
        return None
    top = parts[0]
    if top in FRAMEWORK_DIRS:
        return top != framework or None
    if framework != "none" and top.endswith(".py") and top != "conftest.py":
        return True
    return None


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def python() -> str:
    return sys.executable
