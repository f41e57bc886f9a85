"""Gradients and dtypes for Keras code on either backend it runs on here (TF, or torch for keras-torch).

Keras 3 has no backend-neutral gradient API, so the parity probes (``tf_impl.probes``) take their
gradients through :class:`Tape`: ``tf.GradientTape`` on TensorFlow, ``torch.autograd.grad`` on
torch. The framework is imported only when a tape is made, so a keras-torch process never imports
tensorflow.

:func:`exact_float64` undoes a Keras rule that matters for float64 parity: on every backend but
TensorFlow, Keras' type promotion maps float64 to float32 ("to be aligned with JAX's default",
``keras.src.backend.common.dtypes.BIT64_TO_BIT32_DTYPE``). BatchNormalization computes in
``result_type(inputs.dtype, "float32")``, so on the torch backend a float64 model normalizes in
float32 and casts back: 1.5e-7 max relative error against exact float64 BN, where TF's is 1.9e-16
(tests/test_isolation.py::test_keras_torch_float64_batch_norm). Parity in float64 asks whether the
two are the same function, which float32 arithmetic inside one of them cannot answer.
"""

from __future__ import annotations

from typing import Any, Sequence

import keras


def backend() -> str:
    return keras.backend.backend()


def exact_float64() -> bool:
    """Make Keras' type promotion keep float64 on this backend (TF already does); returns whether
    anything changed. Call before a float64 computation; a float32 one is unaffected either way
    (float32 with float32 promotes to float32)."""
    from keras.src.backend.common import dtypes

    if dtypes.BIT64_TO_BIT32_DTYPE.get("float64") == "float64":
        return False
    dtypes.BIT64_TO_BIT32_DTYPE["float64"] = "float64"
    return True


def tensor(array: Any, dtype: str | None = None):
    """A backend tensor (on the backend's default device)."""
    return keras.ops.convert_to_tensor(array, dtype=dtype)


def numpy(t: Any):
    """Tensor or Keras variable -> numpy, detached from any graph."""
    return keras.ops.convert_to_numpy(t)


def threads() -> int:
    if backend() == "tensorflow":
        import tensorflow as tf

        return tf.config.threading.get_intra_op_parallelism_threads()
    import torch

    return torch.get_num_threads()


def traced(fn):
    """``fn`` as a tf.function on TensorFlow (Keras' own train_step path); unchanged on torch,
    which runs Keras eagerly."""
    if backend() == "tensorflow":
        import tensorflow as tf

        return tf.function(fn)
    return fn


class Tape:
    """Record a computation, then take gradients of one target with respect to variables, watched
    inputs and intermediate tensors of it (``with Tape() as tape: x = tape.watch(x); y = f(x)``)."""

    def __init__(self) -> None:
        self._backend = backend()
        if self._backend == "tensorflow":
            import tensorflow as tf

            self._tape = tf.GradientTape()
        else:
            import torch

            self._tape = torch.enable_grad()

    def __enter__(self) -> "Tape":
        self._tape.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._tape.__exit__(*exc)

    def watch(self, t):
        """``t``, recorded as a source: use the returned tensor."""
        if self._backend == "tensorflow":
            self._tape.watch(t)
            return t
        return t.detach().requires_grad_(True)

    def gradient(self, target, sources: Sequence[Any], output_gradients=None) -> list:
        if self._backend == "tensorflow":
            return self._tape.gradient(target, list(sources), output_gradients=output_gradients)
        import torch

        wrt = [s.value if isinstance(s, keras.Variable) else s for s in sources]
        return list(torch.autograd.grad(target, wrt, grad_outputs=output_gradients))
