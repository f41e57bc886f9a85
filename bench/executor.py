"""Where framework worker jobs run: the executor seam between the orchestration and the runner.

    twinbench train --repeats 4 --profile quick                        # local: one cell after another
    twinbench train --repeats 4 --profile quick --threads 1 --executor ray   # a local Ray cluster
    twinbench train --repeats 4 --executor ray --ray-address HOST:6379   # join a running cluster

A *cell* is one framework's training job in one run directory (repeat x framework in a set).
An executor runs a list of cells and reports each one's start and outcome to the caller, which
alone writes the run records (``bench.trainrun``): the records, reports and compare read the
same files whichever executor ran the cells.

Every other worker job (a bench row, a parity side, the starting bundle's export, the data
check, the residual ratios) is a :class:`Job` run with :func:`run_job`: it blocks until the
worker's result is back, on the executor the command's :class:`~bench.runner.WorkerConfig`
carries. A job names the arguments that are files (``inputs`` the worker reads, ``outputs`` it
writes) and the manifest whose images it reads, so that a remote node gets them and the driver
writes the outputs back where the arguments said, atomically. Jobs of one ``group`` run on one
node (a bench's rows: one machine's figures, never a mix).

- ``local`` (the default): ``bench.runner.run_worker`` in a subprocess of this process, the
  cells one after the other, exactly as before the seam existed; with ``--parallel N``, N
  cells at a time (each worker then gets cores/N threads; other jobs still one at a time).
  Ray is not imported.
- ``ray`` (``bench.ray_executor``): every cell is a Ray task that runs the same worker module in
  a subprocess on its node (one framework per process still holds), with ``num_cpus`` = the
  worker's threads; independent cells run at the same time, as many as the cluster's CPUs allow.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
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


@dataclass
class Job:
    """One framework worker job that is not a training cell (see the module docstring).

    ``inputs``, ``outputs`` and ``manifest`` are keys of ``args`` (dotted for a nested dict:
    ``"row.manifest"``); a key whose value is None is left alone. Where the images are read from
    goes into ``data_root`` beside the manifest's key on a remote node."""

    framework: str
    task: str
    args: dict[str, Any]
    arrays: dict[str, Any] | None = None
    job_dir: Path | None = None
    timeout: float | None = None
    inputs: tuple[str, ...] = ()  # files the worker reads
    outputs: tuple[str, ...] = ()  # files the worker writes
    manifest: str | None = None  # the manifest the worker reads images through
    group: str | None = None  # jobs of one group run on one node
    gpus: int = 0  # devices the job uses (Ray: num_gpus where the cluster has GPUs)

    @property
    def label(self) -> str:
        return f"{self.task} ({self.framework})"


def get_arg(args: dict[str, Any], key: str) -> Any:
    for part in key.split(".")[:-1]:
        args = args.get(part) or {}
    return args.get(key.split(".")[-1])


def set_arg(args: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    for part in parts[:-1]:
        args = args[part]
    args[parts[-1]] = value


def sibling(key: str, name: str) -> str:
    """The key ``name`` in the dict that holds ``key`` (``row.manifest`` -> ``row.data_root``)."""
    return ".".join(key.split(".")[:-1] + [name])


def run_job(config: Any, job: Job) -> Any:
    """Run ``job`` on the executor ``config`` (a bench.runner.WorkerConfig) carries, here when it
    carries none, and return the bench.runner.WorkerResult. Raises WorkerError or UserError as
    bench.runner.run_worker does."""
    executor = getattr(config, "executor", None) or LocalExecutor()
    return executor.call(job, config)


class Executor(Protocol):
    name: str
    concurrent: bool

    def run(self, cells: list[Cell], *, on_start: Callable[[Cell], None],
            on_done: Callable[[Cell, Outcome], None]) -> None:
        """Run every cell; call ``on_start`` when one starts and ``on_done`` when it ends. A
        UserError or KeyboardInterrupt propagates (the caller marks the cells that had not ended)."""

    def call(self, job: Job, config: Any) -> Any:
        """Run one job to its end and return its bench.runner.WorkerResult."""

    def close(self) -> None:
        ...


class LocalExecutor:
    """Subprocesses of this process: the cells one after the other, or ``slots`` at a time
    (``--parallel``). The callbacks run one at a time (they write the records)."""

    name = "local"

    def __init__(self, slots: int = 1):
        self.slots = max(1, int(slots))

    @property
    def concurrent(self) -> bool:
        return self.slots > 1

    def run(self, cells: list[Cell], *, on_start: Callable[[Cell], None],
            on_done: Callable[[Cell, Outcome], None]) -> None:
        if self.slots == 1:
            for cell in cells:
                on_start(cell)
                on_done(cell, self._train(cell))
            return
        import threading
        from concurrent.futures import ThreadPoolExecutor

        lock = threading.Lock()

        def one(cell: Cell) -> None:
            with lock:
                on_start(cell)
                print(f"local: {cell.key} started ({self.slots} workers at a time)", file=sys.stderr, flush=True)
            outcome = self._train(cell)
            outcome.executor = {"name": self.name, "parallel": self.slots}
            with lock:
                print(f"local: {cell.key} ended ({'ok' if outcome.error is None else 'failed'})", file=sys.stderr,
                      flush=True)
                on_done(cell, outcome)

        pool = ThreadPoolExecutor(max_workers=self.slots, thread_name_prefix="twinbench-cell")
        try:
            for future in [pool.submit(one, cell) for cell in cells]:
                future.result()  # a UserError (or a bug) in a cell propagates, as one after the other
        finally:
            # Ctrl-C or an error: the cells not started never start; running workers got the
            # terminal's SIGINT too (or end on their own) and their threads record them.
            pool.shutdown(wait=True, cancel_futures=True)

    @staticmethod
    def _train(cell: Cell) -> Outcome:
        from bench.runner import run_worker

        try:
            out = run_worker(cell.framework, "train", cell.job, job_dir=cell.fw_dir / "job", config=cell.wconfig)
        except WorkerError as exc:
            return Outcome(error=exc)
        return Outcome(result=out.result)

    def call(self, job: Job, config: Any) -> Any:
        from bench.runner import run_worker

        return run_worker(job.framework, job.task, job.args, arrays=job.arrays, job_dir=job.job_dir, config=config,
                          timeout=job.timeout)

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
        executor = LocalExecutor(getattr(args, "parallel", None) or 1)
    args._executor = executor
    args._executor_owned = True  # close() closes it; one lent by a caller (twinbench run) stays open
    return executor


def check_options(args: argparse.Namespace) -> None:
    """The Ray options only with --executor ray (checked before any work starts)."""
    from bench.errors import UserError

    if (getattr(args, "executor", None) or "local") == "ray":
        if (getattr(args, "parallel", None) or 1) > 1:
            raise UserError(f"--parallel {args.parallel} is the local executor's; with --executor ray the cells run "
                            f"side by side as the cluster's CPUs allow (set --threads)")
        return
    for flag, dest in (("--ray-address", "ray_address"), ("--ray-cpus", "ray_cpus")):
        if getattr(args, dest, None):
            raise UserError(f"{flag} {getattr(args, dest)} needs --executor ray")


def lend(args: argparse.Namespace, executor: Executor) -> argparse.Namespace:
    """``args`` (a step's command arguments) running on ``executor``, which stays open after the
    step's command ends: twinbench run's steps share one cluster."""
    args._executor = executor
    args._executor_owned = False
    return args


@contextlib.contextmanager
def for_command(args: argparse.Namespace):
    """A command's executor options checked before any work, and a Ray cluster the command
    started stopped when it ends, however it ends."""
    check_options(args)
    try:
        yield
    finally:
        close(args)


def close(args: argparse.Namespace) -> None:
    """Close the executor ``from_args`` made for this command (a lent one is left open)."""
    executor = vars(args).pop("_executor", None)
    if executor is not None and vars(args).pop("_executor_owned", False):
        executor.close()
