"""The half of :class:`bench.measure.Backend` that both framework workers write alike.

``tf_impl.benchmark.Backend`` and ``torch_impl.benchmark.Backend`` subclass :class:`DeviceBackend`:
it binds their module's functions (each takes the device last: ``synthetic_batch(row, device)``,
``make_step(model, row, device, batches)``, ...) to one device, and runs a row, the matmul peak
and the ``bench_row`` task on the device a row asks for. A subclass writes only what differs
(``skip_reason``, ``prepare``, ``build_model``, ``cleanup``, ``matmul_step``).

Framework-free and numpy-free, as ``bench.measure`` (the GPU check runs where only PyTorch is installed).
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any, Callable

from bench import measure as bm


class DeviceBackend:
    """``bench.measure.Backend`` over the functions of ``impl`` (the framework's benchmark module),
    bound to one device."""

    framework: str  # "tf" or "torch"
    impl: ModuleType  # the module whose functions the hooks call

    def __init__(self, device: Any, *, gpu: bool):
        self.device = device
        self.label = self.impl.device_label(device)
        self.gpu = gpu
        self.sync = self.impl.make_sync(device)

    @classmethod
    def for_row(cls, row: dict[str, Any]) -> "DeviceBackend":
        """The backend on the device the row asks for (``"auto"``: a GPU where there is one)."""
        return cls(cls.impl.device_for(row.get("device", "auto")))

    # ---- the row's hooks ----------------------------------------------------------------------
    def skip_reason(self, row: dict[str, Any]) -> str | None:
        return self.check_precision(row["precision"])

    def check_precision(self, precision: str) -> str | None:
        return self.impl.check_precision(precision, self.device)

    def use_tf32(self, enabled: bool) -> None:
        if self.gpu:
            self.impl.set_tf32(enabled)

    def prepare(self, row: dict[str, Any]) -> None:
        self.use_tf32(row["precision"] == "tf32")

    def synthetic_batch(self, row: dict[str, Any]) -> tuple[Any, Any]:
        return self.impl.synthetic_batch(row, self.device)

    def pipeline_batches(self, row: dict[str, Any]) -> Callable[[], tuple[Any, Any]]:
        return self.impl.pipeline_batches(row, self.device)

    def memory_in_use(self) -> int | None:
        return self.impl.memory_in_use(self.device)

    def build_model(self, row: dict[str, Any]) -> tuple[Any, str]:
        return self.impl.build_model(row)

    def make_step(self, model: Any, row: dict[str, Any], batches: Callable[[], tuple[Any, Any]]) -> Callable[[], Any]:
        return self.impl.make_step(model, row, self.device, batches)

    def memory_counters(self) -> tuple[Callable[[], bool], Callable[[], dict[str, Any]]]:
        return self.impl.memory_counters(self.device)

    def is_oom(self, exc: BaseException) -> bool:
        return self.impl.is_oom(exc)

    def op_profile(self, step: Callable[[], Any]) -> dict[str, Any]:
        """One warm step's time by op, where the framework module has a profiler for it."""
        profiler = getattr(self.impl, "op_profile", None)
        if profiler is None:
            return {"skipped": f"no op profile for {self.framework} (torch.profiler: torch and keras-torch rows)"}
        return profiler(step, self.sync, self.device)

    def cleanup(self, row: dict[str, Any]) -> None:
        """Nothing to free by default."""

    def threads(self) -> dict[str, int]:
        return self.impl.threads()

    def versions(self) -> dict[str, Any]:
        return self.impl.versions()

    def environment(self) -> dict[str, Any]:
        return self.impl.environment(self.device)

    # ---- what the framework module offers -----------------------------------------------------
    @classmethod
    def run_row(cls, row: dict[str, Any], progress: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Measure one configuration (``bench.measure.measure_row``) on the row's device: warm-up,
        timed windows, then the memory loop."""
        return bm.measure_row(row, cls.for_row(row), progress)

    @classmethod
    def peak_flops(cls, dtypes: tuple[str, ...], device: Any, size: int = 0,
                   progress: Callable[[str], None] | None = None) -> dict[str, float]:
        """FLOP/s of a large square matmul per dtype (``bench.measure.measure_peak``): the measured
        ceiling that MFU divides by."""
        return bm.measure_peak(dtypes, cls(device), size, progress)

    @classmethod
    def bench_row(cls, args: dict[str, Any], inputs: dict, job_dir) -> tuple[dict[str, Any], None]:
        """Worker task (``bench.measure.bench_task``): the matmul peak where asked, then one row;
        progress on stderr, prefixed by the framework."""
        def progress(message: str) -> None:
            print(f"    {cls.framework}: {message}", file=sys.stderr, flush=True)

        return bm.bench_task(args, cls.for_row(args["row"]), progress), None
