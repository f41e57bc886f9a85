"""The ``twinbench`` command.

    twinbench --help
    twinbench info
    twinbench weights convert SRC DST
    twinbench run

Each subcommand lives beside its subject: COMMANDS maps a command name to the function that
registers its parser (``register(subparsers)``), imported when the parser is built. Handlers
return an exit code; a TwinbenchError becomes one line on stderr and its exit code
(2 bad input, 1 failed check), with no traceback. The options several commands share live in
``bench.options``; nothing but this entry point imports ``bench.cli``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable

from bench import __version__
from bench.errors import TwinbenchError, UserError
from bench.options import add_model_options, add_worker_options, model_args, worker_config

# Command name -> "module:function" registering its subparser. An explicit table.
COMMANDS: dict[str, str] = {
    "info": "bench.cli:register_info",
    "train": "bench.train:register",
    "weights": "bench.cli:register_weights",
    "run": "bench.run:register",
    "parity": "bench.parity:register",
    "bench": "bench.benchmark:register",
    "manifest": "bench.manifest:register",
    "data": "bench.datacheck:register",
    "report": "bench.report:register",
    "compare": "bench.compare:register",
    "history": "bench.history:register",
}


# ---- info ------------------------------------------------------------------------------------------
def register_info(sub) -> None:
    p = sub.add_parser("info", help="framework versions, devices, threads, CPU and GPU")
    p.add_argument("--json", metavar="OUT", help="also write the information as JSON")
    add_worker_options(p)
    p.set_defaults(func=cmd_info)


INFO_FORMAT = "twinbench.info"  # twinbench info --json
INFO_VERSION = 1


def cmd_info(args: argparse.Namespace) -> int:
    from bench import envelope
    from bench.runner import run_worker

    config = worker_config(args)
    config.quiet = True
    workers = {fw: run_worker(fw, "info", {}, config=config).result for fw in ("tf", "torch")}
    info = envelope.record(INFO_FORMAT, INFO_VERSION, workers,
                           versions={fw: w.get("versions", {}) for fw, w in workers.items()})
    cpu = info["machine"]["cpu"]
    print(f"twinbench {__version__}  python {info['machine']['python']}  commit {(info['commit']['id'] or '-')[:10]}")
    print(f"cpu        {cpu['model']} ({cpu['cores']} cores; {' '.join(cpu['flags']) or 'no AVX-512/AMX'})")
    for fw in ("tf", "torch"):
        i = info[fw]
        versions = " ".join(f"{k} {v}" for k, v in i["versions"].items() if v)
        print(f"{fw:<10} {versions}; threads intra {i['threads']['intra_op']} inter {i['threads']['inter_op']}; "
              f"gpus: {', '.join(i['gpus']) or 'none'}")
    if args.json:
        envelope.write(args.json, info)
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
