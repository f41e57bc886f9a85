"""Parity probes, TensorFlow side: the reference (worker tasks; mirror of ``torch_impl.probes``).

``probe`` returns the arrays ``bench.parity`` compares, in Keras layout, under the same names as
the torch side (``fwd/<point>``, ``train/<point>``, ``train/loss``, ``bn/<layer>/<stat>``,
``grad/<key>``, ``dtrain/<point>`` (dL/d the point's output, training mode), ``adam/<key>``, ``adam_m/<key>``, ``adam_v/<key>``, ``sgd/<key>``, ``traj/loss``,
``traj/sample``). The TF side needs no isolated pass: each of its blocks fed its own chained
input gives its chained output, which is the reference the torch side's isolated blocks are fed.

How the reference is computed, and why:

- floatx is set to the model dtype first. Keras losses compute in floatx (``Loss(dtype=None)``)
  and the learning rate is a floatx variable: in a float64 model with floatx float32 the loss
  would cast the softmax to float32 and lose ``_keras_logits`` (measured; see below).
- The training step is Keras' own ``train_step`` written out: a ``tf.function`` running
  ``model(x, training=True)`` under a GradientTape, ``SparseCategoricalCrossentropy`` on the
  softmax output, ``tape.gradient``. Keras' TF backend finds the logits on the softmax output
  (``_keras_logits``) and computes the loss from them: the result reports ``loss`` and
  ``loss_from_logits`` (``tf.nn.sparse_softmax_cross_entropy_with_logits`` on the pre-softmax
  values) so the parity report shows they agree.
- The trajectory runs ``model.compile(optimizer, loss)`` + ``train_on_batch``: the path the seed's
  ``fit`` takes (no XLA: Keras' "auto" turns it off on CPU, and we pin it off on GPU too, since
  XLA's fusions change rounding and are not part of the model).
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

    def outputs(self, outs) -> dict[str, tf.Tensor]:
        out = dict(zip(self.layer_points, outs))
        out["logits"] = tfm.logits(self.model, self.spec, out["pool"])
        return {p: out[p] for p in self.spec.probe_points}


def probe(args: dict, inputs: dict[str, np.ndarray], job_dir: Path):
    """Run the requested parity checks (``args['checks']``: forward, train, grad, step, trajectory);
    with ``args['own_errors']``, also TF's own float32 error (see :func:`own_errors`); with
    ``args['chaos_weights']``, the trajectory again from that (one-ulp perturbed) bundle."""
    dtype = args.get("dtype", "float32")
    keras.config.set_floatx(dtype)  # losses and the learning rate compute in floatx (see above)
    keras.utils.set_random_seed(int(args.get("seed", 0)))
    spec = spec_from_args(args)
    checks = set(args.get("checks", ps.DEFAULT_CHECKS))
    bundle = tfw.load_file(args["weights"], spec)
    twin = Twin(spec, bundle, dtype)
    result: dict = {"framework": "tf"}
    timing: dict[str, float] = {}
    quiet = bool(args.get("quiet"))

    def phase(name: str) -> None:
        timing[name] = time.perf_counter()
        if not quiet:
            print(f"[tf] parity: {name}", flush=True)

    arrays = passes(twin, inputs, checks, args, phase, result)
    if "trajectory" in checks:
        phase("trajectory")
        arrays.update(trajectory(twin, inputs, args, quiet=quiet))
        if args.get("chaos_weights"):
            phase("trajectory-chaos")
            twin.bundle = tfw.load_file(args["chaos_weights"], spec)
            chaos = trajectory(twin, inputs, args, quiet=quiet)
            arrays.update({f"chaos/{k}": v for k, v in chaos.items()})
            twin.bundle = bundle
    if args.get("own_errors") and checks - {"trajectory"}:
        phase("own-build")
        result["own"] = own_errors(spec, bundle, inputs, arrays, checks, args, phase)
        keras.config.set_floatx(dtype)

    timing["end"] = time.perf_counter()
    names = list(timing)
    result["seconds"] = {names[i]: round(timing[names[i + 1]] - timing[names[i]], 3) for i in range(len(names) - 1)}
    result["threads"] = tf.config.threading.get_intra_op_parallelism_threads()
    return result, arrays


def passes(twin: Twin, inputs: dict[str, np.ndarray], checks: set[str], args: dict, phase,
           result: dict | None = None, step_grads: list | None = None, traced: bool = True) -> dict[str, np.ndarray]:
    """The forward, train/grad and step checks in the twin's dtype. ``step_grads``: the
    gradients the optimizer step starts from (default: this pass's own). ``traced``: the
    training step as a tf.function (Keras' own train_step path); the float64 own-error pass runs
    it eagerly (same ops, no second trace: measured 6 s faster here)."""
    dtype = twin.dtype
    x = tf.constant(inputs["x"], dtype=dtype)
    y = tf.constant(inputs["y"].astype(np.int64))
    arrays: dict[str, np.ndarray] = {}
    if "forward" in checks:
        phase("forward")
        outs = twin.outputs(twin.probe_model(x, training=False))
        arrays.update({f"fwd/{p}": np.asarray(t) for p, t in outs.items()})

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
        arrays.update({f"train/{p}": np.asarray(t) for p, t in outs.items()})
        arrays.update({f"dtrain/{p}": np.asarray(g) for p, g in upstream.items()})
        arrays["train/loss"] = np.asarray(loss)
        arrays.update({f"bn/{k}": np.asarray(v) for k, v in twin.variables.items()
                       if k.endswith(("/moving_mean", "/moving_variance"))})
        arrays.update({f"grad/{k}": np.asarray(g) for k, g in zip(twin.trainable_keys, grads)})
        if result is not None:
            result["loss"] = float(loss)
            result["loss_from_logits"] = float(exact)
            # -log(1e-7) = 16.1: a loss computed on clipped probabilities cannot exceed it.
            result["clipped_loss_bound"] = float(-np.log(keras.config.epsilon()))

    if "step" in checks:
        phase("step")
        grads = step_grads if step_grads is not None else grads
        for label, config in (("adam", args.get("optimizer")), ("sgd", args.get("sgd", {"name": "sgd"}))):
            twin.reset()
            variables = [twin.variables[k] for k in twin.trainable_keys]
            opt = optim.build(config)
            opt.apply_gradients(zip(grads, variables))
            arrays.update({f"{label}/{k}": np.asarray(v) for k, v in zip(twin.trainable_keys, variables)})
            moments = optim.moments(opt, variables)
            if moments is not None:
                for k, (m, v) in zip(twin.trainable_keys, moments):
                    arrays[f"{label}_m/{k}"] = m
                    arrays[f"{label}_v/{k}"] = v
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

    def fed(prefix: str, before: str | None) -> tf.Tensor:
        return tf.constant(inputs["x"] if before is None else arrays[f"{prefix}{before}"], dtype=dtype)

    def head(features, prefix: str, out_prefix: str) -> None:
        out[f"{out_prefix}logits"] = np.asarray(tfm.logits(twin.model, twin.spec, features))
        out[f"{out_prefix}probs"] = np.asarray(tf.nn.softmax(tf.constant(arrays[f"{prefix}logits"], dtype=dtype)))

    if "forward" in checks:
        twin.reset()
        for point, before, stage in parts:
            out[f"iso/{point}"] = np.asarray(stage(fed("fwd/", before), training=False))
        head(fed("fwd/", "pool"), "fwd/", "iso/")
    if checks & {"train", "grad"}:
        twin.reset()
        backward = "grad" in checks
        for point, before, stage in parts:
            inp = fed("train/", before)
            with tf.GradientTape() as tape:
                tape.watch(inp)
                y = stage(inp, training=True)
            out[f"triso/{point}"] = np.asarray(y)
            if not backward or point == "pool":
                continue
            names = [layer.name for layer in stage.layers if layer.weights]
            variables = [(key, twin.variables[key]) for name in names for key in keys_of.get(name, [])
                         if twin.variables[key].trainable]
            grads = tape.gradient(y, [v for _, v in variables] + [inp],
                                  output_gradients=tf.constant(arrays[f"dtrain/{point}"], dtype=dtype))
            out.update({f"gradiso/{key}": np.asarray(g) for (key, _), g in zip(variables, grads)})
            if before is not None:
                out[f"dxiso/{point}"] = np.asarray(grads[-1])
        features = fed("train/", "pool")
        with tf.GradientTape() as tape:
            tape.watch(features)
            logits = tfm.logits(twin.model, twin.spec, features)
        out["triso/logits"] = np.asarray(logits)
        out["triso/probs"] = np.asarray(tf.nn.softmax(tf.constant(arrays["train/logits"], dtype=dtype)))
        if backward:
            dense = twin.spec.head_layers()[0].name
            variables = [(key, twin.variables[key]) for key in keys_of[dense]]
            grads = tape.gradient(logits, [v for _, v in variables] + [features],
                                  output_gradients=tf.constant(arrays["dtrain/logits"], dtype=dtype))
            out.update({f"gradiso/{key}": np.asarray(g) for (key, _), g in zip(variables, grads)})
            out["dxiso/logits"] = np.asarray(grads[-1])
        out.update({f"bn/{k}": np.asarray(v) for k, v in twin.variables.items()
                    if k.endswith(("/moving_mean", "/moving_variance"))})
    return out


# The float32 array each own-error key is measured on: TF's block fed its own input IS its
# isolated output, so the isolated keys compare with the chained float32 arrays.
def _float32_of(key: str, spec, arrays: dict[str, np.ndarray]) -> np.ndarray | None:
    kind, name = key.split("/", 1)
    if kind == "iso":
        return arrays.get(f"fwd/{name}")
    if kind == "triso":
        return arrays.get(f"train/{name}")
    if kind == "gradiso":
        return arrays.get(f"grad/{name}")
    if kind == "dxiso":
        before = ps.previous_point(spec, name)
        return arrays.get(f"dtrain/{before}") if before else None
    return arrays.get(key)


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
        grads32 = [tf.constant(arrays[f"grad/{k}"], dtype="float64") for k in twin.trainable_keys]
    exact = passes(twin, inputs, checks, args, lambda name: phase(f"own-float64-{name}"), step_grads=grads32,
                   traced=False)
    exact = {k: v for k, v in exact.items() if not k.startswith(("dtrain/", "bn/"))}  # bn: the isolated update
    phase("own-float64-isolated")
    exact.update(isolated(twin, inputs, arrays, checks))
    phase("own-stats")
    own = {}
    for key, value in exact.items():
        float32 = _float32_of(key, spec, arrays)
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
    xs, ys = inputs["traj_x"], inputs["traj_y"].astype(np.int64)
    losses, samples = [], []
    start = time.perf_counter()
    for step in range(len(xs)):
        loss = model.train_on_batch(xs[step].astype(twin.dtype), ys[step])
        losses.append(float(loss))
        samples.append(np.concatenate([np.asarray(twin.variables[k]).ravel()[idx] for k, idx in index.items()]))
        if not quiet:
            eta = (time.perf_counter() - start) / (step + 1) * (len(xs) - step - 1)
            print(f"[tf] trajectory step {step + 1}/{len(xs)} loss {losses[-1]:.6f} eta {eta:.0f}s", flush=True)
    return {"traj/loss": np.asarray(losses, dtype=twin.dtype), "traj/sample": np.stack(samples)}


def load_inputs(args: dict, inputs: dict[str, np.ndarray], job_dir: Path):
    """The parity batch (``args['indices']`` of the validation split) through ``tf_impl.data``,
    for the ``input`` row; ``options`` may pick the seed's fast-IDCT decoder (``decoder: seed``)."""
    from bench.manifest import PipelineOptions, load_manifest
    from tf_impl import data

    manifest = load_manifest(args["manifest"], verify="none")  # the parent verified it
    pipeline = PipelineOptions(image_size=int(args["size"]), batch_size=max(1, len(args["indices"])),
                               **args.get("options", {}))
    x, y = data.load_images(manifest, "validation", args["indices"], pipeline)
    files = [manifest.entries("validation")[i].path for i in args["indices"]]
    return {"files": files, "options": pipeline.to_dict()}, {"x": np.ascontiguousarray(x, dtype=np.float32),
                                                            "y": y.astype(np.int64)}
