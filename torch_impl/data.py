"""PyTorch input pipeline (Dataset + DataLoader) that reads only the manifest. Mirror: ``tf_impl/data.py``.

Per image to the same numbers as the TF pipeline: PIL decoding that follows TF's decoders,
``F.interpolate`` bilinear without antialiasing (TF's resize); ``PipelineOptions.order``
``native`` is ``DataLoader(shuffle=True)``, ``manifest`` and ``fixed-batches`` follow
``bench.orders.epoch_order``. Details, and where TF's decoders differ from PIL's: docs/records.md.
"""

from __future__ import annotations

import io
import itertools
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from bench.dataset import CAFFE_MEAN_BGR, SPLITS, Manifest, PipelineOptions, load_manifest
from bench.orders import epoch_order
from bench.pipeline_timing import alternate_feeds


# ---- one image -------------------------------------------------------------------------------------
def decode_image(data: bytes, decoder: str = "accurate") -> np.ndarray:
    """Encoded bytes -> uint8 (H, W, 3), matching TF's ``decode_image(channels=3)``.

    ``decoder`` is accepted for symmetry with ``tf_impl.data``: both values decode accurately here.
    """
    with Image.open(io.BytesIO(data)) as im:  # frame 0, as expand_animations=False
        if im.format == "BMP" and im.mode in ("P", "L"):
            gray = np.asarray(im)  # the stored 8-bit values, not the palette colours
            return np.repeat(gray[..., None], 3, axis=2)
        if im.mode.startswith("I;16") or im.mode == "I":
            gray = (np.asarray(im).astype(np.uint32) >> 8).astype(np.uint8)
            return np.repeat(gray[..., None], 3, axis=2)
        rgb = np.array(im.convert("RGB"))
        if im.format == "GIF" and im.mode in ("P", "L") and "transparency" in im.info:
            rgb[np.asarray(im) == im.info["transparency"]] = 0
        return rgb


def resize_image(x: torch.Tensor, size: int) -> torch.Tensor:
    """(3, H, W) float32 -> (3, size, size): TF's ``tf.image.resize(bilinear)``, no antialiasing."""
    return F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False, antialias=False)[0]


_NEG_MEAN = torch.tensor([-m for m in CAFFE_MEAN_BGR], dtype=torch.float32).view(3, 1, 1)


def preprocess(x: torch.Tensor, mode: str) -> torch.Tensor:
    """``none``: raw 0..255 (the seed). ``caffe``: Keras ResNet50 ``preprocess_input`` (RGB -> BGR,
    plus minus the ImageNet BGR means), the same float32 operations as the TF side."""
    if mode == "none":
        return x
    return x.flip(0) + _NEG_MEAN.to(x.dtype)


def load_image(path: str | os.PathLike, options: PipelineOptions) -> torch.Tensor:
    """File path -> float32 (3, size, size), the Dataset's per-image function."""
    with open(path, "rb") as f:
        rgb = decode_image(f.read(), options.decoder)
    x = torch.from_numpy(rgb).permute(2, 0, 1).to(torch.float32)
    return preprocess(resize_image(x, options.image_size), options.preprocessing).contiguous()


# ---- datasets --------------------------------------------------------------------------------------
class ManifestDataset(Dataset):
    """One split of a manifest: (x float32 CHW, label) in the manifest's order."""

    def __init__(self, manifest: Manifest, split: str, options: PipelineOptions):
        self.split = manifest.split_name(split)
        self.paths = [str(p) for p in manifest.paths(self.split)]
        self.labels = manifest.labels(self.split)
        self.options = options

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return load_image(self.paths[index], self.options), int(self.labels[index])


class EpochOrderSampler(Sampler[int]):
    """The ``manifest`` and ``fixed-batches`` orders: epoch e visits
    ``epoch_order(options, n, e)``. With ``epoch=None`` the k-th iteration follows epoch k
    (counting from 0), as the TF pipeline does; ``set_epoch`` pins one, as DistributedSampler's does."""

    def __init__(self, options: PipelineOptions, size: int, epoch: int | None = None):
        self.options, self.size = options, size
        self.fixed = epoch
        self.next_epoch = 0 if epoch is None else epoch

    def set_epoch(self, epoch: int) -> None:
        self.fixed = epoch

    def __iter__(self) -> Iterator[int]:
        epoch = self.fixed if self.fixed is not None else self.next_epoch
        if self.fixed is None:
            self.next_epoch += 1
        return iter(epoch_order(self.options, self.size, epoch).tolist())

    def __len__(self) -> int:
        return self.size


def native_epoch_seed(seed: int, epoch: int | None) -> int:
    """The seed of the ``native`` order's shuffle in epoch ``epoch`` (None: the run's seed)."""
    return seed if epoch is None else int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


class NativeShuffleSampler(Sampler[int]):
    """The ``native`` order for a loader kept across epochs: epoch e visits the permutation that a
    fresh ``DataLoader(shuffle=True, generator=torch.Generator().manual_seed(native_epoch_seed(seed, e)))``
    visits (:func:`make_loader`): its iterator draws the workers' base seed from that generator,
    then ``RandomSampler`` draws one ``randperm``; this does the same two draws."""

    def __init__(self, seed: int, size: int, epoch: int | None = None):
        self.seed, self.size, self.epoch = seed, size, epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(native_epoch_seed(self.seed, self.epoch))
        torch.empty((), dtype=torch.int64).random_(generator=generator)  # the base seed a fresh loader draws
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


def default_workers(options: PipelineOptions) -> int:
    if options.workers is not None:
        return options.workers
    return min(4, os.cpu_count() or 1)


def make_loader(manifest: Manifest, split: str, options: PipelineOptions, *,
                epoch: int | None = None, workers: int | None = None) -> DataLoader:
    """Batches of (x: float32 NCHW, y: int64) for ``split`` of ``manifest`` (see module docstring).

    ``epoch``: for ``order="manifest"``/``"fixed-batches"`` that epoch's order on every iteration (None:
    iteration k follows epoch k); for ``native`` it seeds the shuffle of a one-epoch loader.
    """
    dataset = ManifestDataset(manifest, split, options)
    kwargs = _loader_kwargs(options, workers)
    if dataset.split != "training":
        return DataLoader(dataset, shuffle=False, **kwargs)
    if options.order == "native":
        generator = torch.Generator().manual_seed(native_epoch_seed(options.seed, epoch))
        return DataLoader(dataset, shuffle=True, generator=generator, **kwargs)
    return DataLoader(dataset, sampler=EpochOrderSampler(options, len(dataset), epoch), **kwargs)


def run_loader(manifest: Manifest, options: PipelineOptions, *, workers: int | None = None) -> DataLoader:
    """One training loader for a whole run: its worker processes persist across epochs (a loader
    per epoch starts them anew, and their first decodes slow that epoch's first steps: about 2 s
    an epoch on 2 cores). ``loader.sampler.set_epoch(e)`` picks epoch e's order: the batches
    ``make_loader(..., epoch=e)`` gives, in every order (tests/torch/test_torch_data.py)."""
    dataset = ManifestDataset(manifest, "training", options)
    sampler: Sampler[int] = (NativeShuffleSampler(options.seed, len(dataset), 0) if options.order == "native"
                             else EpochOrderSampler(options, len(dataset), 0))
    # Its own generator for the workers' base seeds: the global RNG is left alone, as before.
    return DataLoader(dataset, sampler=sampler, generator=torch.Generator().manual_seed(options.seed),
                      **_loader_kwargs(options, workers))


def bn_batches(manifest: Manifest, options: PipelineOptions, images: int) -> list[torch.Tensor]:
    """The images of evaluation "precise-bn" (the first ``images`` of the training split in epoch
    0's manifest order, the same on both sides), batched as ``options`` batches; the labels dropped."""
    loader = make_loader(manifest, "training", options.replace(order="manifest"), epoch=0)
    return [x for x, _ in itertools.islice(loader, math.ceil(images / options.batch_size))]


def _loader_kwargs(options: PipelineOptions, workers: int | None) -> dict[str, Any]:
    n_workers = default_workers(options) if workers is None else workers
    return {
        "batch_size": options.batch_size,
        "num_workers": n_workers,
        "persistent_workers": n_workers > 0,  # no worker restart per iteration
        "pin_memory": torch.cuda.is_available(),
    }


def sequential_loader(manifest: Manifest, split: str, options: PipelineOptions) -> DataLoader:
    """The split in manifest order, batched, through the same Dataset and worker processes."""
    n_workers = default_workers(options)
    return DataLoader(ManifestDataset(manifest, split, options), batch_size=options.batch_size, shuffle=False,
                      num_workers=n_workers)


def load_images(manifest: Manifest, split: str, indices: Sequence[int],
                options: PipelineOptions) -> tuple[np.ndarray, np.ndarray]:
    """The pipeline's images ``indices`` of ``split`` as (float32 NHWC, int64 labels): the exact
    batch the parity suite feeds both models."""
    dataset = ManifestDataset(manifest, split, options)
    if len(indices) == 0:
        return np.zeros((0, options.image_size, options.image_size, 3), np.float32), np.zeros((0,), np.int64)
    xs = torch.stack([dataset[int(i)][0] for i in indices])
    return xs.permute(0, 2, 3, 1).numpy().copy(), dataset.labels[np.asarray(indices, dtype=np.int64)]


# ---- worker tasks ----------------------------------------------------------------------------------
def data_check(args: dict[str, Any], inputs: dict[str, np.ndarray], job_dir: Path):
    """Decode every image through the loader and compare with the TF worker's images
    (``args['reference'][decoder][split]``, float32 NHWC .npy): per image max and mean |diff|
    and the fraction of values that differ, for each reference decoder."""
    manifest = load_manifest(args["manifest"], data_root=args.get("data_root"), verify="none")
    options = PipelineOptions.from_dict(args["pipeline"])
    quiet = bool(args.get("quiet"))
    arrays: dict[str, np.ndarray] = {}
    for split in SPLITS:
        n = len(manifest.entries(split))
        refs = {d: np.load(paths[split], mmap_mode="r") for d, paths in args["reference"].items()}
        for d, ref in refs.items():
            if ref.shape != (n, options.image_size, options.image_size, 3):
                raise ValueError(f"reference {d}/{split} has shape {ref.shape}, expected {n} images")
        stats = {(d, k): np.zeros((n,), np.float64) for d in refs for k in ("max", "mean", "frac")}
        labels = np.empty((n,), np.int64)
        done, start, last = 0, time.monotonic(), time.monotonic()
        for x, y in sequential_loader(manifest, split, options):
            b = int(x.shape[0])
            ours = x.permute(0, 2, 3, 1).numpy().reshape(b, -1)
            labels[done:done + b] = y.numpy()
            for d, ref in refs.items():
                diff = np.abs(ours - np.asarray(ref[done:done + b]).reshape(b, -1))
                stats[(d, "max")][done:done + b] = diff.max(axis=1)
                stats[(d, "mean")][done:done + b] = diff.mean(axis=1)
                stats[(d, "frac")][done:done + b] = (diff > 0).mean(axis=1)
            done += b
            if not quiet and time.monotonic() - last > 2:
                last = time.monotonic()
                print(f"  torch decode {split}: {done}/{n} images, {done / (last - start):.0f} img/s",
                      file=sys.stderr, flush=True)
        for (d, k), values in stats.items():
            arrays[f"{k}_{d}_{split}"] = values
        arrays[f"labels_{split}"] = labels
    return {"workers": default_workers(options)}, arrays


def pipeline_speed(args: dict[str, Any], inputs: dict[str, np.ndarray], job_dir: Path):
    """Training steps fed by the real loader vs the same kind of batches already in memory, in
    alternating blocks (``bench.pipeline_timing.alternate_feeds``)."""
    from bench.spec import spec_from_args
    from torch_impl import model as tm

    manifest = load_manifest(args["manifest"], data_root=args.get("data_root"), verify="none")
    options = PipelineOptions.from_dict(args["pipeline"])
    steps, rounds, warmup = int(args.get("steps", 8)), int(args.get("rounds", 2)), int(args.get("warmup", 2))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = tm.build(spec_from_args(args)).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)  # Keras' Adam defaults

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def train_step(x: torch.Tensor, y: torch.Tensor) -> float:
        loss = F.cross_entropy(model(x), y)  # log_softmax of the logits: Keras' exact loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()  # sync: the step has finished

    memory = []
    for x, y in sequential_loader(manifest, "training", options.replace(workers=0)):
        memory.append((x.to(device), y.to(device)))
        if len(memory) == steps:
            break
    for i in range(warmup):  # first-step allocations, excluded
        train_step(*memory[i % len(memory)])
    loader = make_loader(manifest, "training", options)

    def forever():
        while True:
            yield from loader

    real = forever()

    def next_real(k: int):
        x, y = next(real)
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    train_step(*next_real(0))  # starts the worker processes and fills their prefetch queue

    runs = alternate_feeds(train_step, next_real, memory, steps=steps, rounds=rounds, prefix="  torch ",
                           quiet=bool(args.get("quiet")), sync=sync)
    return {"framework": "torch", "runs": runs, "steps": steps, "rounds": rounds, "warmup": warmup,
            "workers": default_workers(options), "device": str(device)}, None
