"""Timed training and inference steps in PyTorch: our ResNet-50 and ``torchvision.models.resnet50``.

The worker side of ``twinbench bench`` (task ``bench_row``), also run in-process by
``torch_impl/gpu_check.py``; mirror of ``tf_impl/benchmark.py``. The row and peak control flow, the
loop, statistics and FLOPs are ``bench.measure``'s; this module supplies (as :class:`Backend`)
the model, the step, the device sync, the precision switches and the memory counters. numpy-free
on purpose (the GPU check machine may lack it).
"""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import sys
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from bench import measure as bm
from bench.errors import UserError
from bench.measure_backend import DeviceBackend
from bench.spec import build_spec
from torch_impl.step import optimizer_step

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
MATMUL_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
KERAS_ADAM_EPSILON = 1e-7  # Keras' Adam default (its "epsilon hat" form does not change the cost)


# ---- device, sync, precision ----------------------------------------------------------------------
def device_for(requested: str = "auto") -> torch.device:
    if requested == "gpu" and not torch.cuda.is_available():
        raise UserError("--device gpu: torch sees no CUDA device")
    if requested in ("auto", "gpu") and torch.cuda.is_available():
        return torch.device("cuda", 0)
    return torch.device("cpu")


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:0 {torch.cuda.get_device_name(device)}"
    return f"cpu {platform.processor() or platform.machine()}"


def make_sync(device: torch.device) -> bm.Sync:
    """torch's own device sync: CUDA kernels run asynchronously to the host; on the CPU
    ``torch.cpu.synchronize`` is the same call's CPU form (ops return when done)."""
    if device.type == "cuda":
        return lambda out: torch.cuda.synchronize(device)
    return lambda out: torch.cpu.synchronize()


def set_tf32(enabled: bool) -> None:
    """TF32 for CUDA matmuls AND cuDNN convolutions. cuDNN's flag defaults to True in PyTorch,
    so a plain "fp32" torch run convolves in TF32 unless this turns it off.

    Through the legacy flags on purpose: from torch 2.9 a write through the new per-backend
    ``fp32_precision`` API makes inductor's legacy reads raise "mix of the legacy and new APIs"
    (pytorch/pytorch#166387, fixed only by #189955), i.e. it breaks ``torch.compile``; the legacy
    flags merely warn that they are deprecated."""
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def check_precision(precision: str, device: torch.device) -> str | None:
    """Why a precision cannot run here (None: it can)."""
    if precision in bm.GPU_ONLY_PRECISIONS and device.type != "cuda":
        return f"{precision} needs a GPU (TF32 and fp16 tensor cores); this worker runs on the CPU"
    return None


def autocast(precision: str, device: torch.device):
    """torch autocast for mixed precision (weights and optimizer state stay fp32, as Keras'
    mixed_bfloat16 / mixed_float16 policies keep variables in float32)."""
    dtype = AUTOCAST_DTYPES.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def is_oom(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's failure (DefaultCPUAllocator)."""
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text
                                              or "not enough memory" in text)


# ---- models ---------------------------------------------------------------------------------------
def build_model(row: dict[str, Any]) -> tuple[nn.Module, str]:
    """Ours (from bench.spec) or torchvision's resnet50 (v1.5, weights=None: random init)."""
    torch.manual_seed(int(row.get("seed", 0)))
    if row["model"] == "ours":
        from torch_impl import model as tm

        spec = build_spec(row.get("arch", "resnet50"), row["classes"], row["input_size"], row["pooling"])
        return tm.build(spec), "ours (torch_impl.model)"
    try:
        import torchvision
    except ImportError:
        # The GPU check machine may have torch alone: an architecture copy of torchvision's.
        return TorchvisionResNet50(row["classes"]), "torchvision-architecture copy (torchvision not installed)"
    return torchvision.models.resnet50(weights=None, num_classes=row["classes"]), \
        f"torchvision.models.resnet50 ({torchvision.__version__})"


class _TVBottleneck(nn.Module):
    """torchvision's Bottleneck (v1.5: stride on the 3x3, no conv biases, BN eps 1e-5)."""

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * 4
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (self.downsample(x) if self.downsample is not None else x))


class TorchvisionResNet50(nn.Module):
    """Layer for layer ``torchvision.models.resnet50()`` (same convs, strides, pads, head), for a
    machine without torchvision. Initialisation differs; speed and memory do not."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
        layers, cin = [], 64
        for width, count, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            blocks = []
            for i in range(count):
                blocks.append(_TVBottleneck(cin, width, stride if i == 0 else 1))
                cin = width * 4
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ---- inputs and steps -------------------------------------------------------------------------------
def synthetic_batch(row: dict[str, Any], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A device-resident batch of raw 0..255 pixels (the seed's input) and labels."""
    g = torch.Generator(device="cpu").manual_seed(int(row.get("seed", 0)))
    b, s = row["batch"], row["input_size"]
    x = (torch.rand(b, 3, s, s, generator=g) * 255).to(device)
    y = torch.randint(0, row["classes"], (b,), generator=g).to(device)
    if row["layout"] == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y


def pipeline_batches(row: dict[str, Any], device: torch.device) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    """Batches from the manifest's training pipeline (``torch_impl.data.make_loader``, its default
    options at the row's size and batch), endlessly, copied to the device inside the step: what
    end-to-end throughput includes. An epoch's last, partial batch is fetched (its time counts)
    but not fed, so every step trains on exactly the recorded batch."""
    from bench.dataset import PipelineOptions, load_manifest
    from torch_impl import data as td

    manifest = load_manifest(row["manifest"], data_root=row.get("data_root"), verify="size")  # hashes: the parent
    options = PipelineOptions(image_size=row["input_size"], batch_size=row["batch"])
    loader = td.make_loader(manifest, "training", options)
    state: dict[str, Any] = {"it": iter(loader), "partial": 0}
    row["pipeline"] = {**options.to_dict(), "workers": td.default_workers(options), "loader": "torch DataLoader"}

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        while True:
            try:
                x, y = next(state["it"])
            except StopIteration:
                state["it"] = iter(loader)
                continue
            if x.shape[0] == row["batch"]:
                break
            state["partial"] += 1
            row["pipeline"]["partial_batches_skipped"] = state["partial"]
        x = x.to(device, non_blocking=True)
        x = x.contiguous(memory_format=torch.channels_last if row["layout"] == "nhwc" else torch.contiguous_format)
        return x, y.to(device, non_blocking=True).long()
    return next_batch


def make_step(model: nn.Module, row: dict[str, Any], device: torch.device,
              batches: Callable[[], tuple[torch.Tensor, torch.Tensor]]) -> Callable[[], Any]:
    """One training step (forward, cross-entropy on the logits, backward, Adam) or one inference
    forward, under the row's precision and compilation. Both models get the same step."""
    forward = torch.compile(model) if row["compile"] == "jit" else model
    precision = row["precision"]
    if row["mode"] == "infer":
        model.eval()

        def infer() -> torch.Tensor:
            x, _ = batches()
            with torch.inference_mode(), autocast(precision, device):
                return forward(x)
        return infer

    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=KERAS_ADAM_EPSILON)
    # fp16 needs loss scaling (Keras wraps its optimizer in a LossScaleOptimizer likewise); bf16 does not.
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def train() -> torch.Tensor:
        x, y = batches()
        # twinbench train's step (the seed's loss on the logits), on the compiled module under "jit"
        return optimizer_step(forward, optimizer, x, y, autocast=lambda: autocast(precision, device), scaler=scaler)[0]
    return train


# ---- memory ---------------------------------------------------------------------------------------
def memory_counters(device: torch.device) -> tuple[Callable[[], bool], Callable[[], dict[str, Any]]]:
    """(reset, read) of the peak: CUDA caching allocator on a GPU, peak RSS on the CPU."""
    if device.type == "cuda":
        def reset() -> bool:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            return True

        def read() -> dict[str, Any]:
            return {"kind": "torch CUDA allocator peak (max_memory_allocated)",
                    "peak_bytes": torch.cuda.max_memory_allocated(device),
                    "reserved_peak_bytes": torch.cuda.max_memory_reserved(device)}
        return reset, read
    return bm.reset_peak_rss, bm.read_peak_rss


def memory_in_use(device: torch.device) -> int | None:
    """Bytes in use now: allocated tensors on a GPU, the process's RSS on the CPU (what a row's
    peak adds to: inputs, framework, anything earlier rows left behind)."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    return bm.read_peak_rss().get("current_bytes")


# ---- one row, the machine peak ------------------------------------------------------------------------
class Backend(DeviceBackend):
    """torch's hooks for ``bench.measure``'s shared row and peak loops, bound to one device: this
    module's functions (``bench.measure_backend``), plus what only torch does."""

    framework = "torch"
    impl = sys.modules[__name__]

    def __init__(self, device: torch.device):
        super().__init__(device, gpu=device.type == "cuda")

    def prepare(self, row: dict[str, Any]) -> None:
        self.use_tf32(row["precision"] == "tf32")
        if self.gpu:
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels

    def build_model(self, row: dict[str, Any]) -> tuple[nn.Module, str]:
        model, label = build_model(row)
        model = model.to(self.device)
        if row["layout"] == "nhwc":
            model = model.to(memory_format=torch.channels_last)
        return model, label

    def cleanup(self, row: dict[str, Any]) -> None:
        """torch_impl/gpu_check.py runs many rows in one process: once the row's model and step are
        dropped, free its compiled graphs and cached CUDA blocks too."""
        if row["compile"] == "jit":
            torch._dynamo.reset()
        gc.collect()
        if self.gpu:
            torch.cuda.empty_cache()

    def matmul_step(self, precision: str, n: int) -> Callable[[], torch.Tensor]:
        return matmul_step(self.device, precision, n)


def matmul_step(device: torch.device, precision: str, n: int) -> Callable[[], torch.Tensor]:
    """One n x n matmul in ``precision`` on ``device`` (the machine-peak probe)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, MATMUL_DTYPES[precision])
    b = torch.randn(n, n, generator=g).to(device, MATMUL_DTYPES[precision])
    return lambda: a @ b


# One row on its device, the matmul peak, and the worker task ``bench_row`` (bench.measure_backend).
run_row = Backend.run_row
peak_flops = Backend.peak_flops
bench_row = Backend.bench_row


# ---- environment ------------------------------------------------------------------------------------
def op_profile(step: Callable[[], Any], sync: bm.Sync, device: torch.device) -> dict[str, Any]:
    """Where one warm step spends its time: ``torch.profiler`` over one call of ``step``, every op that
    took time, by self time (CPU; the device's own time on CUDA), largest first."""
    from torch.profiler import ProfilerActivity, profile

    # Kineto logs "gpuGetDeviceCount failed" at ERROR on a machine without a GPU: not an error here.
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        sync(step())
    clock = "device" if device.type == "cuda" else "cpu"

    def self_us(event) -> float:
        if clock == "cpu":
            return float(event.self_cpu_time_total)
        return float(getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0.0))

    events = sorted(prof.key_averages(), key=self_us, reverse=True)
    ops = [{"name": e.key, "self_ms": self_us(e) / 1e3, "calls": int(e.count)} for e in events if self_us(e) > 0]
    return {"tool": f"torch.profiler {torch.__version__}", "clock": clock, "steps": 1,
            "total_ms": sum(o["self_ms"] for o in ops), "ops": ops}


def threads() -> dict[str, int]:
    return {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()}


def versions() -> dict[str, Any]:
    out: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda,
                           "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
                           "python": platform.python_version()}
    try:
        import torchvision
        out["torchvision"] = torchvision.__version__
    except ImportError:
        out["torchvision"] = None
    return out


def environment(device: torch.device) -> dict[str, Any]:
    return {"framework": "torch", "device": device_label(device), "threads": threads(), "versions": versions(),
            "onednn": torch.backends.mkldnn.is_available(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
