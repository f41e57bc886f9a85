"""Where framework worker jobs run: the executor seam between the orchestration and the runner.

    twinbench train --repeats 4 --profile quick                        # local: one cell after another
    twinbench train --repeats 4 --profile quick --threads 1 --executor ray   # a local Ray cluster
    twinbench train --repeats 4 --executor ray --ray-address HOST:6379   # join a running cluster

A *cell* is one framework's training job in one run directory (repeat x framework in a set).
An executor runs a list of cells and reports each one's start and outcome to the caller, which
alone writes the run records (``bench.trainrun``): the records, reports and compare read the
same files whichever executor ran the cells.

- ``local`` (the default): ``bench.runner.run_worker`` in a subprocess of this process, the
  cells one after the other, exactly as before the seam existed. Ray is not imported.
- ``ray`` (``bench.ray_executor``): every cell is a Ray task that runs the same worker module in
  a subprocess on its node (one framework per process still holds), with ``num_cpus`` = the
  worker's threads; independent cells run at the same time, as many as the cluster's CPUs allow.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from bench.errors import WorkerError

EXECUTORS = ("local", "ray")
DEFAULT_RETRIES = 2  # ray: attempts after the first when a worker or node dies (a task option)


@dataclass
class Cell:
    """One framework's training job in one run directory."""

    key: str  # "repeat-0/torch": the run directory's name and the framework
    framework: str
    job: dict[str, Any]  # the train task's arguments, with this machine's paths
    run_dir: Path
    fw_dir: Path
    record: Any  # the run's bench.results.RunRecord (the caller merges into it)
    wconfig: Any  # bench.runner.WorkerConfig
    threads: int
    devices: int = 1

    @property
    def run(self) -> dict[str, Any]:
        return self.record.frameworks[self.framework]


@dataclass
class Outcome:
    """What a cell came back with: the worker's result, or the WorkerError it failed with."""

    result: dict[str, Any] | None = None
    error: WorkerError | None = None
    executor: dict[str, Any] = field(default_factory=dict)  # ray: attempts and nodes (nothing for local)


class Executor(Protocol):
    name: str
    concurrent: bool

    def run(self, cells: list[Cell], *, on_start: Callable[[Cell], None],
            on_done: Callable[[Cell, Outcome], None]) -> None:
        """Run every cell; call ``on_start`` when one starts and ``on_done`` when it ends. A
        UserError or KeyboardInterrupt propagates (the caller marks the cells that had not ended)."""

    def close(self) -> None:
        ...


class LocalExecutor:
    """Today's subprocesses, one cell after the other."""

    name = "local"
    concurrent = False

    def run(self, cells: list[Cell], *, on_start: Callable[[Cell], None],
            on_done: Callable[[Cell, Outcome], None]) -> None:
        from bench.runner import run_worker

        for cell in cells:
            on_start(cell)
            try:
                out = run_worker(cell.framework, "train", cell.job, job_dir=cell.fw_dir / "job", config=cell.wconfig)
            except WorkerError as exc:
                on_done(cell, Outcome(error=exc))
                continue
            on_done(cell, Outcome(result=out.result))

    def close(self) -> None:
        pass


def from_args(args: argparse.Namespace) -> Executor:
    """The command's executor, made once per command and kept on ``args`` (copies of ``args``
    made for resumed repeats share it)."""
    executor = getattr(args, "_executor", None)
    if executor is not None:
        return executor
    name = getattr(args, "executor", None) or "local"
    if name == "ray":
        from bench.ray_executor import RayExecutor

        executor = RayExecutor(address=getattr(args, "ray_address", None), num_cpus=getattr(args, "ray_cpus", None),
                               retries=getattr(args, "ray_retries", DEFAULT_RETRIES),
                               data_root=getattr(args, "data_root", None))
    else:
        check_options(args)
        executor = LocalExecutor()
    args._executor = executor
    return executor


def check_options(args: argparse.Namespace) -> None:
    """The Ray options only with --executor ray (checked before any work starts)."""
    from bench.errors import UserError

    if (getattr(args, "executor", None) or "local") == "ray":
        return
    for flag, dest in (("--ray-address", "ray_address"), ("--ray-cpus", "ray_cpus")):
        if getattr(args, dest, None):
            raise UserError(f"{flag} {getattr(args, dest)} needs --executor ray")


def close(args: argparse.Namespace) -> None:
    executor = vars(args).pop("_executor", None)
    if executor is not None:
        executor.close()
