"""Where one Keras-on-torch training step spends its time (issue 16): torch.profiler over
``train_on_batch`` of the seed's compile, 224 px, batch 8, fp32, after two warm-up steps.

    .venv/bin/python reports/keras-torch/profile_step.py   # writes profile_step.txt beside it
"""

import os
import sys
from pathlib import Path

os.environ["KERAS_BACKEND"] = "torch"
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import keras  # noqa: E402
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from tf_impl.keras_tasks import build_bench_model  # noqa: E402

row = {"model": "ours", "classes": 1000, "input_size": 224, "pooling": "avg7", "precision": "fp32", "seed": 0}
model, _ = build_bench_model(row)
model.compile(optimizer=keras.optimizers.Adam(), loss="sparse_categorical_crossentropy")
g = torch.Generator().manual_seed(0)
x, y = torch.rand(8, 224, 224, 3, generator=g) * 255, torch.randint(0, 1000, (8,), generator=g)
for _ in range(2):
    model.train_on_batch(x, y)
with profile(activities=[ProfilerActivity.CPU]) as prof:
    model.train_on_batch(x, y)
table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20)
Path(__file__).with_suffix(".txt").write_text(f"torch {torch.__version__}, keras {keras.__version__}, "
                                              f"threads {torch.get_num_threads()}\n{table}\n")
print(table)
