"""TensorFlow benchmarks: a pytest-benchmark suite timing our training and inference step beside
keras.applications' ResNet50, and the measurement rules the TF side is responsible for.

    pytest --framework tf tests/tf/test_bench_tf.py --benchmark-save=tf
    pytest --framework tf tests/tf/test_bench_tf.py --benchmark-compare --benchmark-compare-fail=median:10%
"""

from __future__ import annotations

import keras
import pytest
import tensorflow as tf

from bench import measure as bm
from tests import bench_fixtures
from tf_impl import benchmark as tb

CPU = "/CPU:0"


def small_row(**changes) -> dict:
    return bench_fixtures.small_row("tf", **changes)


@pytest.fixture(scope="module")
def steps():
    """(model, mode) -> (step, model, x), each model built once and each step traced once, on
    first use (the reference only when the slow set asks for it)."""
    built: dict = {}

    class Steps(dict):
        def __missing__(self, key):
            model, mode = key
            if model not in built:
                built[model] = tb.build_model(small_row(model=model))[0]
            row = small_row(model=model, mode=mode)
            x, y = tb.synthetic_batch(row, CPU)
            self[key] = (tb.make_step(built[model], row, CPU, lambda: (x, y)), built[model], x)
            return self[key]
    return Steps()


# The suite times our model; the reference beside it is the slow set's (make test-slow).
@pytest.mark.parametrize("model", ["ours", pytest.param("reference", marks=pytest.mark.slow)])
@pytest.mark.parametrize("mode", ["train", "infer"])
def test_step_time(benchmark, steps, model, mode):
    """pytest-benchmark times one step per round; the target ends in TF's device sync, so every
    clock read the fixture takes follows a sync. Warm-up rounds absorb the tf.function trace."""
    step, _, x = steps[(model, mode)]
    sync = tb.make_sync(CPU)
    out = benchmark.pedantic(lambda: sync(step()) or mode, rounds=bm.MIN_REPEATS, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(batch=int(x.shape[0]), input_size=int(x.shape[1]), framework="tf")
    assert out == mode


# ---- measurement rules ---------------------------------------------------------------------------
def test_every_clock_read_follows_tfs_device_sync(steps, monkeypatch):
    calls = {"sync": 0, "clock": 0, "last": None}
    real = tf.test.experimental.sync_devices

    def counting_sync():
        calls["sync"] += 1
        calls["last"] = "sync"
        return real()

    def clock():
        assert calls["last"] == "sync", "a clock read without a sync right before it"
        calls["clock"] += 1
        calls["last"] = "clock"
        return 0.001 * calls["clock"]

    monkeypatch.setattr(tf.test.experimental, "sync_devices", counting_sync)
    step, _, _ = steps[("ours", "infer")]
    bm.time_steps(step, tb.make_sync(CPU), warmup=1, repeats=5, steps=1, batch=2, clock=clock)
    assert calls["clock"] == 3 + 2 * 5 and calls["sync"] >= calls["clock"]


def test_a_row_records_the_batch_it_fed_and_its_warmup_apart():
    out = tb.run_row(small_row(mode="infer"))
    assert out["status"] == "ok" and out["batch_used"] == 2 == out["timing"]["batch"]
    assert out["model_label"] == "ours" and out["compile_label"] == "tf.function"
    assert out["timing"]["warmup_steps"] == 1 and len(out["timing"]["window_s"]) == 5
    # The first step traces the tf.function: it is reported apart and costs more than a window.
    assert out["timing"]["first_step_s"] > min(out["timing"]["window_s"])
    assert out["memory"]["reset"] is True and out["memory"]["peak_bytes"] > 0


@pytest.mark.slow  # TF's CPU allocator retries for 10 s before it reports the OOM
def test_out_of_memory_is_a_failed_row_at_the_requested_batch():
    batch = 2 ** 40
    out = tb.run_row(small_row(mode="infer", batch=batch))
    assert out["status"] == "failed" and out["oom"] is True and out["batch"] == batch
    assert f"out of memory at batch {batch}" in out["error"] and "never retries" in out["error"]


def test_resource_exhausted_is_out_of_memory():
    assert tb.is_oom(tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor"))
    assert not tb.is_oom(tf.errors.InvalidArgumentError(None, None, "bad shape"))


def test_gpu_only_precisions_and_nchw_are_skipped_on_the_cpu():
    assert "needs a GPU" in tb.run_row(small_row(precision="tf32"))["error"]
    assert tb.run_row(small_row(layout="nchw"))["status"] == "skipped"


def test_mixed_bfloat16_builds_bf16_compute_with_fp32_variables_and_restores_the_policy():
    net, _ = tb.build_model(small_row(precision="bf16"))
    conv = net.get_layer("conv1")
    assert conv.compute_dtype == "bfloat16" and conv.variable_dtype == "float32"
    assert net.output.dtype == "float32"  # our softmax head stays fp32, as Keras' guide advises
    assert keras.config.dtype_policy().name == "float32"


def test_a_training_step_updates_the_weights(steps):
    step, net, _ = steps[("ours", "train")]
    before = net.get_layer("conv1").kernel.numpy().copy()
    loss = step()
    assert bool(tf.math.is_finite(loss))
    assert not (net.get_layer("conv1").kernel.numpy() == before).all()


def _layer_flops(model: keras.Model) -> int:
    """2 x MACs of every Conv2D and Dense, read from the built Keras model's own shapes."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape
            _, h, w, _ = layer.output.shape
            total += 2 * h * w * kh * kw * cin * cout
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * layer.kernel.shape[0] * layer.kernel.shape[1]
    return total


def test_keras_applications_flops_match_its_layers():
    """bench.measure's analytic count of keras.applications' ResNet50 (v1, padded stem pool)
    and bench.spec's count of ours, against the layers of the built models."""
    ref = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classes=1000)
    assert _layer_flops(ref) == bm.reference_forward_flops("keras", 64, 1000)
    ours, _ = tb.build_model(small_row(input_size=64, classes=1000))
    assert _layer_flops(ours) == bm.forward_flops("tf", "ours", 64, 1000, "global")


def test_peak_matmul_is_measured_per_dtype():
    peaks = tb.peak_flops(("fp32", "bf16", "fp16"), CPU, 128)
    assert set(peaks) == {"fp32", "bf16"}
    assert all(v > 1e6 for v in peaks.values())
