"""TensorFlow worker: ``python -m tf_impl.worker JOB.json``.

TensorFlow is imported first and torch never (TF 2.21 then torch 2.14.1 segfaults here).
Tasks are looked up in TASKS, an explicit table; each lives beside its subject.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402  (first, before anything that might pull in another framework)

from bench.workerproto import serve, threads_from_env  # noqa: E402

TASKS = {
    "info": "tf_impl.worker:info",
    "train": "tf_impl.train:train",
    "forward": "tf_impl.keras_tasks:forward",  # Keras-only code, shared with the keras-torch worker
    "export": "tf_impl.keras_tasks:export",
    "convert": "tf_impl.worker:convert",
    "bench_row": "tf_impl.benchmark:bench_row",
    "residual_ratios": "tf_impl.residuals:residual_ratios",
    "parity_probe": "tf_impl.probes:probe",
    "parity_inputs": "tf_impl.probes:load_inputs",
    "data_check": "tf_impl.data:data_check",
    "pipeline_speed": "tf_impl.data:pipeline_speed",
}


def setup_threads() -> None:
    threads = threads_from_env()
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)  # the seed does this too


def info(args, inputs, job_dir):
    import keras

    return {
        "framework": "tf",
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        "devices": [d.name for d in tf.config.list_logical_devices()],
        "gpus": [tf.config.experimental.get_device_details(g).get("device_name", g.name)
                 for g in tf.config.list_physical_devices("GPU")],
        "threads": {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                    "inter_op": tf.config.threading.get_inter_op_parallelism_threads()},
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
    }, None


def convert(args, inputs, job_dir):
    """Any weight file this side reads -> any it writes (.npz bundle, legacy .h5, .weights.h5)."""
    from bench.spec import spec_from_args
    from bench.weights import convert_file
    from tf_impl import weights as tfw

    return convert_file(args["src"], args["dst"], spec_from_args(args), load_file=tfw.load_file,
                        own_format="keras_h5", save_own=tfw.save_file, worker="TF"), None


if __name__ == "__main__":
    setup_threads()
    sys.exit(serve(TASKS))
