"""Where one Keras-on-torch inference step spends its time (issue 16), and why: torch.profiler over
``model(x, training=False)`` without autograd, 224 px, batch 8, fp32, after two warm-up steps. Keras'
torch backend copies each NHWC input to NCHW (``permute(...).contiguous()``) before a convolution and
hands the output back as a permuted (non-contiguous) NHWC view; the script also times one of batch
norm's elementwise ops on such a view against a contiguous tensor (a suspicion from a loaded machine,
where it looked 15x slower; quiet, it is not the cost: see the last line of the output).

    .venv/bin/python reports/keras-torch/profile_infer.py   # writes profile_infer.txt beside it
"""

import os
import sys
import time
from pathlib import Path

os.environ["KERAS_BACKEND"] = "torch"
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from tf_impl.keras_tasks import build_bench_model  # noqa: E402


def per_call_ms(fn, n: int = 20) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e3


row = {"model": "ours", "classes": 1000, "input_size": 224, "pooling": "avg7", "precision": "fp32", "seed": 0}
model, _ = build_bench_model(row)
g = torch.Generator().manual_seed(0)
x = torch.rand(8, 224, 224, 3, generator=g) * 255
with torch.no_grad():
    for _ in range(2):
        model(x, training=False)
    start = time.perf_counter()
    model(x, training=False)
    step_s = time.perf_counter() - start
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model(x, training=False)
    # The stem's BN input as Keras hands it over: conv2d's NCHW output permuted to NHWC, not copied.
    nchw = torch.rand(8, 64, 112, 112, generator=g)
    view, dense, mean = nchw.permute(0, 2, 3, 1), nchw.permute(0, 2, 3, 1).contiguous(), torch.rand(64)
    view_ms, dense_ms = per_call_ms(lambda: view - mean), per_call_ms(lambda: dense - mean)
table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
text = (f"torch {torch.__version__}, threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.2f}; "
        f"one inference step (batch 8, 224 px, fp32): {step_s:.2f} s\n{table}\n"
        f"x - mean over 8x112x112x64 (the stem's BN): permuted view {view_ms:.2f} ms, contiguous {dense_ms:.2f} ms "
        f"({view_ms / dense_ms:.1f}x)\n")
Path(__file__).with_suffix(".txt").write_text(text)
print(text)
