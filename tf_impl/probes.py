"""Parity probes, TensorFlow side: the reference (worker tasks; mirror of ``torch_impl.probes``).

``probe`` returns the arrays ``bench.parity`` compares, in Keras layout, keyed as
``bench.parity_spec`` builds them (the same names as the torch side). The TF side needs no
isolated pass: its block fed its own chained input gives its chained output, the reference the
torch side's isolated blocks are fed. How the reference is computed (floatx, Keras' train_step
written out, compile + train_on_batch for the trajectory) and why: docs/parity.md.
"""

from __future__ import annotations

import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from bench import parity_spec as ps
from bench import parity_metrics as pm
from bench.spec import spec_from_args
from tf_impl import model as tfm
from tf_impl import optim
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
        return {k: np.asarray(v) for k, v in self.variables.items() if ps.is_stat(k)}

    def outputs(self, outs) -> dict[str, tf.Tensor]:
        out = dict(zip(self.layer_points, outs))
        out["logits"] = tfm.logits(self.model, self.spec, out["pool"])
        return {p: out[p] for p in self.spec.probe_points}


def probe(args: dict, inputs: dict[str, np.ndarray], job_dir: Path):
    """Run the requested parity checks (``args['checks']``: forward, train, grad, step, trajectory);
    with ``args['own_errors']``, also TF's own float32 error (see :func:`own_errors`); with
    ``args['chaos_weights']``, the trajectory again from that (one-ulp perturbed) bundle."""
    dtype = args.get("dtype", "float32")
    keras.config.set_floatx(dtype)  # losses and the learning rate compute in floatx (docs/parity.md)
    keras.utils.set_random_seed(int(args.get("seed", 0)))
    spec = spec_from_args(args)
    checks = set(args.get("checks", ps.DEFAULT_CHECKS))
    bundle = tfw.load_file(args["weights"], spec)
    twin = Twin(spec, bundle, dtype)
    result: dict = {"framework": "tf"}
    quiet = bool(args.get("quiet"))
    phase = ps.Phases("tf", quiet)

    arrays = passes(twin, inputs, checks, args, phase, result)
    if "trajectory" in checks:
        arrays.update(ps.trajectories(twin, inputs, args, phase, trajectory, tfw.load_file))
    if args.get("own_errors") and checks - {"trajectory"}:
        phase("own-build")
        result["own"] = own_errors(spec, bundle, inputs, arrays, checks, args, phase)
        keras.config.set_floatx(dtype)

    result["seconds"] = phase.seconds()
    result["threads"] = tf.config.threading.get_intra_op_parallelism_threads()
    return result, arrays


def passes(twin: Twin, inputs: dict[str, np.ndarray], checks: set[str], args: dict, phase,
           result: dict | None = None, step_grads: list | None = None, traced: bool = True) -> dict[str, np.ndarray]:
    """The forward, train/grad and step checks in the twin's dtype. ``step_grads``: the
    gradients the optimizer step starts from (default: this pass's own). ``traced``: the
    training step as a tf.function (Keras' own train_step path); the float64 own-error pass runs
    it eagerly (same ops, no second trace: measured 6 s faster here)."""
    dtype = twin.dtype
    x = tf.constant(inputs[ps.X], dtype=dtype)
    y = tf.constant(inputs[ps.Y].astype(np.int64))
    arrays: dict[str, np.ndarray] = {}
    if "forward" in checks:
        phase("forward")
        outs = twin.outputs(twin.probe_model(x, training=False))
        arrays.update(ps.keyed(ps.FWD, {p: np.asarray(t) for p, t in outs.items()}))

    grads = None
    if checks & {"train", "grad", "step"}:
        phase("train")
        twin.reset()
        loss_fn = keras.losses.SparseCategoricalCrossentropy()
        variables = [twin.variables[k] for k in twin.trainable_keys]

        def train_forward(x, y):
            with tf.GradientTape() as tape:
                outs = twin.probe_model(x, training=True)
                loss = loss_fn(y, outs[-1])  # on the softmax output, as the seed's compile/fit
            # Gradients of the parameters and of every probe point's output (the upstream
            # gradients the torch side's isolated backward is fed).
            both = tape.gradient(loss, variables + outs[:-1])
            named = twin.outputs(outs)
            exact = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, named["logits"]))
            # dL/dlogits of the mean cross-entropy: what SparseSoftmaxCrossEntropyWithLogits'
            # gradient gives Keras' recovered logits.
            batch = tf.cast(tf.shape(y)[0], named["logits"].dtype)
            dlogits = (tf.nn.softmax(named["logits"]) - tf.one_hot(y, tf.shape(named["logits"])[-1],
                                                                     dtype=named["logits"].dtype)) / batch
            upstream = dict(zip(twin.layer_points[:-1], both[len(variables):]))
            upstream["logits"] = dlogits
            return named, loss, exact, both[:len(variables)], upstream

        outs, loss, exact, grads, upstream = (tf.function(train_forward) if traced else train_forward)(x, y)
        arrays.update(ps.keyed(ps.TRAIN, {p: np.asarray(t) for p, t in outs.items()}))
        arrays.update(ps.keyed(ps.DTRAIN, {p: np.asarray(g) for p, g in upstream.items()}))
        arrays[ps.TRAIN_LOSS] = np.asarray(loss)
        arrays.update(ps.keyed(ps.BN, twin.bn_stats()))
        arrays.update(ps.keyed(ps.GRAD, {k: np.asarray(g) for k, g in zip(twin.trainable_keys, grads)}))
        if result is not None:
            result["loss"] = float(loss)
            result["loss_from_logits"] = float(exact)
            # -log(1e-7) = 16.1: a loss computed on clipped probabilities cannot exceed it.
            result["clipped_loss_bound"] = float(-np.log(keras.config.epsilon()))

    if "step" in checks:
        phase("step")
        grads = step_grads if step_grads is not None else grads
        for label, config in ((ps.ADAM, args.get("optimizer")), (ps.SGD, args.get("sgd", {"name": "sgd"}))):
            twin.reset()
            variables = [twin.variables[k] for k in twin.trainable_keys]
            opt = optim.build(config)
            opt.apply_gradients(zip(grads, variables))
            arrays.update(ps.keyed(label, {k: np.asarray(v) for k, v in zip(twin.trainable_keys, variables)}))
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

    def fed(kind: str, before: str | None) -> tf.Tensor:
        return tf.constant(inputs[ps.X] if before is None else arrays[ps.key(kind, before)], dtype=dtype)

    def probs(kind: str) -> np.ndarray:  # the softmax of the reference's logits
        return np.asarray(tf.nn.softmax(tf.constant(arrays[ps.key(kind, "logits")], dtype=dtype)))

    if "forward" in checks:
        twin.reset()
        for point, before, stage in parts:
            out[ps.key(ps.ISO, point)] = np.asarray(stage(fed(ps.FWD, before), training=False))
        out[ps.key(ps.ISO, "logits")] = np.asarray(tfm.logits(twin.model, twin.spec, fed(ps.FWD, "pool")))
        out[ps.key(ps.ISO, "probs")] = probs(ps.FWD)
    if checks & {"train", "grad"}:
        twin.reset()
        backward = "grad" in checks
        for point, before, stage in parts:
            inp = fed(ps.TRAIN, before)
            with tf.GradientTape() as tape:
                tape.watch(inp)
                y = stage(inp, training=True)
            out[ps.key(ps.TRISO, point)] = np.asarray(y)
            if not backward or point == "pool":
                continue
            names = [layer.name for layer in stage.layers if layer.weights]
            variables = [(key, twin.variables[key]) for name in names for key in keys_of.get(name, [])
                         if twin.variables[key].trainable]
            grads = tape.gradient(y, [v for _, v in variables] + [inp],
                                  output_gradients=tf.constant(arrays[ps.key(ps.DTRAIN, point)], dtype=dtype))
            out.update(ps.keyed(ps.GRADISO, {key: np.asarray(g) for (key, _), g in zip(variables, grads)}))
            if before is not None:
                out[ps.key(ps.DXISO, point)] = np.asarray(grads[-1])
        features = fed(ps.TRAIN, "pool")
        with tf.GradientTape() as tape:
            tape.watch(features)
            logits = tfm.logits(twin.model, twin.spec, features)
        out[ps.key(ps.TRISO, "logits")] = np.asarray(logits)
        out[ps.key(ps.TRISO, "probs")] = probs(ps.TRAIN)
        if backward:
            dense = twin.spec.head_layers()[0].name
            variables = [(key, twin.variables[key]) for key in keys_of[dense]]
            grads = tape.gradient(logits, [v for _, v in variables] + [features],
                                  output_gradients=tf.constant(arrays[ps.key(ps.DTRAIN, "logits")], dtype=dtype))
            out.update(ps.keyed(ps.GRADISO, {key: np.asarray(g) for (key, _), g in zip(variables, grads)}))
            out[ps.key(ps.DXISO, "logits")] = np.asarray(grads[-1])
        out.update(ps.keyed(ps.BN, twin.bn_stats()))
    return out


def own_errors(spec, bundle, inputs: dict[str, np.ndarray], arrays: dict[str, np.ndarray], checks: set[str],
               args: dict, phase=lambda name: None) -> dict[str, dict]:
    """TF's own float32 error: every array the torch side returns for a cell, computed here in
    float64 from the same weights and inputs (isolated stages fed the float32 reference's
    inputs; the step from the float32 gradients), as ``bench.parity_metrics.array_stats``
    (float64 = the reference) keyed by the torch side's array names."""
    keras.config.set_floatx("float64")
    twin = Twin(spec, bundle, "float64")
    grads32 = None
    if "step" in checks:
        grads32 = [tf.constant(arrays[ps.key(ps.GRAD, k)], dtype="float64") for k in twin.trainable_keys]
    exact = passes(twin, inputs, checks, args, lambda name: phase(f"own-float64-{name}"), step_grads=grads32,
                   traced=False)
    exact = {k: v for k, v in exact.items() if not k.startswith((ps.key(ps.DTRAIN, ""), ps.key(ps.BN, "")))}  # bn: the isolated update
    phase("own-float64-isolated")
    exact.update(isolated(twin, inputs, arrays, checks))
    phase("own-stats")
    own = {}
    for key, value in exact.items():
        # TF's block fed its own input IS its isolated output: an isolated key is measured on the
        # chained float32 array the torch side's is compared with.
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
        samples.append(np.concatenate([np.asarray(twin.variables[k]).ravel()[idx] for k, idx in index.items()]))
        if not quiet:
            eta = (time.perf_counter() - start) / (step + 1) * (len(xs) - step - 1)
            print(f"[tf] trajectory step {step + 1}/{len(xs)} loss {losses[-1]:.6f} eta {eta:.0f}s", flush=True)
    return {ps.TRAJ_LOSS: np.asarray(losses, dtype=twin.dtype), ps.TRAJ_SAMPLE: np.stack(samples)}


def load_inputs(args: dict, inputs: dict[str, np.ndarray], job_dir: Path):
    """The parity batch (``args['indices']`` of the validation split) through ``tf_impl.data``,
    for the ``input`` row; ``options`` may pick the seed's fast-IDCT decoder (``decoder: seed``)."""
    from bench.dataset import PipelineOptions, load_manifest
    from tf_impl import data

    manifest = load_manifest(args["manifest"], verify="none")  # the parent verified it
    pipeline = PipelineOptions(image_size=int(args["size"]), batch_size=max(1, len(args["indices"])),
                               **args.get("options", {}))
    x, y = data.load_images(manifest, "validation", args["indices"], pipeline)
    files = [manifest.entries("validation")[i].path for i in args["indices"]]
    return {"files": files, "options": pipeline.to_dict()}, {ps.X: np.ascontiguousarray(x, dtype=np.float32),
                                                            ps.Y: y.astype(np.int64)}
