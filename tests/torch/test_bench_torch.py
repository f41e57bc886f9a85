"""PyTorch benchmarks: a pytest-benchmark suite timing our training and inference step beside
torchvision's, and the measurement rules the torch side is responsible for.

    pytest --framework torch tests/torch/test_bench_torch.py --benchmark-save=torch
    pytest --framework torch tests/torch/test_bench_torch.py --benchmark-compare --benchmark-compare-fail=median:10%
"""

from __future__ import annotations

import pytest
import torch

from bench import measure as bm
from tests import bench_fixtures
from torch_impl import benchmark as tb

CPU = torch.device("cpu")


def small_row(**changes) -> dict:
    return bench_fixtures.small_row("torch", **changes)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: a fixed count for a regression gate, and immune to the 5-10x slowdown
    two OpenMP threads suffer here when other processes share the two cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def steps():
    """(model, mode) -> (step, sync, model, x), built on first use (the reference only when the
    slow set asks for it)."""
    class Steps(dict):
        def __missing__(self, key):
            model, mode = key
            row = small_row(model=model, mode=mode)
            net, _ = tb.build_model(row)
            net = net.to(memory_format=torch.channels_last)
            x, y = tb.synthetic_batch(row, CPU)
            self[key] = (tb.make_step(net, row, CPU, lambda: (x, y)), tb.make_sync(CPU), net, x)
            return self[key]
    return Steps()


# The suite times our model; the reference beside it is the slow set's (make test-slow).
@pytest.mark.parametrize("model", ["ours", pytest.param("reference", marks=pytest.mark.slow)])
@pytest.mark.parametrize("mode", ["train", "infer"])
def test_step_time(benchmark, steps, model, mode):
    """pytest-benchmark times one step per round; the target ends in torch's sync, so every
    clock read the fixture takes follows a sync."""
    step, sync, _, x = steps[(model, mode)]
    out = benchmark.pedantic(lambda: sync(step()) or step.__name__, rounds=bm.MIN_REPEATS, iterations=1,
                             warmup_rounds=1)
    benchmark.extra_info.update(batch=int(x.shape[0]), input_size=int(x.shape[-1]), framework="torch")
    assert out == mode


# ---- measurement rules ---------------------------------------------------------------------------
def test_every_clock_read_follows_torch_sync(steps, monkeypatch):
    calls = {"sync": 0, "clock": 0, "last": None}
    real = torch.cpu.synchronize

    def counting_sync(*args):
        calls["sync"] += 1
        calls["last"] = "sync"
        return real(*args)

    def clock():
        assert calls["last"] == "sync", "a clock read without a sync right before it"
        calls["clock"] += 1
        calls["last"] = "clock"
        return 0.001 * calls["clock"]

    monkeypatch.setattr(torch.cpu, "synchronize", counting_sync)
    step, _, _, _ = steps[("ours", "infer")]
    bm.time_steps(step, tb.make_sync(CPU), warmup=1, repeats=5, steps=1, batch=2, clock=clock)
    assert calls["clock"] == 3 + 2 * 5 and calls["sync"] >= calls["clock"]


def test_a_row_records_the_batch_it_fed_and_its_warmup_apart():
    row = small_row(mode="infer")
    out = tb.run_row(row)
    assert out["status"] == "ok" and out["batch_used"] == 2 == out["timing"]["batch"]
    assert out["timing"]["warmup_steps"] == 1 and len(out["timing"]["window_s"]) == 5
    assert out["images_per_s"] == pytest.approx(bm.throughput_stats(out["timing"]["window_s"], 2)["median"])
    assert out["memory"]["reset"] is True and out["memory"]["peak_bytes"] > 0
    assert out["threads"]["intra_op"] == torch.get_num_threads()


def test_out_of_memory_is_a_failed_row_at_the_requested_batch():
    batch = 2 ** 40  # far beyond any machine: the CPU allocator refuses at once
    out = tb.run_row(small_row(mode="infer", batch=batch))
    assert out["status"] == "failed" and out["oom"] is True and out["batch"] == batch
    assert f"out of memory at batch {batch}" in out["error"] and "never retries" in out["error"]
    assert tb.is_oom(torch.cuda.OutOfMemoryError("CUDA out of memory")) and not tb.is_oom(ValueError("x"))


def test_gpu_only_precisions_are_skipped_on_the_cpu_not_failed():
    out = tb.run_row(small_row(precision="fp16"))
    assert out["status"] == "skipped" and "needs a GPU" in out["error"]


def test_a_training_step_updates_the_weights_and_bf16_autocast_takes_effect(steps):
    step, _, net, x = steps[("ours", "train")]
    before = net.conv1.weight.detach().clone()
    loss = step()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert not torch.equal(before, net.conv1.weight)  # Adam stepped
    assert x.is_contiguous(memory_format=torch.channels_last)
    with tb.autocast("bf16", CPU):
        assert net.conv1(x).dtype == torch.bfloat16
    assert net.conv1.weight.dtype == torch.float32  # mixed precision keeps fp32 weights


def test_torchvision_flops_match_torchs_flop_counter():
    """bench.measure's analytic count of torchvision's resnet50 (v1.5: stride on the 3x3,
    padded stem pool) against torch.utils.flop_counter on the real module."""
    from torch.utils.flop_counter import FlopCounterMode

    net, _ = tb.build_model(small_row(model="reference", input_size=64, classes=1000))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net.eval()(torch.zeros(1, 3, 64, 64))
    assert counter.get_total_flops() == bm.reference_forward_flops("torchvision", 64, 1000)


def test_the_torchvision_copy_matches_torchvision():
    """What the GPU check uses where torchvision is missing: same parameters, same FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    real, _ = tb.build_model(small_row(model="reference", classes=1000))
    copy = tb.TorchvisionResNet50(1000)
    assert [p.shape for p in copy.parameters()] == [p.shape for p in real.parameters()]
    flops = []
    for net in (real, copy):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            net.eval()(torch.zeros(1, 3, 64, 64))
        flops.append(counter.get_total_flops())
    assert flops[0] == flops[1]


def test_peak_matmul_is_measured_per_dtype():
    peaks = tb.peak_flops(("fp32", "bf16", "tf32"), CPU, 128)
    assert set(peaks) == {"fp32", "bf16"}  # tf32 is a GPU mode
    assert all(v > 1e6 for v in peaks.values())
