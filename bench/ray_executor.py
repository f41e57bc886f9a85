"""The Ray executor: each training cell (repeat x framework) a Ray task, side by side, and every
other worker job (bench rows, parity sides, the init export, ...) a Ray task in its turn.

    twinbench train --profile quick --repeats 4 --threads 1 --executor ray          # local cluster
    twinbench train --profile quick --repeats 4 --executor ray --ray-address auto   # a running one

A task (:func:`train_cell`) runs on its node what the local executor runs here: the framework's
worker module in a subprocess (``bench.runner.run_worker``: one framework per process), in a
scratch copy of the run directory built from what the driver sent (the manifest, the starting
bundle, the framework's earlier state and checkpoints). It declares ``num_cpus`` = the worker's
threads x devices (``num_gpus`` = devices when the cluster has GPUs) and returns the worker's
result and every file it wrote, as bytes; the driver writes them into the run directory
atomically and merges the result into the record, the only writer of either. So a cell retried
after its node died is still written once.

The images reach a node once (``bench.nodedata``): through the object store, or from the shared
``--data-root``; either way checked against the manifest's sha256 on the node before use.

Any other job (:func:`worker_job`, through :meth:`RayExecutor.call`) is one task the driver
waits for: the files its arguments name as inputs travel with it, the manifest's images reach
the node as above, the worker runs in a scratch folder there, and its result, arrays and output
files come back (the outputs written where the arguments said, atomically). Jobs of one group
(a bench's rows) are pinned to the node the group's first job ran on.

Faults: a task whose Ray worker or node dies, or whose framework worker is killed by a signal,
is retried by Ray (``max_retries`` = ``--ray-retries``); each attempt's start is logged with an
actor on the driver's node, so the record says how many attempts a cell took and where they
ran. A worker that fails by itself (an exception, NaN stop) is not retried: it is recorded as
failed, as locally. Ctrl-C cancels the tasks (force: their workers die with them); the cells
that ended are already written, ``twinbench train --resume SET`` runs the rest.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

from bench import atomic
from bench.errors import UserError, WorkerError, one_line
from bench.frameworks import FRAMEWORK_LABELS

ROOT = Path(__file__).resolve().parent.parent  # the source tree the nodes import bench from
POLL_S = 1.0


class WorkerDied(Exception):
    """Raised in a task when its framework worker was killed by a signal: Ray retries it."""


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'ray==2.60.0' (the version pyproject.toml pins)") from None
    return ray


class CellLog:
    """An actor on the driver's node: every attempt of every cell, in the order they started."""

    def __init__(self) -> None:
        self.starts: dict[str, list[str]] = {}

    def started(self, key: str, node: str) -> int:
        self.starts.setdefault(key, []).append(node)
        return len(self.starts[key])

    def all(self) -> dict[str, list[str]]:
        return self.starts


class RayExecutor:
    name = "ray"
    concurrent = True

    def __init__(self, *, address: str | None = None, num_cpus: int | None = None, retries: int = 2,
                 data_root: str | None = None):
        self.ray = ray = _import_ray()
        if retries < 0:
            raise UserError(f"--ray-retries {retries}: expected 0 or more")
        if address and num_cpus:
            raise UserError("--ray-cpus sizes a local cluster; a cluster joined with --ray-address has its own CPUs")
        self.retries = retries
        self.data_root = str(Path(data_root).resolve()) if data_root else None
        self.started_cluster = False
        if not ray.is_initialized():
            pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
            runtime_env = {"env_vars": {"PYTHONPATH": pythonpath}}
            try:
                if address:
                    ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
                else:
                    ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False,
                             runtime_env=runtime_env, log_to_driver=True)
            except ConnectionError as exc:
                raise UserError(f"--ray-address {address}: cannot join a Ray cluster there ({one_line(str(exc))})") from None
            self.started_cluster = True
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = ray.get_runtime_context().get_node_id()
        self.log = ray.remote(CellLog).options(
            num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False)).remote()
        self._task = ray.remote(train_cell)
        self._job = ray.remote(worker_job)
        self._images: dict[str, Any] = {}  # manifest fingerprint -> object ref of its images
        self._groups: dict[str, str] = {}  # job group -> the node its first job ran on
        self._jobs = 0
        resources = ray.cluster_resources()
        print(f"ray: {len([n for n in ray.nodes() if n.get('Alive')])} node(s), {resources.get('CPU', 0):g} CPUs"
              f"{', %g GPUs' % resources['GPU'] if resources.get('GPU') else ''}; images "
              f"{'from ' + self.data_root if self.data_root else 'through the object store'}", file=sys.stderr,
              flush=True)

    # ---- driver side -----------------------------------------------------------------------------
    def run(self, cells: list, *, on_start: Callable, on_done: Callable) -> None:
        ray = self.ray
        if not cells:
            return
        refs: dict[Any, Any] = {}
        shown: dict[str, int] = {}
        started: set[str] = set()
        try:
            inits: dict[Path, Any] = {}
            for cell in cells:
                refs[self._submit(cell, inits)] = cell
            pending = list(refs)
            done_count = 0
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=POLL_S)
                self._show_starts(cells, shown, started, on_start)
                for ref in done:
                    cell = refs[ref]
                    if cell.key not in started:  # ended before a poll saw it start
                        started.add(cell.key)
                        on_start(cell)
                    with _ctrl_c_deferred():  # its files and its record: both, or (after Ctrl-C) neither
                        outcome = self._collect(ref, cell)
                        on_done(cell, outcome)  # the record first: the line below means it is written
                    done_count += 1
                    print(f"ray: {cell.key} ended ({'ok' if outcome.error is None else 'failed'}, attempt "
                          f"{outcome.executor.get('attempts')}); {done_count}/{len(cells)} cells done",
                          file=sys.stderr, flush=True)
        except BaseException:
            for ref in refs:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # already finished, or its node is gone
                    pass
            raise

    def _submit(self, cell, inits: dict[Path, Any]):
        ray = self.ray
        need_cpus = cell.threads * cell.devices
        largest = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=0)
        if need_cpus > largest:
            raise UserError(f"{cell.key} needs {need_cpus} CPUs (--threads {cell.threads} x --devices {cell.devices}) "
                            f"but the largest Ray node has {largest:g}: lower --threads")
        gpus = cell.devices if ray.cluster_resources().get("GPU") else 0
        manifest_text = (cell.run_dir / "manifest.json").read_text()
        init_name = cell.record.init.get("path")
        init_ref = None
        if init_name:
            if cell.run_dir not in inits:  # once per run: its frameworks share the bundle
                inits[cell.run_dir] = ray.put((cell.run_dir / init_name).read_bytes())
            init_ref = inits[cell.run_dir]
        spec = {
            "key": cell.key, "framework": cell.framework, "run_name": cell.run_dir.name, "job": cell.job,
            "manifest_text": manifest_text, "init_name": init_name, "fw_files": _read_files(cell.fw_dir),
            "data_root": self.data_root, "worker": _worker_fields(cell.wconfig),
        }
        images = None if self.data_root else [self._images_ref(cell.run_dir / "manifest.json")]
        return self._task.options(
            num_cpus=need_cpus, num_gpus=gpus, max_retries=self.retries, retry_exceptions=[WorkerDied],
            name=f"twinbench {cell.key}").remote(spec, init_ref, images, self.log)

    def _images_ref(self, manifest_path: Path, data_root: str | None = None):
        """The manifest's images in the object store, put once per manifest."""
        from bench.dataset import load_manifest
        from bench.nodedata import pack_images

        manifest = load_manifest(manifest_path, data_root=data_root, verify="none")
        if manifest.fingerprint not in self._images:
            self._images[manifest.fingerprint] = self.ray.put(pack_images(manifest))
        return self._images[manifest.fingerprint]

    def _show_starts(self, cells: list, shown: dict[str, int], started: set[str], on_start: Callable) -> None:
        starts = self.ray.get(self.log.all.remote())
        for cell in cells:
            nodes = starts.get(cell.key, [])
            for n in range(shown.get(cell.key, 0), len(nodes)):
                again = f" (retry {n} of {self.retries})" if n else ""
                print(f"ray: {cell.key} started on node {nodes[n][:12]}, attempt {n + 1}{again}", file=sys.stderr,
                      flush=True)
            shown[cell.key] = len(nodes)
            if nodes and cell.key not in started:
                started.add(cell.key)
                on_start(cell)

    def _collect(self, ref, cell):
        """The task's outcome; its files written into the cell's directory first."""
        from bench.executor import Outcome

        ray = self.ray
        label = FRAMEWORK_LABELS.get(cell.framework, cell.framework)
        try:
            out = ray.get(ref)
        except ray.exceptions.RayError as exc:  # retries spent: the worker or node died every time
            nodes = ray.get(self.log.all.remote()).get(cell.key, [])
            cause = exc.cause if isinstance(exc, ray.exceptions.RayTaskError) and exc.cause else exc
            return Outcome(error=WorkerError(f"{label} worker ({cell.key}) died on Ray {len(nodes)} time(s) "
                                             f"({one_line(str(cause))}); continue with --resume"),
                           executor={"name": "ray", "attempts": len(nodes), "nodes": [n[:12] for n in nodes]})
        nodes = ray.get(self.log.all.remote()).get(cell.key, [])
        write_files(cell.fw_dir, out["files"])
        info = {"name": "ray", "attempts": out["attempt"], "node": out["node"][:12], "nodes": [n[:12] for n in nodes],
                "machine": out["machine"]}
        if out.get("user_error"):
            raise UserError(out["user_error"])
        if out.get("error"):
            return Outcome(error=WorkerError(out["error"]), executor=info)
        return Outcome(result=out["result"], executor=info)

    # ---- one job at a time -------------------------------------------------------------------------
    def call(self, job, config):
        """Run ``job`` (bench.executor.Job) as one Ray task and wait for it; see the module docstring."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from bench.executor import get_arg, sibling
        from bench.runner import WorkerResult

        ray = self.ray
        self._jobs += 1
        key = f"job-{self._jobs}/{job.task}/{job.framework}"
        job_dir = Path(job.job_dir) if job.job_dir else Path(tempfile.mkdtemp(prefix="twinbench-ray-job-"))
        spec = job_spec(job, config, key=key, data_root=self.data_root, job_dir=job_dir)
        images = None
        if spec["manifest_text"] is not None and not self.data_root:
            images = [self._images_ref(Path(get_arg(job.args, job.manifest)),
                                       get_arg(job.args, sibling(job.manifest, "data_root")))]
        alive = [n for n in ray.nodes() if n.get("Alive")]
        largest = max((n["Resources"].get("CPU", 0) for n in alive), default=0)
        cpus = config.threads or largest  # "all cores": a whole node, as locally
        if cpus > largest:
            raise UserError(f"{job.label} needs {cpus} CPUs (--threads {config.threads}) but the largest Ray node "
                            f"has {largest:g}: lower --threads")
        options: dict[str, Any] = {"num_cpus": cpus, "max_retries": self.retries, "retry_exceptions": [WorkerDied],
                                   "name": f"twinbench {key}"}
        if job.gpus and ray.cluster_resources().get("GPU"):
            options["num_gpus"] = job.gpus
        if job.group and job.group in self._groups:
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=self._groups[job.group],
                                                                            soft=False)
        ref = self._job.options(**options).remote(spec, job.arrays, images, self.log)
        label = FRAMEWORK_LABELS.get(job.framework, job.framework)
        try:
            out = ray.get(ref)
        except ray.exceptions.RayError as exc:  # retries spent, or the group's node is gone
            nodes = ray.get(self.log.all.remote()).get(key, [])
            cause = exc.cause if isinstance(exc, ray.exceptions.RayTaskError) and exc.cause else exc
            raise WorkerError(f"{label} worker ({job.task}) died on Ray {len(nodes)} time(s) "
                              f"({one_line(str(cause))})") from None
        except BaseException:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
            raise
        if job.group:
            self._groups.setdefault(job.group, out["node"])
        if out.get("user_error"):
            raise UserError(out["user_error"])
        if out.get("error"):
            raise WorkerError(out["error"])
        for k, data in out["files"].items():
            atomic.write_bytes(Path(get_arg(job.args, k)), data)
        for rel, data in out["job_files"].items():  # what the worker left in its job folder (the result names them)
            atomic.write_bytes(job_dir / rel, data)
        return WorkerResult(out["result"], out["arrays"], job_dir,
                            executor={"name": "ray", "node": out["node"][:12], "attempts": out["attempt"],
                                      "machine": out["machine"]})

    def close(self) -> None:
        if self.started_cluster and self.ray.is_initialized():
            self.ray.shutdown()


@contextlib.contextmanager
def _ctrl_c_deferred() -> Iterator[None]:
    """A Ctrl-C in the block is raised when it ends (main thread only; elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def job_spec(job, config, *, key: str, data_root: str | None, job_dir: Path) -> dict[str, Any]:
    """What a job's task carries (plain data): its arguments, the bytes of the files it reads, the
    names of those it writes, the manifest's text, the worker settings, and the driver's job folder
    (where the files the worker leaves in its own come back to)."""
    from bench.executor import get_arg

    inputs = {k: (Path(get_arg(job.args, k)).name, Path(get_arg(job.args, k)).read_bytes())
              for k in job.inputs if get_arg(job.args, k) is not None}
    outputs = {k: Path(get_arg(job.args, k)).name for k in job.outputs if get_arg(job.args, k) is not None}
    manifest = get_arg(job.args, job.manifest) if job.manifest else None
    return {"key": key, "framework": job.framework, "task": job.task, "args": job.args, "inputs": inputs,
            "outputs": outputs, "manifest_key": job.manifest if manifest is not None else None,
            "manifest_text": Path(manifest).read_text() if manifest is not None else None,
            "data_root": data_root, "timeout": job.timeout, "worker": _worker_fields(config), "job_dir": str(job_dir)}


def _worker_fields(wconfig) -> dict[str, Any]:
    """The WorkerConfig as plain data; "this Python" stays "the node's Python" on another machine."""
    return {"tf_python": None if wconfig.tf_python == sys.executable else wconfig.tf_python,
            "torch_python": None if wconfig.torch_python == sys.executable else wconfig.torch_python,
            "threads": wconfig.threads, "quiet": wconfig.quiet, "env": dict(wconfig.env)}


def _read_files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by its relative POSIX path (a framework's state and checkpoints)."""
    if not folder.is_dir():
        return {}
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def write_files(fw_dir: Path, files: dict[str, bytes]) -> None:
    """A task's files into the framework's directory, each atomically, ``state.json`` last (it
    names the checkpoint, which must be there first); checkpoints the node pruned are pruned here."""
    from bench.training import STATE_NAME

    for rel in sorted(files, key=lambda r: r == STATE_NAME):
        atomic.write_bytes(fw_dir / rel, files[rel])
    if files:
        for stale in fw_dir.glob("ckpt-*"):
            if stale.is_file() and stale.name not in files:
                stale.unlink()


# ---- node side -----------------------------------------------------------------------------------
def train_cell(spec: dict[str, Any], init_bytes: bytes | None, images: list | None, log) -> dict[str, Any]:
    """A Ray task: one cell's worker, on this node, in a scratch run directory; its result and files."""
    import ray

    from bench.dataset import parse_manifest
    from bench.nodedata import node_images
    from bench.runner import WorkerConfig, run_worker

    node = ray.get_runtime_context().get_node_id()
    attempt = ray.get(log.started.remote(spec["key"], node))
    fw = spec["framework"]
    scratch = Path(tempfile.mkdtemp(prefix="twinbench-cell-"))
    try:
        run_dir = scratch / spec["run_name"]
        fw_dir = run_dir / fw
        manifest_path = run_dir / "manifest.json"
        atomic.write_text(manifest_path, spec["manifest_text"])
        if init_bytes is not None:
            atomic.write_bytes(run_dir / spec["init_name"], init_bytes)
        write_files(fw_dir, spec["fw_files"])
        fw_dir.mkdir(parents=True, exist_ok=True)
        out: dict[str, Any] = {"node": node, "attempt": attempt, "files": {}, "machine": node_machine()}
        try:
            manifest, _ = parse_manifest(spec["manifest_text"], manifest_path)
            root = node_images(manifest, node=node, shared_root=spec["data_root"],
                               fetch=(lambda: ray.get(images[0])) if images else None)
        except UserError as exc:  # this node's data is not the manifest's: refuse before any worker
            return {**out, "user_error": str(exc)}
        job = {**spec["job"], "manifest": str(manifest_path), "data_root": str(root), "fw_dir": str(fw_dir),
               "init": str(run_dir / spec["init_name"]) if init_bytes is not None else None}
        w = spec["worker"]
        config = WorkerConfig(tf_python=w["tf_python"] or sys.executable,
                              torch_python=w["torch_python"] or sys.executable,
                              threads=w["threads"], quiet=w["quiet"], env=w["env"], die_with_parent=True)
        try:
            out["result"] = run_worker(fw, "train", job, job_dir=fw_dir / "job", config=config).result
        except WorkerError as exc:
            if exc.killed_by:  # the node is going away, or the OOM killer: another attempt may well succeed
                raise WorkerDied(f"{spec['key']} on node {node[:12]}: {one_line(str(exc))}") from None
            out["error"] = str(exc)
        except UserError as exc:
            out["user_error"] = str(exc)
        out["files"] = _read_files(fw_dir)
        return out
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def worker_job(spec: dict[str, Any], arrays: dict | None, images: list | None, log) -> dict[str, Any]:
    """A Ray task: one worker job on this node (:func:`run_job_here`), its attempts logged."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    attempt = ray.get(log.started.remote(spec["key"], node))
    return run_job_here(spec, arrays, node=node, attempt=attempt,
                        fetch=(lambda: ray.get(images[0])) if images else None)


def run_job_here(spec: dict[str, Any], arrays: dict | None, *, node: str, attempt: int,
                 fetch: Callable[[], dict[str, bytes]] | None) -> dict[str, Any]:
    """Node side, Ray-free: the job's argument files and manifest in a scratch folder (the images
    from this node's checked copy, ``fetch`` filling its cache), the worker run there; its result,
    arrays and output files back. A worker killed by a signal raises WorkerDied (Ray retries)."""
    import copy

    from bench.dataset import parse_manifest
    from bench.executor import get_arg, set_arg, sibling
    from bench.nodedata import node_images
    from bench.runner import WorkerConfig, run_worker

    scratch = Path(tempfile.mkdtemp(prefix="twinbench-job-"))
    out: dict[str, Any] = {"node": node, "attempt": attempt, "files": {}, "job_files": {}, "machine": node_machine()}
    try:
        args = copy.deepcopy(spec["args"])
        back: dict[str, str] = {}  # this node's path -> the driver's, for the result

        def move(key: str, path: Path) -> None:
            back[str(path)] = get_arg(args, key)
            set_arg(args, key, str(path))

        for i, (key, (name, data)) in enumerate(sorted(spec["inputs"].items())):
            atomic.write_bytes(scratch / "in" / str(i) / name, data)
            move(key, scratch / "in" / str(i) / name)
        written: dict[str, Path] = {}
        for i, (key, name) in enumerate(sorted(spec["outputs"].items())):
            written[key] = scratch / "out" / str(i) / name
            written[key].parent.mkdir(parents=True, exist_ok=True)
            move(key, written[key])
        if spec["manifest_key"] and spec["manifest_text"] is not None:
            manifest_path = scratch / "manifest.json"
            atomic.write_text(manifest_path, spec["manifest_text"])
            move(spec["manifest_key"], manifest_path)
            try:
                manifest, _ = parse_manifest(spec["manifest_text"], manifest_path)
                root = node_images(manifest, node=node, shared_root=spec["data_root"], fetch=fetch)
            except UserError as exc:  # this node's data is not the manifest's: refuse before any worker
                return {**out, "user_error": str(exc)}
            set_arg(args, sibling(spec["manifest_key"], "data_root"), str(root))
        w = spec["worker"]
        config = WorkerConfig(tf_python=w["tf_python"] or sys.executable,
                              torch_python=w["torch_python"] or sys.executable,
                              threads=w["threads"], quiet=w["quiet"], env=w["env"], die_with_parent=True)
        try:
            res = run_worker(spec["framework"], spec["task"], args, arrays=arrays, job_dir=scratch / "job",
                             config=config, timeout=spec["timeout"])
        except WorkerError as exc:
            if exc.killed_by:  # the node is going away, or the OOM killer: another attempt may well succeed
                raise WorkerDied(f"{spec['key']} on node {node[:12]}: {one_line(str(exc))}") from None
            return {**out, "error": str(exc)}
        except UserError as exc:
            return {**out, "user_error": str(exc)}
        own = scratch / "job"  # the worker's job folder: the protocol's files, and any it wrote there itself
        job_files = {p.relative_to(own).as_posix(): p.read_bytes() for p in sorted(own.rglob("*"))
                     if p.is_file() and p.relative_to(own).as_posix() not in JOB_PROTOCOL_FILES}
        back[str(own)] = spec["job_dir"]
        out.update(result=_paths_back(res.result, back), arrays=res.arrays, job_files=job_files,
                   files={key: path.read_bytes() for key, path in written.items() if path.is_file()})
        return out
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def node_machine() -> dict[str, Any]:
    """The machine a task ran on (a record's figures are this machine's, not the driver's)."""
    from bench.envinfo import cpu_info

    return {"node": socket.gethostname(), "cpu": cpu_info()}


JOB_PROTOCOL_FILES = ("job.json", "inputs.npz", "result.json", "arrays.npz")  # bench.runner's, not the worker's


def _paths_back(value: Any, back: dict[str, str]) -> Any:
    """``value`` with every string that is one of this node's scratch paths replaced by the
    driver's path it stood for, and a path inside a scratch folder by the same path inside the
    driver's (a worker's result echoes the files it read and wrote)."""
    if isinstance(value, str):
        if value in back:
            return back[value]
        for node_path, driver_path in back.items():
            if value.startswith(node_path + os.sep):
                return driver_path + value[len(node_path):]
        return value
    if isinstance(value, dict):
        return {k: _paths_back(v, back) for k, v in value.items()}
    if isinstance(value, list):
        return [_paths_back(v, back) for v in value]
    return value
