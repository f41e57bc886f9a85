"""bench never imports a framework; the runner turns worker crashes into clear errors."""

from __future__ import annotations

import os
import pkgutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import bench
from bench.errors import UserError, WorkerError
from bench.runner import WorkerConfig, run_worker

FRAMEWORK_MODULES = ("tensorflow", "keras", "torch", "torchvision")


def test_bench_imports_no_framework():
    modules = [f"bench.{m.name}" for m in pkgutil.iter_modules(bench.__path__)]
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "from bench.cli import build_parser; build_parser()\n"
            f"bad = [m for m in {FRAMEWORK_MODULES!r} if m in sys.modules]\n"
            "print(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "bench.cli" in modules and "bench.runner" in modules
    assert out.stdout.strip() == "", f"bench imported {out.stdout.strip()}"


def fake_python(tmp_path: Path, body: str) -> str:
    """An executable that stands in for a worker's Python."""
    path = tmp_path / "fake-python"
    path.write_text("#!/usr/bin/env bash\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_segfaulting_worker_names_framework_and_last_lines(tmp_path):
    py = fake_python(tmp_path, 'echo "loading model"; echo "oneDNN exploded" >&2; kill -SEGV $$')
    config = WorkerConfig(tf_python=py, quiet=True)
    with pytest.raises(WorkerError) as err:
        run_worker("tf", "forward", {}, config=config, job_dir=tmp_path / "job")
    text = str(err.value)
    assert text.startswith("TensorFlow worker (forward) was killed by SIGSEGV")
    assert "oneDNN exploded" in text and "loading model" in text


def test_tf_startup_noise_is_not_echoed_but_kept_for_errors(tmp_path, capfd):
    noise = ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
             "I0000 00:00:1795891972.309467     628 port.cc:153] oneDNN custom operations are on. You may see ...")
    py = fake_python(tmp_path, f"printf '%s\\n' '{noise.splitlines()[0]}' '{noise.splitlines()[1]}' >&2; "
                               "echo '[tf] parity: forward' >&2; exit 3")
    with pytest.raises(WorkerError) as err:
        run_worker("tf", "parity", {}, config=WorkerConfig(tf_python=py), job_dir=tmp_path / "job")
    echoed = capfd.readouterr().err
    assert "[tf] parity: forward" in echoed
    assert "absl::InitializeLog" not in echoed and "oneDNN custom operations" not in echoed
    assert "oneDNN custom operations are on" in str(err.value)  # the tail of a failure keeps everything


def test_worker_exiting_nonzero_is_reported(tmp_path):
    py = fake_python(tmp_path, 'echo "CUDA out of memory" >&2; exit 3')
    with pytest.raises(WorkerError, match=r"PyTorch worker \(train\) exited with code 3(.|\n)*CUDA out of memory"):
        run_worker("torch", "train", {}, config=WorkerConfig(torch_python=py, quiet=True), job_dir=tmp_path / "j")


def test_hanging_worker_is_killed_at_the_timeout(tmp_path):
    py = fake_python(tmp_path, "sleep 30")
    with pytest.raises(WorkerError, match="did not finish within 1 s"):
        run_worker("torch", "info", {}, config=WorkerConfig(torch_python=py, quiet=True), timeout=1)


def test_missing_python_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="--tf-python"):
        run_worker("tf", "info", {}, config=WorkerConfig(tf_python=str(tmp_path / "nope"), quiet=True))


def test_unknown_framework_is_a_user_error():
    with pytest.raises(UserError, match="unknown framework 'jax'"):
        run_worker("jax", "info", {})


def test_keras_torch_worker_imports_neither_tensorflow_nor_our_torch_model(tmp_path):
    """The third arm's process: Keras on its torch backend, the seed's Keras code, no TF, no port."""
    info = run_worker("keras-torch", "info", {}, config=WorkerConfig(quiet=True), job_dir=tmp_path).result
    assert info["backend"] == "torch" and info["versions"]["keras"].startswith("3.")
    assert info["imported"] == {"tensorflow": False, "torch_impl.model": False}


BN_FLOAT64 = """
import os, sys
os.environ["KERAS_BACKEND"] = "torch"
import keras, numpy as np
from tf_impl import tape
keras.config.set_floatx("float64")
rng = np.random.default_rng(0)
x = rng.normal(size=(2, 8, 8, 16)) * 3 + 1
gamma, beta, mean, var = rng.normal(size=16), rng.normal(size=16), rng.normal(size=16), rng.uniform(0.5, 2, 16)
exact = (x - mean) / np.sqrt(var + 1.001e-5) * gamma + beta
def error():
    bn = keras.layers.BatchNormalization(epsilon=1.001e-5, dtype="float64")
    bn.build(x.shape)
    bn.set_weights([gamma, beta, mean, var])
    y = keras.ops.convert_to_numpy(bn(keras.ops.convert_to_tensor(x), training=False))
    return float(np.abs(y - exact).max() / np.abs(exact).max())
before = error()
changed = tape.exact_float64()
print(before, changed, error(), "tensorflow" in sys.modules)
"""


def test_keras_torch_float64_batch_norm():
    """Keras maps float64 to float32 in its type promotion on every backend but TF, so its
    BatchNormalization normalises a float64 model in float32 on torch (tf_impl.tape). If this
    starts failing on its first assertion, Keras changed: exact_float64 may no longer be needed."""
    out = subprocess.run([sys.executable, "-c", BN_FLOAT64], capture_output=True, text=True, timeout=300,
                         cwd=Path(bench.__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr[-2000:]
    before, changed, after, tf_imported = out.stdout.split()
    assert 1e-8 < float(before) < 1e-6  # float32 arithmetic (2^-24 = 6e-8 per operation)
    assert changed == "True" and float(after) < 1e-14 and tf_imported == "False"


def test_worker_user_error_comes_back_as_user_error(tmp_path):
    # A real torch worker, asked for a model that does not exist: exit 2 material, no traceback.
    with pytest.raises(UserError, match="unknown pooling 'max'"):
        run_worker("torch", "forward", {"pooling": "max"}, config=WorkerConfig(quiet=True), job_dir=tmp_path)


def test_tf_workers_get_onednn_kernels_unless_the_user_says_otherwise(monkeypatch):
    from bench.runner import worker_env

    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    assert worker_env(WorkerConfig())["TF_ENABLE_ONEDNN_OPTS"] == "1"
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    assert worker_env(WorkerConfig())["TF_ENABLE_ONEDNN_OPTS"] == "0"
    assert worker_env(WorkerConfig(env={"TF_ENABLE_ONEDNN_OPTS": "0"}))["TF_ENABLE_ONEDNN_OPTS"] == "0"


def test_tf_worker_records_its_onednn_setting(monkeypatch, tmp_path):
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    info = run_worker("tf", "info", {}, config=WorkerConfig(quiet=True), job_dir=tmp_path / "job").result
    assert info["onednn"] == "1"
