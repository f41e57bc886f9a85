"""``twinbench manifest``: write the shared data split of an image folder, or verify one.

    twinbench manifest DATA_DIR -o MANIFEST [--validation-split 0.2] [--seed 123]
    twinbench manifest verify MANIFEST [--data-root DIR]

The listing, the split and the manifest itself are in ``bench.dataset`` (the library the input
pipelines read); the format is described in docs/records.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import atomic
from bench.dataset import DEFAULT_SEED, DEFAULT_VALIDATION_SPLIT, build_manifest, load_manifest, verify_files
from bench.errors import CheckFailed, UserError


# ---- the command -----------------------------------------------------------------------------------
def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, received {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1 (exclusive), received {value:g}")
    return value


def register(sub) -> None:
    p = sub.add_parser(
        "manifest", help="write the shared data split of an image folder, or verify one",
        usage="twinbench manifest DATA_DIR -o MANIFEST [--validation-split F] [--seed N] [--force]\n"
              "       twinbench manifest verify MANIFEST [--data-root DIR] [--level hash|size]",
        description="Lists DATA_DIR (one subfolder per class) exactly as Keras' image_dataset_from_directory "
                    "does, splits it as validation_split/seed do there, and pins every file by size and sha256. "
                    "'verify' reports files missing, changed or added since (exit 1), or exits 0 when intact. "
                    "(To list a folder named 'verify', write ./verify.)")
    p.add_argument("target", metavar="DATA_DIR", help="the image folder, or the word 'verify'")
    p.add_argument("verify_manifest", nargs="?", metavar="MANIFEST", help="(verify) the manifest to check")
    p.add_argument("-o", "--output", metavar="MANIFEST", help="where to write the manifest (.json)")
    p.add_argument("--validation-split", type=_fraction, default=DEFAULT_VALIDATION_SPLIT,
                   help=f"fraction for validation (default {DEFAULT_VALIDATION_SPLIT}, the seed's)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"split seed (default {DEFAULT_SEED}, the seed's)")
    p.add_argument("--force", action="store_true", help="overwrite MANIFEST if it exists with other contents")
    p.add_argument("--data-root", metavar="DIR", help="(verify) where the images are now, if they moved")
    p.add_argument("--level", choices=("hash", "size"), default="hash", help="(verify) sha256 (default) or sizes only")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_manifest)


def cmd_manifest(args: argparse.Namespace) -> int:
    if args.target == "verify":
        if args.verify_manifest is None:
            raise UserError("'twinbench manifest verify' needs the MANIFEST to check "
                            "(to list a folder named 'verify', write ./verify)")
        if args.output:
            raise UserError("'twinbench manifest verify' writes nothing: drop -o/--output")
        return cmd_verify(args)
    if args.verify_manifest is not None:
        raise UserError(f"unexpected argument {args.verify_manifest!r}: write 'twinbench manifest DATA_DIR -o MANIFEST'")
    if not args.output:
        raise UserError("missing -o MANIFEST: where to write the manifest, e.g. -o data/manifest.json")
    if args.data_root:
        raise UserError("--data-root is for 'twinbench manifest verify'; DATA_DIR is the folder to list")
    manifest = build_manifest(args.target, validation_split=args.validation_split, seed=args.seed, quiet=args.quiet)
    out = Path(args.output)
    text = manifest.to_text(out)
    if out.exists():
        if out.is_dir():
            raise UserError(f"{out} is a folder: pass a file name for the manifest, e.g. {out / 'manifest.json'}")
        if out.read_bytes() == text.encode("utf-8"):
            print(f"{out} is up to date: {manifest.describe()}")
            return 0
        if not args.force:
            raise UserError(f"{out} exists with other contents: pass --force to overwrite it")
    atomic.write_text(out, text)
    for name in manifest.empty_classes():
        print(f"twinbench: note: class folder {name!r} has no images; it stays a class (label "
              f"{manifest.class_names.index(name)}) with no files, as Keras keeps it", file=sys.stderr)
    print(f"wrote {out}: {manifest.describe()}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    manifest = load_manifest(args.verify_manifest, data_root=args.data_root, verify="none")
    report = verify_files(manifest, level=args.level, quiet=args.quiet)
    if report.ok:
        print(f"{args.verify_manifest}: intact: {len(manifest.files)} files in {manifest.root} "
              f"({'sha256' if args.level == 'hash' else 'sizes'} checked); fingerprint {manifest.short_fingerprint}")
        return 0
    if report.classes_now != report.classes_before:
        print(f"classes  now {report.classes_now}, manifest {report.classes_before}")
    for path, what in report.changed:
        print(f"changed  {path}  ({what})")
    for path in report.missing:
        print(f"missing  {path}")
    for path in report.added:
        print(f"added    {path}")
    raise CheckFailed(f"{args.verify_manifest}: {manifest.root} no longer matches it: {report.summary()}; "
                      f"rebuild it with 'twinbench manifest {manifest.root} -o {args.verify_manifest} --force'")
