"""The ``twinbench`` command.

    twinbench --help
    twinbench info
    twinbench weights convert SRC DST
    twinbench run

Each subcommand lives beside its subject: COMMANDS maps a command name to the function that
registers its parser (``register(subparsers)``), imported when the parser is built. Handlers
return an exit code; a TwinbenchError becomes one line on stderr and its exit code
(2 bad input, 1 failed check), with no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Callable

from bench import __version__
from bench.errors import TwinbenchError, UserError
from bench.runner import WorkerConfig

# Command name -> "module:function" registering its subparser. An explicit table.
COMMANDS: dict[str, str] = {
    "info": "bench.cli:register_info",
    "train": "bench.train:register",
    "weights": "bench.cli:register_weights",
    "run": "bench.pipeline:register",
    "parity": "bench.parity:register",
    "bench": "bench.benchmark:register",
    "manifest": "bench.manifest:register",
    "data": "bench.datacheck:register",
    "report": "bench.report:register",
    "compare": "bench.compare:register",
    "history": "bench.history:register",
}


def add_worker_options(parser: argparse.ArgumentParser) -> None:
    """Options every command that starts framework workers accepts."""
    group = parser.add_argument_group("workers")
    group.add_argument("--tf-python", default=os.environ.get("TWINBENCH_TF_PYTHON", sys.executable),
                       help="Python that runs the TensorFlow worker (default: this one)")
    group.add_argument("--torch-python", default=os.environ.get("TWINBENCH_TORCH_PYTHON", sys.executable),
                       help="Python that runs the PyTorch worker (default: this one)")
    group.add_argument("--threads", type=positive_int, default=None,
                       help="intra-op threads for both frameworks (default: all cores)")
    group.add_argument("--quiet", action="store_true", help="no per-step progress (for CI)")


def worker_config(args: argparse.Namespace) -> WorkerConfig:
    return WorkerConfig(tf_python=args.tf_python, torch_python=args.torch_python,
                        threads=args.threads, quiet=args.quiet)


def add_model_options(parser: argparse.ArgumentParser, *, input_size: int = 224, pooling: str = "avg7",
                      classes: int = 1000) -> None:
    from bench.spec import MODELS, POOLINGS

    group = parser.add_argument_group("model")
    group.add_argument("--model", default="resnet50", choices=sorted(MODELS), help="architecture (default resnet50)")
    group.add_argument("--classes", type=positive_int, default=classes, help=f"head size (default {classes})")
    group.add_argument("--input-size", type=positive_int, default=input_size, help=f"square input size (default {input_size})")
    group.add_argument("--pooling", default=pooling, choices=POOLINGS,
                       help="avg7: the seed's AveragePooling2D(7); global: any input size")


def model_args(args: argparse.Namespace) -> dict:
    """The model arguments a worker job carries (validated here, before any work starts)."""
    from bench.spec import build_spec

    build_spec(args.model, args.classes, args.input_size, args.pooling)
    return {"model": args.model, "classes": args.classes, "input_size": args.input_size, "pooling": args.pooling}


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, received {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, received {value}")
    return value


# ---- info ------------------------------------------------------------------------------------------
def register_info(sub) -> None:
    p = sub.add_parser("info", help="framework versions, devices, threads, CPU and GPU")
    p.add_argument("--json", metavar="OUT", help="also write the information as JSON")
    add_worker_options(p)
    p.set_defaults(func=cmd_info)


def cmd_info(args: argparse.Namespace) -> int:
    import json

    from bench import atomic, envinfo
    from bench.runner import run_worker

    config = worker_config(args)
    config.quiet = True
    info = {"twinbench": __version__, "machine": envinfo.machine_info(), "commit": envinfo.commit_info()}
    for fw in ("tf", "torch"):
        info[fw] = run_worker(fw, "info", {}, config=config).result
    cpu = info["machine"]["cpu"]
    print(f"twinbench {__version__}  python {info['machine']['python']}  commit {(info['commit']['id'] or '-')[:10]}")
    print(f"cpu        {cpu['model']} ({cpu['cores']} cores; {' '.join(cpu['flags']) or 'no AVX-512/AMX'})")
    for fw in ("tf", "torch"):
        i = info[fw]
        versions = " ".join(f"{k} {v}" for k, v in i["versions"].items() if v)
        print(f"{fw:<10} {versions}; threads intra {i['threads']['intra_op']} inter {i['threads']['inter_op']}; "
              f"gpus: {', '.join(i['gpus']) or 'none'}")
    if args.json:
        atomic.write_json(args.json, info)
        print(f"wrote {args.json}")
    return 0


# ---- weights ---------------------------------------------------------------------------------------
def register_weights(sub) -> None:
    p = sub.add_parser("weights", help="convert weight files (legacy .h5, .npz bundle, .pt, .weights.h5)")
    wsub = p.add_subparsers(dest="weights_command", required=True, metavar="{convert}")
    c = wsub.add_parser("convert", help="convert SRC to DST; formats from the file names",
                        description="Formats: .npz twinbench bundle; .h5 legacy Keras (keras-applications "
                                    "names, e.g. resnet50_weights_tf_dim_ordering_tf_kernels.h5); "
                                    ".weights.h5 Keras 3; .pt/.pth PyTorch state dict of torch_impl.")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    add_model_options(c)
    add_worker_options(c)
    c.set_defaults(func=cmd_weights_convert)


def cmd_weights_convert(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from bench.runner import run_worker
    from bench.weights import weight_format

    src, dst = Path(args.src), Path(args.dst)
    if not src.is_file():
        raise UserError(f"{src}: no such file")
    if dst.exists() and not args.force:
        raise UserError(f"{dst} exists: pass --force to overwrite it")
    margs = model_args(args)
    src_fmt, dst_fmt = weight_format(src), weight_format(dst, must_exist=False)
    # .pt is read and written by the torch worker, .weights.h5 by the TF worker; a conversion
    # between the two goes through a bundle.
    readers = {"torch_pt": "torch", "keras_h5": "tf"}
    writers = {"torch_pt": "torch", "keras_h5": "tf"}
    config = worker_config(args)
    read_fw, write_fw = readers.get(src_fmt), writers.get(dst_fmt)
    if read_fw and write_fw and read_fw != write_fw:
        with tempfile.TemporaryDirectory() as tmp:
            mid = str(Path(tmp) / "bundle.npz")
            run_worker(read_fw, "convert", {**margs, "src": str(src), "dst": mid}, config=config)
            out = run_worker(write_fw, "convert", {**margs, "src": mid, "dst": str(dst)}, config=config)
    else:
        out = run_worker(read_fw or write_fw or "torch", "convert", {**margs, "src": str(src), "dst": str(dst)},
                         config=config)
    print(f"wrote {dst} ({out.result['layers']} layers, {out.result['tensors']} tensors, from {src})")
    return 0


# ---- main ------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="twinbench",
        description="Compare a Keras ResNet-50 and its PyTorch port: parity, training, speed, memory.")
    parser.add_argument("--version", action="version", version=f"twinbench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for target in COMMANDS.values():
        module, _, name = target.partition(":")
        register: Callable = getattr(importlib.import_module(module), name)
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TwinbenchError as exc:
        print(f"twinbench: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("twinbench: interrupted; results written so far are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
