"""Parity probes, Keras side (worker tasks; mirror of ``torch_impl.probes``).

``probe`` returns the arrays ``bench.parity`` compares, in Keras layout, keyed as
``bench.parity_spec`` builds them (the same names as the torch side). The same code runs the
seed's Keras model on TensorFlow (the reference) and on Keras' torch backend (the keras-torch arm,
as the reference for the torch port or as the candidate against TF): gradients go through
``tf_impl.tape``, so this module imports no framework itself.

As the reference (no ``ref/`` arrays in the job) it needs no isolated pass: its block fed its own
chained input gives its chained output, the reference a candidate's isolated blocks are fed. As the
candidate (the parent sent the reference's arrays as ``ref/<kind>/<name>``) it also runs the
isolated stages fed those arrays and the optimizer step from the reference's gradients, as the
torch side does. How the reference is computed (floatx, Keras' train_step written out, compile +
train_on_batch for the trajectory) and why: docs/parity.md.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import keras
import numpy as np

from bench import parity_spec as ps
from bench import parity_metrics as pm
from bench.spec import spec_from_args
from tf_impl import model as tfm
from tf_impl import optim
from tf_impl import tape as tp
from tf_impl import weights as tfw


class Twin:
    """The Keras model, its probe model and the bundle it is reset to before every phase."""

    def __init__(self, spec, bundle, dtype: str):
        self.spec, self.bundle, self.dtype = spec, bundle, dtype
        self.model = tfm.build(spec, dtype=dtype)
        # Probe points the model computes as layer outputs; logits come from fc1000's weights.
        self.layer_points = [p for p in spec.probe_points if p != "logits"]
        self.probe_model = keras.Model(
            self.model.input,
            [self.model.get_layer(tfm.block_output_layer(spec, p)).output for p in self.layer_points])
        self.variables: dict[str, keras.Variable] = {}
        for layer in spec.layers():
            for w, var in zip(layer.weight_names, self.model.get_layer(layer.name).weights):
                self.variables[f"{layer.name}/{w}"] = var
        self.trainable_keys = [k for k, v in self.variables.items() if v.trainable]
        self.reset()

    def reset(self) -> None:
        tfw.from_bundle(self.model, self.spec, self.bundle)

    def bn_stats(self) -> dict[str, np.ndarray]:
        return {k: tp.numpy(v) for k, v in self.variables.items() if ps.is_stat(k)}

    def outputs(self, outs) -> dict:
        out = dict(zip(self.layer_points, outs))
        out["logits"] = tfm.logits(self.model, self.spec, out["pool"])
        return {p: out[p] for p in self.spec.probe_points}


def probe(args: dict, inputs: dict[str, np.ndarray], job_dir: Path):
    """Run the requested parity checks (``args['checks']``: forward, train, grad, step, trajectory);
    with ``args['own_errors']``, also TF's own float32 error (see :func:`own_errors`); with
    ``args['chaos_weights']``, the trajectory again from that (one-ulp perturbed) bundle."""
    dtype = args.get("dtype", "float32")
    framework = "tf" if tp.backend() == "tensorflow" else "keras-torch"
    result: dict = {"framework": framework, "backend": tp.backend()}
    if dtype == "float64" or args.get("own_errors"):
        # Keras keeps float64 on TF only; elsewhere its promotion makes BN float32 (tf_impl.tape).
        result["float64_promotion_patched"] = tp.exact_float64()
    keras.config.set_floatx(dtype)  # losses and the learning rate compute in floatx (docs/parity.md)
    keras.utils.set_random_seed(int(args.get("seed", 0)))
    spec = spec_from_args(args)
    checks = set(args.get("checks", ps.DEFAULT_CHECKS))
    bundle = tfw.load_file(args["weights"], spec)
    twin = Twin(spec, bundle, dtype)
    quiet = bool(args.get("quiet"))
    phase = ps.Phases(framework, quiet)
    refs = ps.unkeyed(ps.key(ps.REF, ""), inputs)  # empty: this side is the reference
    result["role"] = "candidate" if refs else "reference"

    arrays = passes(twin, inputs, checks, args, phase, result, refs=refs)
    if "trajectory" in checks:
        arrays.update(ps.trajectories(twin, inputs, args, phase, trajectory, tfw.load_file))
    if args.get("own_errors") and checks - {"trajectory"}:
        phase("own-build")
        result["own"] = own_errors(spec, bundle, inputs, arrays, checks, args, phase, refs)
        keras.config.set_floatx(dtype)

    result["seconds"] = phase.seconds()
    result["threads"] = tp.threads()
    # One framework per process: a keras-torch side never loads tensorflow nor the torch port.
    result["imported"] = {name: name in sys.modules for name in ("tensorflow", "torch", "torch_impl.model")}
    return result, arrays


def passes(twin: Twin, inputs: dict[str, np.ndarray], checks: set[str], args: dict, phase,
           result: dict | None = None, step_grads: list | None = None, traced: bool = True,
           refs: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The forward, train/grad and step checks in the twin's dtype. ``step_grads``: the
    gradients the optimizer step starts from (default: the reference's in ``refs``, else this
    pass's own). ``traced``: the training step as a tf.function on TF (Keras' own train_step
    path); the float64 own-error pass runs it eagerly (same ops, no second trace: measured 6 s
    faster here). ``refs`` (``{kind/name: array}``, a candidate's): also the isolated stages fed
    them (:func:`isolated`), as the torch side returns them."""
    dtype = twin.dtype
    x = tp.tensor(inputs[ps.X], dtype)
    y = tp.tensor(inputs[ps.Y].astype(np.int64))
    arrays: dict[str, np.ndarray] = {}
    if "forward" in checks:
        phase("forward")
        outs = twin.outputs(twin.probe_model(x, training=False))
        arrays.update(ps.keyed(ps.FWD, {p: tp.numpy(t) for p, t in outs.items()}))

    grads = None
    if checks & {"train", "grad", "step"}:
        phase("train")
        twin.reset()
        loss_fn = keras.losses.SparseCategoricalCrossentropy()
        variables = [twin.variables[k] for k in twin.trainable_keys]

        def train_forward(x, y):
            with tp.Tape() as tape:
                outs = twin.probe_model(x, training=True)
                loss = loss_fn(y, outs[-1])  # on the softmax output, as the seed's compile/fit
            # Gradients of the parameters and of every probe point's output (the upstream
            # gradients the other side's isolated backward is fed).
            both = tape.gradient(loss, variables + list(outs[:-1]))
            named = twin.outputs(outs)
            logits = named["logits"]
            exact = keras.ops.mean(keras.ops.sparse_categorical_crossentropy(y, logits, from_logits=True))
            # dL/dlogits of the mean cross-entropy: what SparseSoftmaxCrossEntropyWithLogits'
            # gradient gives Keras' recovered logits.
            batch = keras.ops.cast(keras.ops.shape(y)[0], logits.dtype)
            dlogits = (keras.ops.softmax(logits) - keras.ops.one_hot(y, keras.ops.shape(logits)[-1],
                                                                     dtype=logits.dtype)) / batch
            upstream = dict(zip(twin.layer_points[:-1], both[len(variables):]))
            upstream["logits"] = dlogits
            return named, loss, exact, both[:len(variables)], upstream

        outs, loss, exact, grads, upstream = (tp.traced(train_forward) if traced else train_forward)(x, y)
        arrays.update(ps.keyed(ps.TRAIN, {p: tp.numpy(t) for p, t in outs.items()}))
        if not refs:  # a reference's: the upstream gradients a candidate is fed
            arrays.update(ps.keyed(ps.DTRAIN, {p: tp.numpy(g) for p, g in upstream.items()}))
        arrays[ps.TRAIN_LOSS] = tp.numpy(loss)
        arrays.update(ps.keyed(ps.BN, twin.bn_stats()))
        arrays.update(ps.keyed(ps.GRAD, {k: tp.numpy(g) for k, g in zip(twin.trainable_keys, grads)}))
        if result is not None:
            result["loss"] = float(tp.numpy(loss))
            result["loss_from_logits"] = float(tp.numpy(exact))
            # -log(1e-7) = 16.1: a loss computed on clipped probabilities cannot exceed it.
            result["clipped_loss_bound"] = float(-np.log(keras.config.epsilon()))
    if refs:
        iso = isolated(twin, inputs, refs, checks)
        if "train" not in checks:  # as the torch side: grad alone keeps the isolated backward only
            iso = {k: v for k, v in iso.items() if not k.startswith((ps.key(ps.TRISO, ""), ps.key(ps.BN, "")))}
        arrays.update(iso)

    if "step" in checks:
        phase("step")
        if step_grads is None and refs:
            step_grads = [tp.tensor(refs[ps.key(ps.GRAD, k)], dtype) for k in twin.trainable_keys]
        grads = step_grads if step_grads is not None else grads
        for label, config in ((ps.ADAM, args.get("optimizer")), (ps.SGD, args.get("sgd", {"name": "sgd"}))):
            twin.reset()
            variables = [twin.variables[k] for k in twin.trainable_keys]
            opt = optim.build(config)
            opt.apply_gradients(zip(grads, variables))
            arrays.update(ps.keyed(label, {k: tp.numpy(v) for k, v in zip(twin.trainable_keys, variables)}))
            moments = optim.moments(opt, variables)
            if moments is not None:
                for k, (m, v) in zip(twin.trainable_keys, moments):
                    arrays[ps.moment_key(label, "m", k)] = m
                    arrays[ps.moment_key(label, "v", k)] = v
    return arrays


def stages(twin: Twin) -> list[tuple[str, str | None, keras.Model]]:
    """(point, the point feeding it, input -> point model) for the stem and every block: sub-models
    of the twin's model between two probe points' tensors (they share its layers and weights)."""
    spec, model = twin.spec, twin.model
    out: list[tuple[str, str | None, keras.Model]] = []
    before: str | None = None
    for point in ["stem"] + [b.id for b in spec.blocks] + ["pool"]:
        end = model.get_layer(tfm.block_output_layer(spec, point)).output
        start = model.input if before is None else model.get_layer(tfm.block_output_layer(spec, before)).output
        out.append((point, before, keras.Model(start, end)))
        before = point
    return out


def isolated(twin: Twin, inputs: dict[str, np.ndarray], arrays: dict[str, np.ndarray],
             checks: set[str]) -> dict[str, np.ndarray]:
    """The isolated passes the torch side runs, on this side: each stage fed the float32
    reference's input of that stage (``arrays``: fwd/, train/, dtrain/) and, in training mode,
    the float32 reference's gradient of its output. Keys as the torch side names them
    (iso/, triso/, bn/, gradiso/, dxiso/)."""
    dtype = twin.dtype
    out: dict[str, np.ndarray] = {}
    parts = stages(twin)
    keys_of = {layer.name: [f"{layer.name}/{w}" for w in layer.weight_names] for layer in twin.spec.layers()}

    def fed(kind: str, before: str | None):
        return tp.tensor(inputs[ps.X] if before is None else arrays[ps.key(kind, before)], dtype)

    def probs(kind: str) -> np.ndarray:  # the softmax of the reference's logits
        return tp.numpy(keras.ops.softmax(tp.tensor(arrays[ps.key(kind, "logits")], dtype)))

    if "forward" in checks:
        twin.reset()
        for point, before, stage in parts:
            out[ps.key(ps.ISO, point)] = tp.numpy(stage(fed(ps.FWD, before), training=False))
        out[ps.key(ps.ISO, "logits")] = tp.numpy(tfm.logits(twin.model, twin.spec, fed(ps.FWD, "pool")))
        out[ps.key(ps.ISO, "probs")] = probs(ps.FWD)
    if checks & {"train", "grad"}:
        twin.reset()
        backward = "grad" in checks
        for point, before, stage in parts:
            with tp.Tape() as tape:
                inp = tape.watch(fed(ps.TRAIN, before))
                y = stage(inp, training=True)
            out[ps.key(ps.TRISO, point)] = tp.numpy(y)
            if not backward or point == "pool":
                continue
            names = [layer.name for layer in stage.layers if layer.weights]
            variables = [(key, twin.variables[key]) for name in names for key in keys_of.get(name, [])
                         if twin.variables[key].trainable]
            grads = tape.gradient(y, [v for _, v in variables] + [inp],
                                  output_gradients=tp.tensor(arrays[ps.key(ps.DTRAIN, point)], dtype))
            out.update(ps.keyed(ps.GRADISO, {key: tp.numpy(g) for (key, _), g in zip(variables, grads)}))
            if before is not None:
                out[ps.key(ps.DXISO, point)] = tp.numpy(grads[-1])
        with tp.Tape() as tape:
            features = tape.watch(fed(ps.TRAIN, "pool"))
            logits = tfm.logits(twin.model, twin.spec, features)
        out[ps.key(ps.TRISO, "logits")] = tp.numpy(logits)
        out[ps.key(ps.TRISO, "probs")] = probs(ps.TRAIN)
        if backward:
            dense = twin.spec.head_layers()[0].name
            variables = [(key, twin.variables[key]) for key in keys_of[dense]]
            grads = tape.gradient(logits, [v for _, v in variables] + [features],
                                  output_gradients=tp.tensor(arrays[ps.key(ps.DTRAIN, "logits")], dtype))
            out.update(ps.keyed(ps.GRADISO, {key: tp.numpy(g) for (key, _), g in zip(variables, grads)}))
            out[ps.key(ps.DXISO, "logits")] = tp.numpy(grads[-1])
        out.update(ps.keyed(ps.BN, twin.bn_stats()))
    return out


def own_errors(spec, bundle, inputs: dict[str, np.ndarray], arrays: dict[str, np.ndarray], checks: set[str],
               args: dict, phase=lambda name: None, refs: dict[str, np.ndarray] | None = None) -> dict[str, dict]:
    """This side's own float32 error, as ``bench.parity_metrics.array_stats`` (float64 = the
    reference) keyed by the candidate's array names: every array a candidate returns for a cell,
    computed here in float64 from the same weights and inputs.

    As the reference (no ``refs``): the isolated stages fed this side's own float32 arrays and the
    step from its float32 gradients; its block fed its own input IS its isolated output, so an
    isolated key is measured on the chained float32 array the candidate's is compared with. As a
    candidate: the same passes as its float32 run (fed the reference's arrays, cast), each array
    against its float32 one, as the torch side measures its own."""
    keras.config.set_floatx("float64")
    twin = Twin(spec, bundle, "float64")
    own_phase = lambda name: phase(f"own-float64-{name}")  # noqa: E731
    if refs:
        exact = passes(twin, inputs, checks, args, own_phase, traced=False, refs=refs)
        phase("own-stats")
        return {key: pm.array_stats(value, arrays[key]) for key, value in exact.items() if key in arrays}
    grads32 = None
    if "step" in checks:
        grads32 = [tp.tensor(arrays[ps.key(ps.GRAD, k)], "float64") for k in twin.trainable_keys]
    exact = passes(twin, inputs, checks, args, own_phase, step_grads=grads32, traced=False)
    exact = {k: v for k, v in exact.items() if not k.startswith((ps.key(ps.DTRAIN, ""), ps.key(ps.BN, "")))}  # bn: the isolated update
    phase("own-float64-isolated")
    exact.update(isolated(twin, inputs, arrays, checks))
    phase("own-stats")
    own = {}
    for key, value in exact.items():
        float32 = arrays.get(ps.reference_key(spec, key) or "")
        if float32 is not None:
            own[key] = pm.array_stats(value, float32)
    return own


def trajectory(twin: Twin, inputs: dict[str, np.ndarray], args: dict, *, quiet: bool) -> dict[str, np.ndarray]:
    """K steps of Keras' own training path (compile + train_on_batch) on the given batches."""
    twin.reset()
    model = twin.model
    model.compile(optimizer=optim.build(args.get("optimizer")),
                  loss=keras.losses.SparseCategoricalCrossentropy(), jit_compile=False)
    index = ps.trajectory_sample(twin.spec)
    xs, ys = inputs[ps.TRAJ_X], inputs[ps.TRAJ_Y].astype(np.int64)
    losses, samples = [], []
    start = time.perf_counter()
    for step in range(len(xs)):
        loss = model.train_on_batch(xs[step].astype(twin.dtype), ys[step])
        losses.append(float(loss))
        samples.append(np.concatenate([tp.numpy(twin.variables[k]).ravel()[idx] for k, idx in index.items()]))
        if not quiet:
            eta = (time.perf_counter() - start) / (step + 1) * (len(xs) - step - 1)
            print(f"[tf] trajectory step {step + 1}/{len(xs)} loss {losses[-1]:.6f} eta {eta:.0f}s", flush=True)
    return {ps.TRAJ_LOSS: np.asarray(losses, dtype=twin.dtype), ps.TRAJ_SAMPLE: np.stack(samples)}


def load_inputs(args: dict, inputs: dict[str, np.ndarray], job_dir: Path):
    """The parity batch (``args['indices']`` of the validation split) through ``tf_impl.data``,
    for the ``input`` row; ``options`` may pick the seed's fast-IDCT decoder (``decoder: seed``)."""
    from bench.dataset import PipelineOptions, load_manifest
    from tf_impl import data

    manifest = load_manifest(args["manifest"], data_root=args.get("data_root"), verify="none")  # the parent verified it
    pipeline = PipelineOptions(image_size=int(args["size"]), batch_size=max(1, len(args["indices"])),
                               **args.get("options", {}))
    x, y = data.load_images(manifest, "validation", args["indices"], pipeline)
    files = [manifest.entries("validation")[i].path for i in args["indices"]]
    return {"files": files, "options": pipeline.to_dict()}, {ps.X: np.ascontiguousarray(x, dtype=np.float32),
                                                            ps.Y: y.astype(np.int64)}
