"""PyTorch worker: ``python -m torch_impl.worker JOB.json``.

torch is imported first and tensorflow never. Tasks are looked up in TASKS, an explicit table;
each lives beside its subject. Mirror of ``tf_impl.worker``.
"""

from __future__ import annotations

import sys

import torch  # noqa: E402  (first, before anything that might pull in another framework)

from bench.workerproto import serve, threads_from_env  # noqa: E402

TASKS = {
    "info": "torch_impl.worker:info",
    "train": "torch_impl.train:train",
    "forward": "torch_impl.worker:forward",
    "export": "torch_impl.worker:export",
    "convert": "torch_impl.worker:convert",
    "bench_row": "torch_impl.benchmark:bench_row",
    "residual_ratios": "torch_impl.residuals:residual_ratios",
    "parity_probe": "torch_impl.probes:probe",
    "parity_calibrate": "torch_impl.probes:calibrate",
    "parity_inputs": "torch_impl.probes:load_inputs",
    "data_check": "torch_impl.data:data_check",
    "pipeline_speed": "torch_impl.data:pipeline_speed",
}

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def setup_threads() -> None:
    threads = threads_from_env()
    if threads:
        torch.set_num_threads(threads)
        torch.set_num_interop_threads(min(2, threads))


def info(args, inputs, job_dir):
    import torchvision

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {
        "framework": "torch",
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__,
                     "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if gpus else None},
        "devices": ["cpu"] + [f"cuda:{i}" for i in range(len(gpus))],
        "gpus": gpus,
        "threads": {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()},
        "onednn": torch.backends.mkldnn.is_available(),
    }, None


def alignment(args):
    from torch_impl.model import Alignment

    return Alignment(**args.get("align", {}))


def _model_and_bundle(args):
    """Build the model named by ``args`` and load ``args['weights']`` (a bundle or other file)."""
    from bench.spec import spec_from_args
    from torch_impl import model as tm
    from torch_impl import weights as tw

    spec = spec_from_args(args)
    torch.manual_seed(int(args.get("seed", 0)))
    model = tm.build(spec, alignment(args)).to(DTYPES[args.get("dtype", "float32")])
    tw.load_into(model, spec, args.get("weights"), skip_head=bool(args.get("skip_head")))
    return spec, model


@torch.no_grad()
def forward(args, inputs, job_dir):
    """Inference forward pass: logits, probabilities, counts, names and probe-point shapes."""
    from torch_impl import model as tm

    spec, model = _model_and_bundle(args)
    model.eval()
    canonical = {tm.module_name(layer): layer.name for layer in spec.layers()}
    x = torch.from_numpy(inputs["x"]).to(DTYPES[args.get("dtype", "float32")]).permute(0, 3, 1, 2)  # NHWC -> NCHW
    shapes: dict[str, list[int]] = {}
    h = model.forward_stem(x)
    shapes["stem"] = [h.shape[2], h.shape[3], h.shape[1]]
    for block_id, block in model.blocks.items():
        h = block(h)
        shapes[block_id] = [h.shape[2], h.shape[3], h.shape[1]]
    features = model.pool(h)
    shapes["pool"] = [features.shape[1]]
    logits = model.forward_head(features)
    probs = torch.softmax(logits, dim=-1)
    shapes["probs"] = [probs.shape[1]]
    result = {
        "params": tm.param_count(model),
        # Every weighted module, in model order, named back through the one mapping.
        "weighted_layers": [canonical.get(path, f"<unmapped {path}>") for path, m in model.named_modules()
                            if isinstance(m, (torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.Linear))],
        "shapes": shapes,
    }
    return result, {"logits": logits.numpy(), "probs": probs.numpy(), "features": features.numpy()}


def export(args, inputs, job_dir):
    """Build (torch's own initialisers, or ``weights``) and write the model's bundle to ``out``."""
    from torch_impl import weights as tw

    spec, model = _model_and_bundle(args)
    tw.to_bundle(model, spec, source=args.get("weights") or "torch init").save(args["out"])
    return {"out": args["out"]}, None


def convert(args, inputs, job_dir):
    """Any weight file this side reads -> any it writes (.npz bundle, legacy .h5, .pt)."""
    from bench.spec import spec_from_args
    from bench.weights import convert_file
    from torch_impl import weights as tw

    return convert_file(args["src"], args["dst"], spec_from_args(args), load_file=tw.load_file,
                        own_format="torch_pt", save_own=tw.save_file, worker="torch"), None


if __name__ == "__main__":
    setup_threads()
    sys.exit(serve(TASKS))
