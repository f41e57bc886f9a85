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

from bench import parity
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
    """Run the requested parity checks (``args['checks']``: forward, train, grad, step, trajectory)."""
    dtype = args.get("dtype", "float32")
    keras.config.set_floatx(dtype)  # losses and the learning rate compute in floatx (see above)
    keras.utils.set_random_seed(int(args.get("seed", 0)))
    spec = spec_from_args(args)
    checks = set(args.get("checks", parity.DEFAULT_CHECKS))
    twin = Twin(spec, tfw.load_file(args["weights"], spec), dtype)
    x = tf.constant(inputs["x"], dtype=dtype)
    y = tf.constant(inputs["y"].astype(np.int64))
    arrays: dict[str, np.ndarray] = {}
    result: dict = {"framework": "tf"}
    timing: dict[str, float] = {}
    quiet = bool(args.get("quiet"))

    def phase(name: str) -> None:
        timing[name] = time.perf_counter()
        if not quiet:
            print(f"[tf] parity: {name}", flush=True)

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

        @tf.function
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

        outs, loss, exact, grads, upstream = train_forward(x, y)
        arrays.update({f"train/{p}": np.asarray(t) for p, t in outs.items()})
        arrays.update({f"dtrain/{p}": np.asarray(g) for p, g in upstream.items()})
        arrays["train/loss"] = np.asarray(loss)
        arrays.update({f"bn/{k}": np.asarray(v) for k, v in twin.variables.items()
                       if k.endswith(("/moving_mean", "/moving_variance"))})
        arrays.update({f"grad/{k}": np.asarray(g) for k, g in zip(twin.trainable_keys, grads)})
        result["loss"] = float(loss)
        result["loss_from_logits"] = float(exact)
        # -log(1e-7) = 16.1: a loss computed on clipped probabilities cannot exceed it.
        result["clipped_loss_bound"] = float(-np.log(keras.config.epsilon()))

    if "step" in checks:
        phase("step")
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

    if "trajectory" in checks:
        phase("trajectory")
        arrays.update(trajectory(twin, inputs, args, quiet=quiet))

    timing["end"] = time.perf_counter()
    names = list(timing)
    result["seconds"] = {names[i]: round(timing[names[i + 1]] - timing[names[i]], 3) for i in range(len(names) - 1)}
    result["threads"] = tf.config.threading.get_intra_op_parallelism_threads()
    return result, arrays


def trajectory(twin: Twin, inputs: dict[str, np.ndarray], args: dict, *, quiet: bool) -> dict[str, np.ndarray]:
    """K steps of Keras' own training path (compile + train_on_batch) on the given batches."""
    twin.reset()
    model = twin.model
    model.compile(optimizer=optim.build(args.get("optimizer")),
                  loss=keras.losses.SparseCategoricalCrossentropy(), jit_compile=False)
    index = parity.trajectory_sample(twin.spec)
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
