"""PyTorch side of ``twinbench train``: the seed's training, ported faithfully.

Each step is what Keras' ``fit`` does for the seed's compile (``torch_impl.step``, Keras' Adam);
``--devices N`` runs DistributedDataParallel over N ``torchrun`` processes. The loss, mixed
precision and the data-parallel split: docs/profiles.md (the PyTorch worker).

Mirror: ``tf_impl/train.py``. The loop itself is ``bench.training.run_training``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench import atomic
from bench.errors import UserError
from bench.training import TrainConfig, peak_rss, run_training, write_pid
from torch_impl.step import optimizer_step

AUTOCAST = {"fp32": None, "mixed_bf16": torch.bfloat16, "mixed_fp16": torch.float16}


class Trainer:
    """The torch model, KerasAdam and the hooks ``run_training`` calls; one per rank."""

    framework = "torch"

    def __init__(self, job: dict[str, Any], *, rank: int = 0, world: int = 1, local_rank: int = 0):
        from bench.dataset import PipelineOptions, load_manifest
        from bench.spec import spec_from_args
        from bench.weights import WeightBundle
        from torch_impl import model as tm
        from torch_impl import optim
        from torch_impl import weights as tw

        self.config = config = TrainConfig(**job["config"])
        self.rank, self.world = rank, world
        self.is_main = rank == 0
        cuda = torch.cuda.is_available()
        self.device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
        if cuda:
            torch.cuda.set_device(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self.autocast_dtype = AUTOCAST[config.precision]
        if config.precision == "mixed_fp16" and not cuda:
            raise UserError("--precision mixed_fp16 needs a GPU (fp16 on CPU is emulated and slow); "
                            "use mixed_bf16 on CPU")
        if world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if cuda else "gloo")
        if config.deterministic:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        torch.manual_seed(config.seed)

        self.spec = spec_from_args(config.spec_args())
        self.tw = tw
        # job["alignment"]: a parity ablation planted on purpose (bench.training.torch_alignment)
        self.model = tm.build(self.spec, tm.Alignment(**(job.get("alignment") or {}))).to(self.device)
        if job.get("init"):
            tw.from_bundle(self.model, self.spec, WeightBundle.load(job["init"]), source=job["init"])
        self.net: torch.nn.Module = self.model
        if world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[local_rank] if cuda else None)
        self.optimizer = optim.build(config.optimizer_config(), self.model.parameters())
        # fp16 needs loss scaling (Keras: LossScaleOptimizer); bf16 has fp32's range and needs none.
        self.scaler = torch.amp.GradScaler("cuda") if config.precision == "mixed_fp16" else None

        self.manifest = load_manifest(job["manifest"], data_root=job.get("data_root"), verify="none")
        self.options = PipelineOptions(**config.pipeline_options())
        self.n_train = len(self.manifest.entries("training"))
        self._train = self._val = None
        self._bn_images: list[torch.Tensor] | None = None

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                              enabled=self.autocast_dtype is not None)

    # ---- data ------------------------------------------------------------------------------------
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n_train / self.config.batch_size)

    def train_batches(self, epoch: int):
        from torch_impl.data import run_loader

        # One loader for the run (its workers persist), set to the epoch's order: seeded by
        # (seed, epoch), so a resumed run sees the same order as a straight one.
        if self._train is None:
            self._train = run_loader(self.manifest, self.options)
        self._train.sampler.set_epoch(epoch)
        return self._train

    # ---- steps -----------------------------------------------------------------------------------
    def set_learning_rate(self, rate: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = rate

    def train_step(self, batch) -> tuple[float, int, int]:
        x, y = batch
        total = int(y.shape[0])
        if self.world > 1:
            bounds = np.cumsum([0] + [len(part) for part in np.array_split(np.arange(total), self.world)])
            x, y = x[bounds[self.rank]:bounds[self.rank + 1]], y[bounds[self.rank]:bounds[self.rank + 1]]
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        loss, logits = optimizer_step(self.net, self.optimizer, x, y, autocast=self._autocast, scaler=self.scaler)
        correct = (logits.argmax(dim=1) == y).sum()
        if self.world > 1:
            # Sample means over the global batch, as the TF side reads its summed metrics.
            sums = torch.stack([loss.detach().float() * x.shape[0], correct.float(),
                                torch.tensor(float(x.shape[0]), device=self.device)])
            torch.distributed.all_reduce(sums)
            return float(sums[0] / sums[2]), int(round(float(sums[1]))), int(round(float(sums[2])))
        return float(loss.detach()), int(correct), total  # float() waits for the step: the clock is synced

    @torch.no_grad()
    def estimate_bn(self) -> None:
        """Evaluation "precise-bn": each BN layer's statistics from the configured training images,
        in training mode with the current weights (momentum 1/k at the k-th batch: the mean of the
        batch means and of the biased batch variances; KerasBatchNorm2d applies Keras' biased form)."""
        layers = [m for m in self.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        saved = [m.momentum for m in layers]
        self.model.train()
        try:
            for k, x in enumerate(self.bn_images(), 1):
                for m in layers:
                    m.momentum = 1.0 / k
                with self._autocast():
                    self.model(x.to(self.device))
        finally:
            for m, momentum in zip(layers, saved):
                m.momentum = momentum

    def bn_images(self) -> list[torch.Tensor]:
        """The precise-BN images (the first ``bn_estimate_images`` of the training split in
        epoch 0's manifest order), decoded once and kept: 3 MB at 32 px, 150 MB at 224 px."""
        if self._bn_images is None:
            from torch_impl.data import bn_batches

            self._bn_images = bn_batches(self.manifest, self.options, self.config.bn_estimate_images)
        return self._bn_images

    def weight_sample(self, indices: dict[str, np.ndarray]) -> np.ndarray:
        """The chaos control's per-step sample: ``indices`` are Keras-layout flat indices."""
        if not hasattr(self, "_sample_plan"):
            from torch_impl.model import module_name

            plan = []
            for layer in self.spec.layers():
                module = self.model.get_submodule(module_name(layer))
                for w in layer.weight_names:
                    key = f"{layer.name}/{w}"
                    if key not in indices:
                        continue
                    tensor = getattr(module, self.tw.torch_attr(layer.kind, w))
                    idx = indices[key]
                    if w == "kernel":  # Keras HWIO / (in, out) -> torch OIHW / (out, in)
                        shape = tuple(tensor.shape)
                        keras_shape = shape[2:] + shape[1::-1] if layer.kind == "conv" else shape[::-1]
                        k = np.unravel_index(idx, keras_shape)
                        t = (k[3], k[2], k[0], k[1]) if layer.kind == "conv" else (k[1], k[0])
                        idx = np.ravel_multi_index(t, shape)
                    plan.append((tensor, torch.as_tensor(idx, device=tensor.device)))
            self._sample_plan = plan
        with torch.no_grad():
            return torch.cat([t.detach().reshape(-1)[i].float() for t, i in self._sample_plan]).cpu().numpy()

    def get_weights(self) -> dict[str, np.ndarray]:
        return self.tw.to_bundle(self.model, self.spec).arrays

    def set_weights(self, arrays: dict[str, np.ndarray]) -> None:
        from bench.weights import WeightBundle

        self.tw.from_bundle(self.model, self.spec, WeightBundle(arrays), source="weight average")

    @torch.no_grad()
    def evaluate(self) -> tuple[np.ndarray, np.ndarray] | None:
        from torch_impl.data import make_loader

        if not self.is_main:
            return None
        if self.config.evaluation in ("precise-bn", "swa"):
            self.estimate_bn()
        if self._val is None:
            self._val = make_loader(self.manifest, "validation", self.options)
        self.model.eval()
        probs, losses = [], []
        for x, y in self._val:
            x, y = x.to(self.device), y.to(self.device)
            with self._autocast():
                logits = self.model(x)
            logits = logits.float()
            probs.append(torch.softmax(logits, dim=1).cpu().numpy())
            losses.append(F.cross_entropy(logits, y, reduction="none").cpu().numpy())
        return np.concatenate(probs).astype(np.float32), np.concatenate(losses).astype(np.float64)

    # ---- checkpoints -----------------------------------------------------------------------------
    def save_checkpoint(self, stem: Path) -> list[str]:
        if not self.is_main:
            return []
        self.tw.to_bundle(self.model, self.spec, source=f"torch {stem.name}").save(stem.parent / f"{stem.name}.npz")
        state = {"optimizer": self.optimizer.state_dict(),
                 "scaler": self.scaler.state_dict() if self.scaler is not None else None}
        atomic.write_with(stem.parent / f"{stem.name}.opt.pt", lambda tmp: torch.save(state, tmp))
        return [f"{stem.name}.npz", f"{stem.name}.opt.pt"]

    def load_checkpoint(self, stem: Path) -> None:
        from bench.weights import WeightBundle

        bundle_path = stem.parent / f"{stem.name}.npz"
        self.tw.from_bundle(self.model, self.spec, WeightBundle.load(bundle_path), source=str(bundle_path))
        state = torch.load(stem.parent / f"{stem.name}.opt.pt", map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    # ---- the rest --------------------------------------------------------------------------------
    def memory(self) -> dict[str, Any]:
        rss = peak_rss()
        per_rank = [rss["peak_bytes"]]
        if self.world > 1:
            gathered: list[Any] = [None] * self.world
            torch.distributed.all_gather_object(gathered, rss["peak_bytes"])
            per_rank = [int(v) for v in gathered]
        if self.device.type == "cuda":
            out = {"measure": "gpu_allocator_peak", "peak_bytes": int(torch.cuda.max_memory_allocated(self.device)),
                   "gpu_reserved_bytes": int(torch.cuda.max_memory_reserved(self.device)),
                   "label": "PyTorch caching allocator peak on the GPU (max_memory_allocated; "
                            "gpu_reserved_bytes: max_memory_reserved)",
                   "cpu_peak_rss_bytes": rss["peak_bytes"]}
        else:
            out = {"measure": "cpu_peak_rss", "peak_bytes": int(sum(per_rank)),
                   "label": "peak resident set size of the PyTorch worker process (VmHWM): "
                            "framework runtime, model, optimizer state and activations"
                            + (f", summed over {self.world} DDP rank processes" if self.world > 1 else "")
                            + "; DataLoader worker processes are separate (loader_workers_peak_bytes)",
                   "loader_workers_peak_bytes": rss["children_peak_bytes"]}
        if self.world > 1:
            out["per_rank"] = per_rank
        return out

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def info(self) -> dict[str, Any]:
        from torch_impl.worker import info

        out = info({}, {}, Path("."))[0]
        out["world_size"] = self.world
        out["autocast"] = str(self.autocast_dtype).replace("torch.", "") if self.autocast_dtype else None
        out["threads"] = {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()}
        return out


def train(args: dict[str, Any], inputs: dict[str, np.ndarray], job_dir: Path):
    """Worker task "train": ``bench.training.run_training`` with a torch :class:`Trainer`
    (or ``torchrun`` with one per device for ``--devices N``)."""
    started = time.monotonic()
    fw_dir = Path(args["fw_dir"])
    write_pid(fw_dir)
    devices = int(args["config"]["devices"])
    if devices > 1:
        return launch_ddp(args, Path(job_dir), devices), None
    return run_training(Trainer(args), args, started=started), None


def launch_ddp(args: dict[str, Any], job_dir: Path, devices: int) -> dict[str, Any]:
    """``torchrun --standalone --nproc-per-node N -m torch_impl.train JOB``; rank 0's result."""
    rank_job = job_dir / "ddp-job.json"
    result_path = job_dir / "ddp-result.json"
    result_path.unlink(missing_ok=True)
    atomic.write_json(rank_job, {**args, "ddp_result": str(result_path)})
    threads = int(args["config"].get("threads") or os.cpu_count() or 1)
    env = dict(os.environ)
    per_rank = str(max(1, threads // devices))  # the cores are shared among the rank processes
    env.update({"OMP_NUM_THREADS": per_rank, "TWINBENCH_THREADS": per_rank})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={devices}",
           "-m", "torch_impl.train", str(rank_job)]
    proc = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL)
    payload = json.loads(result_path.read_text()) if result_path.is_file() else None
    if payload is not None and not payload.get("ok"):
        if payload.get("user_error"):
            raise UserError(payload["error"])
        raise RuntimeError(f"DDP rank 0 failed: {payload['error']}")
    if proc.returncode != 0 or payload is None:
        raise RuntimeError(f"torchrun ({devices} processes) exited with code {proc.returncode}")
    return payload["result"]


def main(argv: list[str]) -> int:
    """One DDP rank (started by torchrun): train, and on rank 0 write the result."""
    from bench.workerproto import threads_from_env

    job = json.loads(Path(argv[0]).read_text())
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    threads = threads_from_env()
    if threads:
        torch.set_num_threads(threads)
    write_pid(Path(job["fw_dir"]), f"rank-{rank}.pid")
    payload: dict[str, Any]
    started = time.monotonic()
    try:
        trainer = Trainer(job, rank=rank, world=world, local_rank=int(os.environ.get("LOCAL_RANK", rank)))
        payload = {"ok": True, "result": run_training(trainer, job, started=started)}
    except UserError as exc:
        payload = {"ok": False, "user_error": True, "error": str(exc)}
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if rank == 0:
        atomic.write_json(job["ddp_result"], payload)
    return 0 if payload["ok"] else 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
