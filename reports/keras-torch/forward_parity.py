"""Forward parity of the keras-torch arm (issue 16), float32 and float64, at the seed's 224 px:
one random bundle (head scaled so the softmax is not saturated, as tests/test_models.py does), one
batch of raw pixels, the forward task of all three workers; max |a - b| / max |ref| per output.

    .venv/bin/python reports/keras-torch/forward_parity.py   # writes forward_parity.json beside it
"""

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import atomic, envinfo  # noqa: E402
from bench.runner import WorkerConfig, run_worker  # noqa: E402
from bench.spec import build_spec  # noqa: E402
from bench.weights import random_bundle  # noqa: E402

ARMS = ("tf", "torch", "keras-torch")


def max_rel(ref: np.ndarray, other: np.ndarray) -> float:
    return float(np.abs(ref.astype(np.float64) - other).max() / np.abs(ref).max())


def main() -> None:
    spec, quiet = build_spec(), WorkerConfig(quiet=True)
    out = {"machine": envinfo.machine_info(), "commit": envinfo.commit_info(), "input": "2 x 224 x 224 x 3, "
           "uniform 0..255, seed 7", "weights": "bench.weights.random_bundle(seed=7), fc1000 scaled to logit std 4",
           "metric": "max |a - b| / max |ref| (ref: the first of the pair)", "pairs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bundle.npz"
        bundle = random_bundle(spec, seed=7)
        x = np.random.default_rng(7).uniform(0, 255, (2, 224, 224, 3)).astype("float32")
        bundle.save(path)
        probe = run_worker("torch", "forward", {"weights": str(path)}, arrays={"x": x}, config=quiet)
        bundle.arrays["fc1000/kernel"] *= np.float32(4.0 / probe.arrays["logits"].std())
        bundle.save(path)
        for dtype in ("float32", "float64"):
            res = {fw: run_worker(fw, "forward", {"weights": str(path), "dtype": dtype},
                                  arrays={"x": x.astype(dtype)}, config=quiet).arrays for fw in ARMS}
            for ref, other in (("tf", "keras-torch"), ("torch", "keras-torch"), ("tf", "torch")):
                out["pairs"][f"{dtype} {ref} vs {other}"] = {k: max_rel(res[ref][k], res[other][k])
                                                            for k in ("features", "logits", "probs")}
    target = Path(__file__).with_suffix(".json")
    atomic.write_json(target, out)
    for name, errors in out["pairs"].items():
        print(f"{name:<32} " + "  ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
