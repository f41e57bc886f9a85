"""Options shared by the commands: the worker options, the model options, ``positive_int``.

A library, not a command: the command modules (``bench.train``, ``bench.parity``, ...) and the
entry point ``bench.cli`` add these options to their parsers and read them back here, so no
module below the entry point imports ``bench.cli``.

Numpy-free at import, like the commands that import it: ``bench.runner`` (numpy) is imported
only when a worker configuration is built.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Callable, Sequence

from bench.executor import DEFAULT_RETRIES, EXECUTORS
from bench.spec import MODELS, POOLINGS, build_spec

if TYPE_CHECKING:
    from bench.runner import WorkerConfig


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, received {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, received {value}")
    return value


def csv_choices(choices: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    """An argparse type: a comma-separated, non-empty subset of ``choices``, in the order given."""
    def parse(text: str) -> tuple[str, ...]:
        values = tuple(v.strip() for v in text.split(",") if v.strip())
        bad = [v for v in values if v not in choices]
        if bad or not values:
            raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {', '.join(choices)}, "
                                             f"received {text!r}")
        return values
    return parse


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


def add_executor_options(parser: argparse.ArgumentParser) -> None:
    """--executor and the Ray options (beside the worker options: bench.options.add_worker_options)."""
    group = parser.add_argument_group("executor")
    group.add_argument("--executor", choices=EXECUTORS, default="local",
                       help="local: worker subprocesses here, one after the other (default); ray: every worker "
                            "job a Ray task (training cells side by side as the cluster's CPUs allow)")
    group.add_argument("--parallel", type=positive_int, default=None, metavar="N",
                       help="(local) training workers at a time, each with cores/N threads unless --threads says "
                            "(default 1; twinbench run: the profile's, quick 2); other jobs run one at a time")
    group.add_argument("--ray-address", default=None, metavar="ADDR",
                       help="(ray) join the running cluster at ADDR (e.g. 10.0.0.5:6379 or auto); "
                            "default: start a local one")
    group.add_argument("--ray-cpus", type=positive_int, default=None, metavar="N",
                       help="(ray) CPUs of the local cluster started without --ray-address (default: all cores)")
    group.add_argument("--ray-retries", type=int, default=DEFAULT_RETRIES, metavar="N",
                       help=f"(ray) attempts after the first when a task's worker or node dies (default {DEFAULT_RETRIES})")


def worker_config(args: argparse.Namespace) -> WorkerConfig:
    from bench.runner import WorkerConfig  # numpy: see the module docstring

    from bench import executor

    # A command with the executor options runs its jobs where they say (made once, kept on args).
    where = executor.from_args(args) if hasattr(args, "executor") else None
    return WorkerConfig(tf_python=args.tf_python, torch_python=args.torch_python,
                        threads=args.threads, quiet=args.quiet, executor=where)


def add_model_options(parser: argparse.ArgumentParser, *, input_size: int = 224, pooling: str = "avg7",
                      classes: int = 1000) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", default="resnet50", choices=sorted(MODELS), help="architecture (default resnet50)")
    group.add_argument("--classes", type=positive_int, default=classes, help=f"head size (default {classes})")
    group.add_argument("--input-size", type=positive_int, default=input_size, help=f"square input size (default {input_size})")
    group.add_argument("--pooling", default=pooling, choices=POOLINGS,
                       help="avg7: the seed's AveragePooling2D(7); global: any input size")


def model_args(args: argparse.Namespace) -> dict:
    """The model arguments a worker job carries (validated here, before any work starts)."""
    build_spec(args.model, args.classes, args.input_size, args.pooling)
    return {"model": args.model, "classes": args.classes, "input_size": args.input_size, "pooling": args.pooling}


def _worker_option_names() -> tuple[str, ...]:
    parser = argparse.ArgumentParser(add_help=False)
    add_worker_options(parser)
    return tuple(action.dest for action in parser._actions)


WORKER_OPTIONS = _worker_option_names()  # the dests add_worker_options adds, read from it
