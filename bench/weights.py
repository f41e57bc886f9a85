"""WeightBundle: the one framework-neutral weight format both implementations read and write.

A bundle maps ``"<canonical layer name>/<weight>"`` to a numpy array in Keras layout:
conv ``kernel`` HWIO and ``bias``; dense ``kernel`` (in, out) and ``bias``; batch norm
``gamma``, ``beta``, ``moving_mean``, ``moving_variance``. It is stored as ``.npz`` with a JSON
``__meta__`` entry (format version, model, classes, source). ``tf_impl.weights`` and
``torch_impl.weights`` convert to and from it; round trips are bit-exact.

This module also reads and writes the legacy Keras h5 of the ImageNet weights
(``resnet50_weights_tf_dim_ordering_tf_kernels.h5``: root attribute ``layer_names``, per-layer
``weight_names``, keras-applications names such as ``res2a_branch2a`` / ``bn2a_branch1``).
That file interleaves branch2c and branch1 in its layer order, and in stage 2 their kernels have
the same shape (1x1x64x256), so loading by order silently swaps them: we map by name. Weight
names inside a layer differ between Keras versions (``kernel:0``, ``_W:0``, ``running_std:0``
which holds the variance): we map by position within the layer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from bench import atomic
from bench.errors import UserError
from bench.spec import Layer, ModelSpec

FORMAT = "twinbench.weights"
FORMAT_VERSION = 1
META_KEY = "__meta__"

# keras-applications branch suffix -> our local names (conv, bn) inside a block.
_BRANCH_LOCAL = {"2a": ("conv1", "bn1"), "2b": ("conv2", "bn2"), "2c": ("conv3", "bn3"), "1": ("res_conv", "res_bn")}
_APP_NAME = re.compile(r"^(res|bn)(\d)([a-z])_branch(2a|2b|2c|1)$")


@dataclass
class WeightBundle:
    arrays: dict[str, np.ndarray]
    meta: dict = field(default_factory=dict)

    # ---- access -------------------------------------------------------------------------------
    def layer_names(self) -> list[str]:
        seen: dict[str, None] = {}
        for key in self.arrays:
            seen.setdefault(key.rsplit("/", 1)[0], None)
        return list(seen)

    def layer(self, name: str) -> dict[str, np.ndarray]:
        prefix = name + "/"
        return {k[len(prefix):]: v for k, v in self.arrays.items() if k.startswith(prefix)}

    def equal(self, other: "WeightBundle") -> bool:
        """Bit-exact equality of every array (names, shapes, dtypes and bytes)."""
        if set(self.arrays) != set(other.arrays):
            return False
        return all(
            a.dtype == other.arrays[k].dtype and a.shape == other.arrays[k].shape
            and a.tobytes() == other.arrays[k].tobytes()
            for k, a in self.arrays.items()
        )

    def astype(self, dtype: str) -> "WeightBundle":
        return WeightBundle({k: v.astype(dtype) for k, v in self.arrays.items()}, dict(self.meta))

    # ---- checks -------------------------------------------------------------------------------
    def check(self, spec: ModelSpec, *, source: str = "weights", skip_head: bool = False) -> None:
        """Raise a one-line UserError naming the first layer that does not fit ``spec``."""
        expected = spec.weight_shapes()
        head = {k for k in expected if k.startswith(spec.head_layers()[0].name + "/")}
        for key, shape in expected.items():
            if skip_head and key in head:
                continue
            if key not in self.arrays:
                raise UserError(f"{source}: layer {key.split('/')[0]!r} has no {key.split('/')[1]!r} "
                                f"(is this a {spec.name} weight file?); nothing was written")
            got = tuple(self.arrays[key].shape)
            if got != shape:
                raise UserError(f"{source}: layer {key.split('/')[0]!r} {key.split('/')[1]} has shape {got}, "
                                f"{spec.name} with {spec.classes} classes expects {shape}; nothing was written")
        extra = [k for k in self.arrays if k not in expected]
        if extra:
            raise UserError(f"{source}: layer {extra[0].split('/')[0]!r} is not part of {spec.name} "
                            f"(a different model?); nothing was written")

    def layers_to_load(self, spec: ModelSpec, *, source: str = "weights",
                       skip_head: bool = False) -> Iterator[tuple[Layer, dict[str, np.ndarray]]]:
        """What a worker's ``from_bundle`` sets, once :meth:`check` passes: each layer of ``spec``
        with its weights by name (with ``skip_head``, the head layers the bundle has none for are left out)."""
        self.check(spec, source=source, skip_head=skip_head)
        for layer in spec.layers():
            values = self.layer(layer.name)
            if skip_head and not values:
                continue
            yield layer, values

    # ---- storage -----------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        meta = {"format": FORMAT, "version": FORMAT_VERSION, **self.meta}
        arrays = dict(self.arrays)
        arrays[META_KEY] = np.array(json.dumps(meta, sort_keys=True))
        atomic.write_npz(path, arrays)

    @classmethod
    def load(cls, path: str | Path) -> "WeightBundle":
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: no such weight bundle")
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: not a readable .npz weight bundle ({exc}); re-create it with "
                            f"'twinbench weights convert'") from None
        if META_KEY not in arrays:
            raise UserError(f"{path}: .npz without twinbench metadata: not a weight bundle")
        meta = json.loads(str(arrays.pop(META_KEY)))
        if meta.get("format") != FORMAT:
            raise UserError(f"{path}: not a twinbench weight bundle (format {meta.get('format')!r})")
        if int(meta.get("version", 0)) > FORMAT_VERSION:
            raise UserError(f"{path}: weight bundle version {meta['version']} is newer than this twinbench "
                            f"reads ({FORMAT_VERSION}); upgrade twinbench")
        meta.pop("format", None)
        meta.pop("version", None)
        return cls(arrays, meta)


def random_bundle(spec: ModelSpec, seed: int = 0, dtype: str = "float32") -> WeightBundle:
    """Random weights with non-trivial batch-norm statistics (so BN is really exercised).

    Convs: He-normal kernels, small random biases. BN: gamma in [0.5, 1.5], beta ~ N(0, 0.1),
    moving mean ~ N(0, 0.1), moving variance in [0.5, 1.5]. Dense: Glorot uniform.
    """
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for layer in spec.layers():
        shapes = layer.weight_shapes()
        if layer.kind == "bn":
            c = layer.out_channels
            values = {
                "gamma": rng.uniform(0.5, 1.5, c),
                "beta": rng.normal(0.0, 0.1, c),
                "moving_mean": rng.normal(0.0, 0.1, c),
                "moving_variance": rng.uniform(0.5, 1.5, c),
            }
        elif layer.kind == "conv":
            fan_in = layer.kernel * layer.kernel * layer.in_channels
            values = {"kernel": rng.normal(0.0, np.sqrt(2.0 / fan_in), shapes["kernel"])}
            if layer.use_bias:
                values["bias"] = rng.normal(0.0, 0.01, shapes["bias"])
        else:
            limit = np.sqrt(6.0 / (layer.in_channels + layer.out_channels))
            values = {"kernel": rng.uniform(-limit, limit, shapes["kernel"])}
            if layer.use_bias:
                values["bias"] = rng.normal(0.0, 0.01, shapes["bias"])
        for w in layer.weight_names:
            arrays[f"{layer.name}/{w}"] = values[w].astype(dtype)
    return WeightBundle(arrays, {"model": spec.name, "classes": spec.classes, "source": f"random seed={seed}"})


# ---- file formats ------------------------------------------------------------------------------
WEIGHT_FORMATS = {
    "bundle": "twinbench bundle (.npz)",
    "legacy_h5": "legacy Keras h5 (keras-applications names)",
    "keras_h5": "Keras 3 weights (.weights.h5)",
    "torch_pt": "PyTorch state dict (.pt/.pth)",
}


def weight_format(path: str | Path, *, must_exist: bool = True) -> str:
    """Guess a weight file's format from its name (and, for ``.h5``, its contents)."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".npz"):
        return "bundle"
    if name.endswith((".pt", ".pth")):
        return "torch_pt"
    if name.endswith(".weights.h5"):
        return "keras_h5"
    if name.endswith((".h5", ".hdf5")):
        if must_exist and path.exists():
            import h5py

            try:
                with h5py.File(path, "r") as f:
                    root = f["model_weights"] if "model_weights" in f else f
                    if "layer_names" in root.attrs:
                        return "legacy_h5"
                    if "layers" in f:
                        return "keras_h5"
            except OSError:
                raise UserError(f"{path}: not a readable HDF5 file (truncated or corrupt?); "
                                f"download or export it again") from None
            raise UserError(f"{path}: HDF5 file without Keras weights (no 'layer_names' attribute)")
        return "legacy_h5"
    raise UserError(f"{path}: unknown weight format; use .npz (bundle), .h5 (legacy Keras), "
                    f".weights.h5 (Keras 3) or .pt (PyTorch)")


def canonical_from_app_name(app_name: str, spec: ModelSpec) -> str | None:
    """keras-applications layer name -> canonical (seed) name, or None if it has no weights here."""
    if app_name in ("conv1", "bn_conv1", "fc1000"):
        return app_name
    m = _APP_NAME.match(app_name)
    if not m:
        return None
    kind, stage, block, branch = m.groups()
    block_id = f"{stage}{block}"
    block_kind = next((b.kind for b in spec.blocks if b.id == block_id), None)
    if block_kind is None:
        return None
    conv_local, bn_local = _BRANCH_LOCAL[branch]
    local = conv_local if kind == "res" else bn_local
    for layer in spec.layers():
        if layer.block == block_id and layer.local == local:
            return layer.name
    return None


def app_name_from_canonical(layer_name: str, spec: ModelSpec) -> str:
    """Canonical (seed) name -> keras-applications name (for writing legacy files)."""
    layer = spec.layer(layer_name)
    if layer.block is None:
        return layer_name
    for branch, (conv_local, bn_local) in _BRANCH_LOCAL.items():
        if layer.local in (conv_local, bn_local):
            return f"{'res' if layer.kind == 'conv' else 'bn'}{layer.block}_branch{branch}"
    raise ValueError(f"no keras-applications name for {layer_name}")


def read_legacy_h5(path: str | Path, spec: ModelSpec, *, skip_head: bool = False) -> WeightBundle:
    """Read a legacy Keras h5 by layer NAME (never by order), weights by position in each layer."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such weight file")
    arrays: dict[str, np.ndarray] = {}
    try:
        with h5py.File(path, "r") as f:
            root = f["model_weights"] if "model_weights" in f else f
            if "layer_names" not in root.attrs:
                raise UserError(f"{path}: no 'layer_names' attribute: not a legacy Keras weight file")
            for raw in root.attrs["layer_names"]:
                app_name = raw.decode() if isinstance(raw, bytes) else str(raw)
                group = root[app_name]
                weight_names = [w.decode() if isinstance(w, bytes) else str(w)
                                for w in group.attrs.get("weight_names", [])]
                if not weight_names:
                    continue
                name = canonical_from_app_name(app_name, spec)
                if name is None:
                    raise UserError(f"{path}: layer {app_name!r} has weights but no place in {spec.name}; "
                                    f"is this a {spec.name} weight file?")
                layer = spec.layer(name)
                if len(weight_names) != len(layer.weight_names):
                    raise UserError(f"{path}: layer {app_name!r} has {len(weight_names)} weights, "
                                    f"{name} expects {len(layer.weight_names)}")
                for ours, theirs in zip(layer.weight_names, weight_names):
                    arrays[f"{name}/{ours}"] = np.asarray(group[theirs])
    except OSError as exc:
        raise UserError(f"{path}: cannot read HDF5 ({exc}); the file may be truncated: download it again") from None
    bundle = WeightBundle(arrays, {"model": spec.name, "classes": spec.classes, "source": str(path)})
    if skip_head:
        for key in [k for k in arrays if k.startswith(spec.head_layers()[0].name + "/")]:
            if tuple(arrays[key].shape) != spec.weight_shapes()[key]:
                del bundle.arrays[key]
    bundle.check(spec, source=str(path), skip_head=skip_head)
    return bundle


def write_legacy_h5(bundle: WeightBundle, path: str | Path, spec: ModelSpec,
                    weight_style: str = "keras2", extra_layers: Iterable[str] = ()) -> None:
    """Write a bundle in the legacy keras-applications layout (and its layer order).

    ``weight_style`` "keras1" names weights like the original 2016 file (``conv1_W:0``,
    ``bn_conv1_running_std:0``); "keras2" like Keras 2 (``conv1/kernel:0``).
    """
    import h5py

    bundle.check(spec)
    if any(block.kind not in ("conv_block", "identity_block") for block in spec.blocks):
        # keras-applications names exist for ResNet-50's blocks only (resnet50_c3 has no place there).
        raise UserError(f"{path}: the legacy Keras .h5 layout holds ResNet-50 only; write {spec.name} "
                        f"as .npz, .pt or .weights.h5")

    def weight_names(app: str, layer) -> list[str]:
        if weight_style == "keras1":
            k1 = {"kernel": "W", "bias": "b", "gamma": "gamma", "beta": "beta",
                  "moving_mean": "running_mean", "moving_variance": "running_std"}
            return [f"{app}_{k1[w]}:0" for w in layer.weight_names]
        return [f"{app}/{w}:0" for w in layer.weight_names]

    order = legacy_layer_order(spec)

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            names = ["input_1", *extra_layers]
            for app in order:
                names.append(app)
            f.attrs["layer_names"] = np.array([n.encode() for n in names])
            f.attrs["backend"] = b"tensorflow"
            f.attrs["keras_version"] = b"2.2.4" if weight_style == "keras2" else b"1.2.2"
            for app in names:
                group = f.create_group(app)
                name = canonical_from_app_name(app, spec)
                if name is None:
                    group.attrs["weight_names"] = np.array([], dtype="S1")
                    continue
                layer = spec.layer(name)
                wnames = weight_names(app, layer)
                group.attrs["weight_names"] = np.array([w.encode() for w in wnames])
                for ours, theirs in zip(layer.weight_names, wnames):
                    group.create_dataset(theirs, data=bundle.arrays[f"{name}/{ours}"])

    atomic.write_with(path, write)


# The formats only one worker reads: how a refusal names each, and the worker that converts it.
_WORKER_FORMATS = {"keras_h5": ("a Keras 3 file", "TF"), "torch_pt": ("a PyTorch file", "torch")}


def load_weight_file(path: str | Path, spec: ModelSpec, *, skip_head: bool = False, own_format: str,
                     load_own: Callable[[str | Path, ModelSpec], WeightBundle]) -> WeightBundle:
    """A worker's ``load_file``: a bundle, a legacy .h5, or the worker's own format (``own_format``,
    read by ``load_own``) -> bundle. The other worker's format is refused with a pointer to it."""
    fmt = weight_format(path)
    if fmt == "bundle":
        return WeightBundle.load(path)
    if fmt == "legacy_h5":
        return read_legacy_h5(path, spec, skip_head=skip_head)
    if fmt == own_format:
        return load_own(path, spec)
    what, worker = _WORKER_FORMATS[fmt]
    raise UserError(f"{path}: {what}; convert it with the {worker} worker ('twinbench weights convert')")


def convert_file(src: str | Path, dst: str | Path, spec: ModelSpec, *, load_file: Callable[..., WeightBundle],
                 own_format: str, save_own: Callable[[WeightBundle, str | Path, ModelSpec], None],
                 worker: str) -> dict[str, int]:
    """A worker's ``convert`` task: any file ``load_file`` reads -> a bundle, a legacy .h5, or the
    worker's own format (``own_format``, written by ``save_own``). Returns the counts it reports."""
    bundle = load_file(src, spec)
    bundle.check(spec, source=src)
    fmt = weight_format(dst, must_exist=False)
    if fmt == "bundle":
        bundle.save(dst)
    elif fmt == "legacy_h5":
        write_legacy_h5(bundle, dst, spec)
    elif fmt == own_format:
        save_own(bundle, dst, spec)
    else:
        raise UserError(f"{dst}: the {worker} worker does not write {fmt}")
    return {"layers": len(bundle.layer_names()), "tensors": len(bundle.arrays)}


def legacy_layer_order(spec: ModelSpec) -> list[str]:
    """keras-applications' layer order, weighted layers only: in each conv_block the order is
    branch2a, bn2a, branch2b, bn2b, branch2c, branch1, bn2c, bn1 (branch1 interleaved)."""
    order = ["conv1", "bn_conv1"]
    for block in spec.blocks:
        b = block.id
        order += [f"res{b}_branch2a", f"bn{b}_branch2a", f"res{b}_branch2b", f"bn{b}_branch2b", f"res{b}_branch2c"]
        if block.kind == "conv_block":
            order += [f"res{b}_branch1", f"bn{b}_branch2c", f"bn{b}_branch1"]
        else:
            order += [f"bn{b}_branch2c"]
    return order + ["fc1000"]
