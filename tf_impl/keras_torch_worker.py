"""Keras-on-torch worker: ``python -m tf_impl.keras_torch_worker JOB.json``.

The seed's Keras functional model (``tf_impl.model``), unchanged, run by Keras 3 with
``KERAS_BACKEND=torch``: what a user would try before porting by hand. This process imports
keras and torch, never tensorflow and never twinbench's torch model (``torch_impl``); the
``info`` task reports both (the training record keeps it), and tests/test_isolation.py checks them.
The torch input pipeline (``torch_impl.data``) feeds it: the pixels and batches the port sees.
"""

from __future__ import annotations

import os
import sys

os.environ["KERAS_BACKEND"] = "torch"  # before keras is imported: the backend is fixed at import

import torch  # noqa: E402

from bench.workerproto import serve, threads_from_env  # noqa: E402

TASKS = {
    "info": "tf_impl.keras_torch_worker:info",
    "forward": "tf_impl.keras_tasks:forward",
    "export": "tf_impl.keras_tasks:export",
    "train": "tf_impl.keras_torch_train:train",
    "bench_row": "tf_impl.keras_torch_benchmark:bench_row",
    "parity_probe": "tf_impl.probes:probe",  # the TF side's probes; gradients through tf_impl.tape
}


def setup_threads() -> None:
    threads = threads_from_env()
    if threads:
        torch.set_num_threads(threads)


def info(args, inputs, job_dir):
    import keras

    if keras.backend.backend() != "torch":
        raise RuntimeError(f"Keras runs on {keras.backend.backend()!r}, not torch (KERAS_BACKEND was read earlier)")
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "framework": "keras-torch",
        "versions": {"keras": keras.__version__, "torch": torch.__version__},
        "backend": keras.backend.backend(),
        "devices": ["cpu", *(f"cuda:{i}" for i in range(len(gpus)))],
        "gpus": gpus,
        "threads": {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()},
        "imported": {name: name in sys.modules for name in ("tensorflow", "torch_impl.model")},
    }, None


if __name__ == "__main__":
    setup_threads()
    sys.exit(serve(TASKS))
