"""The frameworks a comparison has, their worker modules, and their names in text, tables and
figures (one place)."""

FRAMEWORKS = ("tf", "torch")  # the pair every comparison has: the Keras original and twinbench's port
KERAS_TORCH = "keras-torch"  # the seed's Keras model unchanged, run by Keras 3 on its torch backend
ARMS = (*FRAMEWORKS, KERAS_TORCH)  # every kind of worker process
FRAMEWORK_LABELS = {"tf": "TensorFlow", "torch": "PyTorch", KERAS_TORCH: "Keras on torch"}
# ``python -m MODULE JOB.json``. Keras on torch imports keras (torch backend) and torch, never
# tensorflow and never twinbench's torch model: its model is tf_impl's Keras code.
WORKER_MODULES = {"tf": "tf_impl.worker", "torch": "torch_impl.worker", KERAS_TORCH: "tf_impl.keras_torch_worker"}
