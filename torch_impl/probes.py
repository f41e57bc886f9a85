"""Parity probes, PyTorch side (worker tasks; mirror of ``tf_impl.probes``).

``probe`` runs the checks ``bench.parity`` asks for and returns every array in Keras layout
(activations NHWC, kernels HWIO, dense (in, out)) keyed as ``bench.parity_spec`` builds them:
chained and isolated (each stage fed the reference's ``ref/<kind>/<prev>``) passes, the optimizer
step from the reference gradients, the trajectory. Every key, and why gradients are isolated:
docs/parity.md. ``calibrate`` exists on this side only: it writes the bundle both sides then load.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench import parity_spec as ps
from bench import parity_metrics as pm
from bench.spec import ModelSpec, spec_from_args
from bench.weights import WeightBundle
from torch_impl import model as tm
from torch_impl import optim
from torch_impl import weights as tw
from torch_impl.step import optimizer_step, sparse_categorical_crossentropy

DTYPES = {"float32": torch.float32, "float64": torch.float64}


# ---- layout ------------------------------------------------------------------------------------
def to_torch(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """NHWC (Keras) -> NCHW; other ranks unchanged."""
    t = torch.from_numpy(np.ascontiguousarray(array)).to(dtype)
    return t.permute(0, 3, 1, 2).contiguous() if t.dim() == 4 else t


def to_keras(t: torch.Tensor) -> np.ndarray:
    """NCHW -> NHWC numpy (Keras layout); other ranks unchanged."""
    t = t.detach()
    if t.dim() == 4:
        t = t.permute(0, 2, 3, 1)
    return np.array(t.cpu().numpy(), order="C", copy=True)  # never a view of a live tensor


class Twin:
    """The torch model plus the bundle it is reset to before every phase."""

    def __init__(self, spec: ModelSpec, bundle: WeightBundle, dtype: str, align: tm.Alignment):
        self.spec, self.bundle, self.dtype = spec, bundle, DTYPES[dtype]
        self.model = tm.build(spec, align).to(self.dtype)
        # (key, layer, module, attribute) for every weight, in spec order.
        self.weights: list[tuple[str, Any, torch.nn.Module, str]] = []
        for layer in spec.layers():
            module = self.model.get_submodule(tm.module_name(layer))
            for w in layer.weight_names:
                self.weights.append((f"{layer.name}/{w}", layer, module, tw.torch_attr(layer.kind, w)))
        self.reset()

    def reset(self) -> None:
        tw.from_bundle(self.model, self.spec, self.bundle)
        self.model.zero_grad(set_to_none=True)

    def trainable(self) -> list[tuple[str, Any, torch.Tensor]]:
        return [(k, layer, getattr(m, a)) for k, layer, m, a in self.weights if not ps.is_stat(k)]

    def bn_stats(self) -> dict[str, np.ndarray]:
        return {k: getattr(m, a).detach().cpu().numpy().copy() for k, _, m, a in self.weights if ps.is_stat(k)}

    def keras_value(self, key: str, layer, t: torch.Tensor) -> np.ndarray:
        # A copy: for vectors to_keras returns a view of the live parameter, which later
        # phases reset and train.
        return np.array(tw.to_keras(layer.kind, key.rsplit("/", 1)[1], t), copy=True)

    def from_keras(self, key: str, layer, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(tw.from_keras(layer.kind, key.rsplit("/", 1)[1], array)).to(self.dtype)


def points(model: tm.ResNet, x: torch.Tensor, ref: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Every probe point's output. Chained when ``ref`` is None; else isolated: each stage is fed
    the reference output of the point before it (as nobuco does), so errors do not accumulate."""
    out: dict[str, torch.Tensor] = {}
    h = model.forward_stem(x)
    out["stem"] = h
    prev = "stem"
    for block_id, block in model.blocks.items():
        h = block(h if ref is None else ref[prev])
        out[block_id] = h
        prev = block_id
    features = model.pool(h if ref is None else ref[prev])
    out["pool"] = features
    logits = model.forward_head(features if ref is None else ref["pool"])
    out["logits"] = logits
    out["probs"] = torch.softmax(logits if ref is None else ref["logits"], dim=-1)
    return out


def isolated_train(twin: Twin, x: torch.Tensor, ref: dict[str, torch.Tensor],
                   upstream: dict[str, torch.Tensor] | None) -> dict[str, np.ndarray]:
    """Training mode, each stage fed the reference input (``ref/train/<prev>``), one pass:
    the outputs (``triso/<point>``), the BN statistics after that one update (``bn/<key>``)
    and, given the reference gradients of the outputs, the isolated backward: parameter
    gradients (``gradiso/<key>``) and input gradients (``dxiso/<point>``, to compare with the
    reference's gradient of the previous point). Why isolated: docs/parity.md."""
    model = twin.model
    twin.reset()
    model.train()
    out: dict[str, np.ndarray] = {}
    stages: list[tuple[str, str | None, Any]] = [("stem", None, model.forward_stem)]
    prev = "stem"
    for block_id, block in model.blocks.items():
        stages.append((block_id, prev, block))
        prev = block_id
    stages += [("pool", prev, model.pool), ("logits", "pool", model.forward_head)]
    for point, before, stage in stages:
        backward = upstream is not None and point != "pool"
        inp = x if before is None else ref[before].clone().requires_grad_(backward)
        with torch.set_grad_enabled(backward):
            y = stage(inp)
        out[ps.key(ps.TRISO, point)] = to_keras(y)
        if not backward or y.shape != upstream[point].shape:
            continue  # no gradient here, or an ablation changed the shape (forward columns say so)
        y.backward(upstream[point])
        if before is not None:
            out[ps.key(ps.DXISO, point)] = to_keras(inp.grad)
    out[ps.key(ps.TRISO, "probs")] = to_keras(torch.softmax(ref["logits"], dim=-1))
    out.update(ps.keyed(ps.BN, twin.bn_stats()))
    if upstream is not None:
        out.update(ps.keyed(ps.GRADISO, _grads(twin)))
    return out


def _refs(inputs: dict[str, np.ndarray], kind: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The reference's arrays of ``kind`` the parent fed this side (``ref/<kind>/<name>``), by name."""
    return {k: to_torch(v, dtype) for k, v in ps.unkeyed(ps.key(ps.REF, kind, ""), inputs).items()}


def probe(args: dict, inputs: dict[str, np.ndarray], job_dir: Path):
    """Run the requested parity checks (``args['checks']``: forward, train, grad, step, trajectory);
    with ``args['own_errors']``, also this side's own float32 error (:func:`own_errors`); with
    ``args['chaos_weights']``, the trajectory again from that (one-ulp perturbed) bundle."""
    spec = spec_from_args(args)
    checks = set(args.get("checks", ps.DEFAULT_CHECKS))
    align = tm.Alignment(**args.get("align", {}))
    bundle = tw.load_file(args["weights"], spec)
    twin = Twin(spec, bundle, args.get("dtype", "float32"), align)
    torch.manual_seed(int(args.get("seed", 0)))
    quiet = bool(args.get("quiet"))
    phase = ps.Phases("torch", quiet)
    result: dict[str, Any] = {"framework": "torch"}

    arrays = passes(twin, inputs, checks, args, phase)
    if "trajectory" in checks:
        arrays.update(ps.trajectories(twin, inputs, args, phase, trajectory, tw.load_file))
    if args.get("own_errors") and checks - {"trajectory"}:
        phase("own-build")
        result["own"] = own_errors(spec, bundle, align, inputs, arrays, checks, args, phase)

    result["seconds"] = phase.seconds()
    result["threads"] = torch.get_num_threads()
    return result, arrays


def _grad(twin: Twin, key: str, layer, t: torch.Tensor) -> np.ndarray:
    """A parameter's gradient in Keras layout; zeros where the graph gave it none (an ablation
    that cuts a parameter off the backward pass)."""
    return twin.keras_value(key, layer, t.grad if t.grad is not None else torch.zeros_like(t))


def _grads(twin: Twin) -> dict[str, np.ndarray]:
    """Every trainable parameter's gradient (:func:`_grad`), by bundle key."""
    return {key: _grad(twin, key, layer, t) for key, layer, t in twin.trainable()}


def passes(twin: Twin, inputs: dict[str, np.ndarray], checks: set[str], args: dict, phase) -> dict[str, np.ndarray]:
    """The forward, train/grad and step checks in the twin's dtype (the references cast to it)."""
    model, dtype = twin.model, twin.dtype
    x = to_torch(inputs[ps.X], dtype)
    y = torch.from_numpy(inputs[ps.Y].astype(np.int64))
    arrays: dict[str, np.ndarray] = {}
    if "forward" in checks:
        phase("forward")
        twin.reset()
        model.eval()
        with torch.no_grad():
            arrays.update(ps.keyed(ps.FWD, {p: to_keras(t) for p, t in points(model, x).items()}))
            ref = _refs(inputs, ps.FWD, dtype)
            if ref:
                arrays.update(ps.keyed(ps.ISO, {p: to_keras(t) for p, t in points(model, x, ref).items()}))

    if checks & {"train", "grad"}:
        phase("train")
        twin.reset()
        model.train()
        with torch.set_grad_enabled("grad" in checks):
            outs = points(model, x)
            loss = sparse_categorical_crossentropy(outs["logits"], y)
        arrays.update(ps.keyed(ps.TRAIN, {p: to_keras(t) for p, t in outs.items()}))
        arrays[ps.TRAIN_LOSS] = loss.detach().numpy()
        if "grad" in checks:
            loss.backward()
            arrays.update(ps.keyed(ps.GRAD, _grads(twin)))
        ref = _refs(inputs, ps.TRAIN, dtype)
        upstream = _refs(inputs, ps.DTRAIN, dtype) if "grad" in checks else None
        if ref:
            isolated = isolated_train(twin, x, ref, upstream or None)
            if "train" not in checks:
                isolated = {k: v for k, v in isolated.items() if not k.startswith((ps.key(ps.TRISO, ""), ps.key(ps.BN, "")))}
            arrays.update(isolated)

    if "step" in checks:
        phase("step")
        for label, config in ((ps.ADAM, args.get("optimizer")), (ps.SGD, args.get("sgd", {"name": "sgd"}))):
            twin.reset()
            params = twin.trainable()
            for key, layer, t in params:
                t.grad = twin.from_keras(key, layer, inputs[ps.key(ps.REF, ps.GRAD, key)])
            opt = optim.build(config, [t for _, _, t in params])
            opt.step()
            for key, layer, t in params:
                arrays[ps.key(label, key)] = twin.keras_value(key, layer, t)
                moments = optim.moments(opt, t)
                if moments is not None:
                    arrays[ps.moment_key(label, "m", key)] = twin.keras_value(key, layer, moments[0])
                    arrays[ps.moment_key(label, "v", key)] = twin.keras_value(key, layer, moments[1])
    return arrays


def own_errors(spec: ModelSpec, bundle: WeightBundle, align: tm.Alignment, inputs: dict[str, np.ndarray],
               arrays: dict[str, np.ndarray], checks: set[str], args: dict, phase=lambda name: None) -> dict[str, dict]:
    """This side's own float32 error: the same model (same alignment) in float64, on the same
    weights, inputs and references (cast), every array as ``bench.parity_metrics.array_stats``
    against the float32 one (float64 = the reference)."""
    twin = Twin(spec, bundle, "float64", align)
    exact = passes(twin, inputs, checks, args, lambda name: phase(f"own-float64-{name}"))
    phase("own-stats")
    return {key: pm.array_stats(value, arrays[key])
            for key, value in exact.items() if key in arrays}


def trajectory(twin: Twin, inputs: dict[str, np.ndarray], args: dict, *, quiet: bool) -> dict[str, np.ndarray]:
    """K steps of the training loop on the given batches, in order; loss and sampled weights."""
    model, dtype = twin.model, twin.dtype
    twin.reset()
    model.train()
    opt = optim.build(args.get("optimizer"), [t for _, _, t in twin.trainable()])
    index = ps.trajectory_sample(twin.spec)
    by_key = {k: (layer, getattr(m, a)) for k, layer, m, a in twin.weights}
    xs, ys = inputs[ps.TRAJ_X], inputs[ps.TRAJ_Y].astype(np.int64)
    losses, samples = [], []
    start = time.perf_counter()
    for step in range(len(xs)):
        loss, _ = optimizer_step(model, opt, to_torch(xs[step], dtype), torch.from_numpy(ys[step]))
        losses.append(loss.item())
        samples.append(np.concatenate([
            twin.keras_value(k, by_key[k][0], by_key[k][1]).ravel()[idx] for k, idx in index.items()]))
        if not quiet:
            eta = (time.perf_counter() - start) / (step + 1) * (len(xs) - step - 1)
            print(f"[torch] trajectory step {step + 1}/{len(xs)} loss {losses[-1]:.6f} eta {eta:.0f}s", flush=True)
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    return {ps.TRAJ_LOSS: np.asarray(losses, dtype=np_dtype), ps.TRAJ_SAMPLE: np.stack(samples)}


@torch.no_grad()
def calibrate(args: dict, inputs: dict[str, np.ndarray], job_dir: Path):
    """Make random weights meaningful for parity on raw 0..255 inputs; write ``args['out']``.

    Random weights on raw pixels give activations of ~1e3..1e6 and a one-hot softmax, where
    most checks say nothing. So, in float64 on this batch: run training mode once, set every
    BN layer's moving mean and variance from the batch statistics its input had (so inference
    mode is well scaled at every depth), perturb them (mean by ``perturb`` x std x N(0, 1),
    variance by a factor in [1 - perturb, 1 + perturb]) so inference and training mode still
    differ, then scale fc1000 so the logits have standard deviation ``logit_std``.
    """
    spec = spec_from_args(args)
    bundle = tw.load_file(args["weights"], spec)
    model = tm.build(spec).to(torch.float64)
    tw.from_bundle(model, spec, bundle)
    x = to_torch(inputs[ps.X], torch.float64)
    stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = []
    for layer in spec.layers():
        if layer.kind != "bn":
            continue

        def capture(module, inp, name=layer.name):
            stats[name] = (inp[0].mean(dim=(0, 2, 3)), inp[0].var(dim=(0, 2, 3), unbiased=False))

        hooks.append(model.get_submodule(tm.module_name(layer)).register_forward_pre_hook(capture))
    model.train()
    model(x)
    for hook in hooks:
        hook.remove()
    rng = np.random.default_rng(int(args.get("seed", 0)))
    perturb = float(args.get("perturb", 0.05))
    arrays = dict(bundle.arrays)
    for name, (mean, var) in stats.items():
        mean, var = mean.numpy(), var.numpy()
        var = np.maximum(var, 1e-6 * max(float(var.mean()), 1e-12))  # a constant channel keeps a sane scale
        dtype = arrays[f"{name}/moving_mean"].dtype
        arrays[f"{name}/moving_mean"] = (mean + perturb * np.sqrt(var) * rng.standard_normal(mean.shape)).astype(dtype)
        arrays[f"{name}/moving_variance"] = (var * (1 + perturb * rng.uniform(-1, 1, var.shape))).astype(dtype)
    calibrated = WeightBundle(arrays, {**bundle.meta, "source": f"{bundle.meta.get('source', 'weights')}, calibrated"})
    tw.from_bundle(model, spec, calibrated)
    model.eval()
    logits = model(x)
    before = float(logits.std())
    scale = float(args.get("logit_std", 2.0)) / max(before, 1e-30)
    dense = spec.head_layers()[0].name
    for w in ("kernel", "bias"):
        if f"{dense}/{w}" in arrays:
            arrays[f"{dense}/{w}"] = (arrays[f"{dense}/{w}"].astype(np.float64) * scale).astype(arrays[f"{dense}/{w}"].dtype)
    calibrated.save(args["out"])
    tw.from_bundle(model, spec, calibrated)
    probs = torch.softmax(model(x), dim=-1)
    return {"bn_layers": len(stats), "perturb": perturb, "logit_std_before": before, "head_scale": scale,
            "logit_std": float(model(x).std()), "max_prob": float(probs.max()), "min_prob": float(probs.min())}, None


def load_inputs(args: dict, inputs: dict[str, np.ndarray], job_dir: Path):
    """The parity batch (``args['indices']`` of the validation split) and the trajectory batches
    (``args['traj_indices']`` of the training split) through ``torch_impl.data``.

    ``options`` may carry ``antialias: true`` (the ``resize-antialias`` ablation): the same
    decode, then ``F.interpolate(..., antialias=True)`` as torchvision's ``Resize`` does.
    """
    from bench.dataset import PipelineOptions, load_manifest
    from torch_impl import data

    manifest = load_manifest(args["manifest"], data_root=args.get("data_root"), verify="none")  # the parent verified it
    options = dict(args.get("options", {}))
    antialias = bool(options.pop("antialias", False))
    pipeline = PipelineOptions(image_size=int(args["size"]), batch_size=max(1, len(args["indices"])), **options)
    split = "validation"
    if antialias:
        entries = manifest.entries(split)
        xs = []
        for i in args["indices"]:
            with open(manifest.root / entries[i].path, "rb") as f:
                rgb = data.decode_image(f.read(), pipeline.decoder)
            t = torch.from_numpy(rgb).permute(2, 0, 1).to(torch.float32)[None]
            t = F.interpolate(t, size=(pipeline.image_size,) * 2, mode="bilinear", align_corners=False, antialias=True)
            xs.append(data.preprocess(t[0], pipeline.preprocessing).permute(1, 2, 0).numpy())
        x, y = np.stack(xs), manifest.labels(split)[np.asarray(args["indices"], dtype=np.int64)]
    else:
        x, y = data.load_images(manifest, split, args["indices"], pipeline)
    arrays = {ps.X: np.ascontiguousarray(x, dtype=np.float32), ps.Y: y.astype(np.int64)}
    if args.get("traj_indices"):
        tx, ty = data.load_images(manifest, "training", args["traj_indices"], pipeline)
        arrays.update({ps.TRAJ_X: tx.astype(np.float32), ps.TRAJ_Y: ty.astype(np.int64)})
    files = [manifest.entries(split)[i].path for i in args["indices"]]
    return {"files": files, "options": pipeline.to_dict(), "antialias": antialias}, arrays
