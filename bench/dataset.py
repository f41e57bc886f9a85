"""The shared data split, a library: the Keras listing and split, the manifest (build, read,
verify) and the input-pipeline options both frameworks' pipelines take. ``bench.manifest`` is the
``twinbench manifest`` command; the manifest format and the listing rules: docs/records.md."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from bench import atomic
from bench.errors import CheckFailed, UserError
from bench.orders import MAX_SEED, ORDERS

FORMAT = "twinbench-manifest"
VERSION = 1
# keras/src/utils/image_dataset_utils.py ALLOWLIST_FORMATS, matched case-insensitively.
ALLOWLIST_FORMATS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
SPLITS = ("training", "validation")  # Keras' subset names
SPLIT_ALIASES = {"train": "training", "val": "validation", "valid": "validation"}
ALGORITHM = ("keras-3 image_dataset_from_directory: class folders = sorted(os.listdir(root)) minus "
             "dot-folders; per class sorted(os.walk) by folder, sorted file names, extensions "
             f"{' '.join(ALLOWLIST_FORMATS)} (any case); paths and labels shuffled by "
             "numpy.random.RandomState(seed).shuffle; n_val = int(validation_split * N); "
             "training = first N - n_val, validation = last n_val")
DEFAULT_VALIDATION_SPLIT = 0.2  # the seed's image_dataset_from_directory(validation_split=0.2, ...)
DEFAULT_SEED = 123  # ... seed=123
VERIFY_LEVELS = ("hash", "size", "none")

# What both pipelines decode to identical pixels (tf.io.decode_image also takes WebP and JPEG XL;
# twinbench refuses them rather than compare two different decoders).
MAGIC = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
         (b"BM", "BMP"))
OTHER_MAGIC = ((b"RIFF", "WebP"), (b"\xff\x0a", "JPEG XL"), (b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
               (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))
TF_BMP_BITS = (8, 24, 32)  # TF's BMP decoder rejects other depths ("Number of channels inherent ...")

# Keras' ResNet50 preprocess_input (imagenet_utils, mode "caffe"): RGB -> BGR, minus these means.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
DECODERS = ("accurate", "seed")
RESIZES = ("bilinear",)
PREPROCESSINGS = ("none", "caffe")


# ---- pipeline options ------------------------------------------------------------------------------
@dataclass(frozen=True)
class PipelineOptions:
    """Input-pipeline options shared by ``tf_impl.data`` and ``torch_impl.data``, chosen once
    (defaults: the seed's). What each field means on each side: docs/records.md."""

    image_size: int = 224
    batch_size: int = 8
    decoder: str = "accurate"
    resize: str = "bilinear"
    preprocessing: str = "none"
    order: str = "native"
    shuffle_buffer: int = 1000
    seed: int = 123
    workers: int | None = None

    def __post_init__(self) -> None:
        for name, value, choices in (("decoder", self.decoder, DECODERS), ("resize", self.resize, RESIZES),
                                     ("preprocessing", self.preprocessing, PREPROCESSINGS),
                                     ("order", self.order, ORDERS)):
            if value not in choices:
                raise UserError(f"unknown {name} {value!r}: choose one of {', '.join(choices)}")
        for name in ("image_size", "batch_size", "shuffle_buffer"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"{name} must be a positive integer, received {value!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise UserError(f"seed must be an integer >= 0, received {self.seed!r}")
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 0):
            raise UserError(f"workers must be 0 or more, received {self.workers!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PipelineOptions":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"unknown pipeline option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**data)

    def replace(self, **changes: Any) -> "PipelineOptions":
        return dataclasses.replace(self, **changes)


# ---- the Keras listing -----------------------------------------------------------------------------
def list_classes(data_dir: str) -> list[str]:
    """Class folders as Keras lists them: sorted names, folders only (links followed), no dot-folders."""
    try:
        names = sorted(os.listdir(data_dir))
    except OSError as exc:
        raise UserError(f"{data_dir}: cannot list it ({exc.strerror}): check the path and its permissions") from None
    return [n for n in names if os.path.isdir(os.path.join(data_dir, n)) and not n.startswith(".")]


def iter_valid_files(directory: str) -> Iterable[tuple[str, str]]:
    """Keras' ``iter_valid_files``: os.walk (links not followed), folders sorted by full path,
    file names sorted, allow-listed extensions in any case. Hidden files and files inside
    dot-folders below a class folder are listed too, as Keras lists them."""
    for root, _, files in sorted(os.walk(directory), key=lambda x: x[0]):
        for fname in sorted(files):
            if fname.lower().endswith(ALLOWLIST_FORMATS):
                yield root, fname


def index_directory(data_dir: str) -> tuple[list[str], np.ndarray, list[str]]:
    """Relative paths (``class/…``), int32 labels and class names, before shuffling (Keras order)."""
    class_names = list_classes(data_dir)
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(class_names):
        directory = os.path.join(data_dir, name)
        for root, fname in iter_valid_files(directory):
            paths.append(os.path.join(name, os.path.relpath(os.path.join(root, fname), directory)))
            labels.append(label)
    return paths, np.asarray(labels, dtype=np.int32), class_names


def keras_split(paths: list[str], labels: np.ndarray, validation_split: float,
                seed: int) -> tuple[list[str], np.ndarray, int]:
    """Keras' global shuffle (paths and labels with two RandomStates seeded alike) and the
    number of validation files; training = the first N - n_val, validation = the last n_val."""
    paths = list(paths)
    labels = np.array(labels, dtype=np.int32)
    np.random.RandomState(seed).shuffle(paths)
    np.random.RandomState(seed).shuffle(labels)
    return paths, labels, int(validation_split * len(paths))


def to_posix(path: str) -> str:
    return path.replace(os.sep, "/") if os.sep != "/" else path


# ---- image checks ----------------------------------------------------------------------------------
def sniff_format(data: bytes) -> str | None:
    for magic, name in MAGIC:
        if data.startswith(magic):
            return name
    return None


def image_problem(data: bytes) -> str | None:
    """Why ``data`` is not an image both pipelines decode identically, or None when it is one.

    The checks follow what ``tf.io.decode_image`` accepts (a truncated or corrupt file fails
    there too, mid-training): decoding with PIL here catches it before any training starts.
    """
    if not data:
        return "is empty (0 bytes)"
    fmt = sniff_format(data)
    if fmt is None:
        for magic, name in OTHER_MAGIC:
            if data.startswith(magic) and (name != "WebP" or data[8:12] == b"WEBP"):
                return f"is a {name} image; twinbench reads JPEG, PNG, GIF and BMP content (convert it to PNG)"
        head = data[:64]
        if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
            return "is a text file, not an image"
        return "is not a JPEG, PNG, GIF or BMP image"
    if fmt == "BMP" and len(data) >= 30:
        header_size = struct.unpack_from("<I", data, 14)[0]
        bits = struct.unpack_from("<H", data, 24 if header_size == 12 else 28)[0]
        if bits not in TF_BMP_BITS:
            return (f"is a {bits}-bit BMP, which TensorFlow (and so Keras) cannot decode; "
                    "convert it to PNG")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # the first frame, as Keras (expand_animations=False)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        reason = str(exc).split("\n")[0] or type(exc).__name__
        if "truncated" in reason:
            return f"is truncated ({reason})"
        return f"is corrupt: PIL cannot decode it ({reason})"
    return None


# ---- the manifest ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ManifestEntry:
    path: str  # relative to the data root, "/"-separated
    label: int
    split: str  # "training" | "validation"
    size: int  # bytes
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "label": self.label, "split": self.split, "size": self.size,
                "sha256": self.sha256}


class Manifest:
    """A data split: the data root, class names, split parameters and the file records."""

    def __init__(self, *, root: str | os.PathLike, class_names: Sequence[str], validation_split: float,
                 seed: int, files: Sequence[ManifestEntry], source: Path | None = None):
        self.root = Path(root)
        self.class_names = list(class_names)
        self.validation_split = float(validation_split)
        self.seed = int(seed)
        self.files = list(files)
        self.source = source  # the manifest file it was read from, if any
        self._by_split = {s: [e for e in self.files if e.split == s] for s in SPLITS}

    # ---- queries
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def fingerprint(self) -> str:
        """sha256 of the split parameters, class names and file records (not the root)."""
        canonical = {"format": FORMAT, "version": VERSION, "validation_split": self.validation_split,
                     "seed": self.seed, "class_names": self.class_names,
                     "files": [[e.path, e.label, e.split, e.size, e.sha256] for e in self.files]}
        text = json.dumps(canonical, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    @property
    def short_fingerprint(self) -> str:
        return self.fingerprint[:12]

    def split_name(self, split: str) -> str:
        name = SPLIT_ALIASES.get(split, split)
        if name not in SPLITS:
            raise UserError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
        return name

    def entries(self, split: str) -> list[ManifestEntry]:
        """The split's file records, in the order Keras' ``file_paths`` gives them."""
        return list(self._by_split[self.split_name(split)])

    def paths(self, split: str) -> list[Path]:
        return [self.root / e.path for e in self.entries(split)]

    def labels(self, split: str) -> np.ndarray:
        return np.asarray([e.label for e in self.entries(split)], dtype=np.int64)

    def counts(self) -> dict[str, Any]:
        per_class = {name: {s: 0 for s in SPLITS} for name in self.class_names}
        for e in self.files:
            per_class[self.class_names[e.label]][e.split] += 1
        return {**{s: len(self._by_split[s]) for s in SPLITS}, "per_class": per_class}

    def empty_classes(self) -> list[str]:
        seen = {e.label for e in self.files}
        return [name for i, name in enumerate(self.class_names) if i not in seen]

    def describe(self) -> str:
        c = self.counts()
        return (f"{len(self.files)} files in {self.num_classes} classes ({c['training']} training, "
                f"{c['validation']} validation; split {self.validation_split:g}, seed {self.seed}); "
                f"fingerprint {self.short_fingerprint}")

    def info(self) -> dict[str, Any]:
        """What a result record carries about its data."""
        return {"fingerprint": self.fingerprint, "path": str(self.source) if self.source else None,
                "root": str(self.root), "class_names": self.class_names, "seed": self.seed,
                "validation_split": self.validation_split, "counts": self.counts()}

    # ---- writing
    def to_text(self, manifest_path: str | os.PathLike | None = None) -> str:
        """JSON with one file record a line; identical input gives identical bytes."""
        header: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "split": {"validation_split": self.validation_split, "seed": self.seed, "algorithm": ALGORITHM},
            "class_names": self.class_names,
            "counts": self.counts(),
            "root": str(self.root),
        }
        if manifest_path is not None:
            header["root_relative"] = to_posix(os.path.relpath(self.root, Path(manifest_path).absolute().parent))
        header["fingerprint"] = self.fingerprint
        lines = ["{"]
        lines += [f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}," for k, v in header.items()]
        lines.append('  "files": [')
        records = [json.dumps(e.to_dict(), ensure_ascii=False) for e in self.files]
        lines += [f"    {r}," for r in records[:-1]] + [f"    {r}" for r in records[-1:]]
        lines += ["  ]", "}"]
        return "\n".join(lines) + "\n"

    def save(self, path: str | os.PathLike) -> None:
        atomic.write_text(path, self.to_text(path))


def build_manifest(data_dir: str | os.PathLike, *, validation_split: float = DEFAULT_VALIDATION_SPLIT,
                   seed: int = DEFAULT_SEED, quiet: bool = True) -> Manifest:
    """List ``data_dir`` as Keras does, split it, and pin every file by size and sha256.

    Raises UserError (nothing written) for a missing folder, no class folders, no images, an
    empty training or validation set, and any file that is empty, unreadable, not an image,
    truncated or corrupt.
    """
    check_split_args(validation_split, seed)
    root = os.path.abspath(os.fspath(data_dir))
    if not os.path.isdir(root):
        raise UserError(f"{data_dir}: no such folder: pass the image folder (one subfolder per class)")
    rel_paths, labels, class_names = index_directory(root)
    if not class_names:
        raise UserError(f"{data_dir} has no class subfolders: put each class's images in its own "
                        f"folder, {data_dir}/<class name>/<image>.jpg")
    if not rel_paths:
        raise UserError(f"{data_dir}: no images in its {len(class_names)} class folder(s) "
                        f"(extensions {' '.join(ALLOWLIST_FORMATS)}, any case)")
    for p in rel_paths:
        try:
            p.encode("utf-8")
        except UnicodeEncodeError:
            raise UserError(f"{os.path.join(root, p)!r}: the file name is not valid UTF-8: rename it") from None
    shuffled, shuffled_labels, n_val = keras_split(rel_paths, labels, validation_split, seed)
    n = len(shuffled)
    if n_val == 0 or n - n_val == 0:
        empty = "validation" if n_val == 0 else "training"
        raise UserError(f"{data_dir}: validation split {validation_split:g} of {n} files leaves the {empty} set empty "
                        f"(int({validation_split:g} x {n}) = {n_val} validation files): add images or "
                        f"change --validation-split")

    files: list[ManifestEntry] = []
    problems: list[str] = []
    progress = _Progress("checking images", n, quiet)
    for i, (rel, label) in enumerate(zip(shuffled, shuffled_labels)):
        full = os.path.join(root, rel)
        try:
            with open(full, "rb") as f:
                data = f.read()
        except OSError as exc:
            problems.append(f"{full}: cannot be read ({exc.strerror}): fix its permissions or remove it")
            continue
        problem = image_problem(data)
        if problem:
            problems.append(f"{full}: {problem}: replace or remove it")
            continue
        split = "training" if i < n - n_val else "validation"
        files.append(ManifestEntry(to_posix(rel), int(label), split, len(data), hashlib.sha256(data).hexdigest()))
        progress.step(i + 1)
    if problems:
        more = f" ({len(problems) - 1} more bad file(s), e.g. {problems[1].split(': ')[0]})" if len(problems) > 1 else ""
        raise UserError(problems[0] + more)
    return Manifest(root=root, class_names=class_names, validation_split=validation_split, seed=seed, files=files)


def check_split_args(validation_split: float, seed: int) -> None:
    if not isinstance(validation_split, (int, float)) or not 0 < validation_split < 1:
        raise UserError(f"validation split must be between 0 and 1 (exclusive), received {validation_split!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise UserError(f"seed must be an integer from 0 to {MAX_SEED} (numpy RandomState), received {seed!r}")


# ---- reading ---------------------------------------------------------------------------------------
def parse_manifest(text: str, source: Path) -> tuple[Manifest, dict[str, Any]]:
    """The manifest in ``text`` (validated: any inconsistency is a UserError naming ``source``)."""
    rebuild = f"rebuild it with 'twinbench manifest DATA_DIR -o {source} --force'"
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise UserError(f"{source}: not valid JSON ({exc}): {rebuild}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise UserError(f"{source}: not a twinbench manifest (no \"format\": \"{FORMAT}\"): {rebuild}")
    version = raw.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise UserError(f"{source}: manifest version {version!r} is newer than this twinbench reads "
                        f"({VERSION}): upgrade twinbench or {rebuild}")

    def bad(what: str) -> UserError:
        return UserError(f"{source}: {what}: {rebuild}")

    try:
        split = raw["split"]
        validation_split, seed = split["validation_split"], split["seed"]
        class_names, records, root = raw["class_names"], raw["files"], raw["root"]
    except (KeyError, TypeError) as exc:
        raise bad(f"missing field {exc}") from None
    try:
        check_split_args(validation_split, seed)
    except UserError as exc:
        raise bad(str(exc)) from None
    if (not isinstance(class_names, list) or not all(isinstance(c, str) and c for c in class_names)
            or len(set(class_names)) != len(class_names)):
        raise bad("class_names must be a list of distinct folder names")
    if not isinstance(records, list) or not isinstance(root, str):
        raise bad("'files' must be a list and 'root' a string")
    files: list[ManifestEntry] = []
    seen: set[str] = set()
    for k, r in enumerate(records):
        if not isinstance(r, dict):
            raise bad(f"file record {k + 1} is not an object")
        try:
            entry = ManifestEntry(r["path"], r["label"], r["split"], r["size"], r["sha256"])
        except KeyError as exc:
            raise bad(f"file record {k + 1} has no {exc}") from None
        where = f"file record {k + 1} ({entry.path!r})"
        if not isinstance(entry.path, str) or not entry.path:
            raise bad(f"{where}: path must be a non-empty string")
        parts = entry.path.split("/")
        if entry.path.startswith("/") or "\\" in entry.path or ".." in parts or os.path.isabs(entry.path):
            raise bad(f"{where}: path escapes the data root")
        if entry.path in seen:
            raise bad(f"{where}: duplicate path")
        seen.add(entry.path)
        if not isinstance(entry.label, int) or isinstance(entry.label, bool) or not 0 <= entry.label < len(class_names):
            raise bad(f"{where}: label {entry.label!r} out of range 0..{len(class_names) - 1}")
        if parts[0] != class_names[entry.label]:
            raise bad(f"{where}: label {entry.label} ({class_names[entry.label]!r}) does not match its folder")
        if entry.split not in SPLITS:
            raise bad(f"{where}: split {entry.split!r} is not one of {', '.join(SPLITS)}")
        if not isinstance(entry.size, int) or entry.size < 0:
            raise bad(f"{where}: size must be a byte count")
        if not isinstance(entry.sha256, str) or len(entry.sha256) != 64 or not all(
                c in "0123456789abcdef" for c in entry.sha256):
            raise bad(f"{where}: sha256 must be 64 hex digits")
        files.append(entry)
    n_val = int(validation_split * len(files))
    expected = ["training"] * (len(files) - n_val) + ["validation"] * n_val
    if [e.split for e in files] != expected or n_val == 0 or n_val == len(files):
        raise bad(f"the split does not follow Keras' (training = the first {len(files) - n_val} files, "
                  f"validation = the last {n_val})")
    manifest = Manifest(root=root, class_names=class_names, validation_split=validation_split, seed=seed,
                        files=files, source=source)
    if raw.get("fingerprint") != manifest.fingerprint:
        raise bad("its fingerprint does not match its contents (edited by hand?)")
    return manifest, raw


def load_manifest(path: str | os.PathLike, *, data_root: str | os.PathLike | None = None,
                  verify: str = "hash", quiet: bool = True) -> Manifest:
    """Read and check a manifest, find its data, and verify the files against it.

    verify: ``hash`` (sizes and sha256, the default), ``size`` (sizes only: cheap) or ``none``
    (a worker whose parent already verified). Raises UserError (exit 2) for a bad manifest or a
    data root that is gone, CheckFailed (exit 1) when files changed, went missing or were added.
    """
    if verify not in VERIFY_LEVELS:
        raise UserError(f"unknown verify level {verify!r}: choose one of {', '.join(VERIFY_LEVELS)}")
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{source}: no such manifest: write one with 'twinbench manifest DATA_DIR -o {source}'") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{source}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    manifest, raw = parse_manifest(text, source)
    manifest.root = resolve_root(manifest, raw, source, data_root)
    if verify != "none":
        report = verify_files(manifest, level=verify, quiet=quiet)
        if not report.ok:
            raise CheckFailed(f"{source}: the data in {manifest.root} changed since the manifest was written: "
                              f"{report.summary()}; see 'twinbench manifest verify {source}', or rebuild it")
    return manifest


def resolve_root(manifest: Manifest, raw: dict[str, Any], source: Path,
                 data_root: str | os.PathLike | None) -> Path:
    """--data-root if given; else the recorded absolute root; else the root relative to the
    manifest (the manifest and its data were copied together). Verification follows."""
    if data_root is not None:
        root = Path(os.path.abspath(os.fspath(data_root)))
        if not root.is_dir():
            raise UserError(f"--data-root {data_root}: no such folder")
        return root
    candidates = [Path(raw["root"])]
    relative = raw.get("root_relative")
    if isinstance(relative, str):
        candidates.append(Path(os.path.normpath(source.absolute().parent / relative)))
    for root in candidates:
        if root.is_dir():
            return root
    raise UserError(f"{source}: its data root {raw['root']} is gone (moved or deleted): pass --data-root DIR "
                    f"pointing at the image folder, or rebuild the manifest")


@dataclass
class VerifyReport:
    level: str
    checked: int
    missing: list[str]
    changed: list[tuple[str, str]]  # (path, what changed)
    added: list[str]
    classes_now: list[str]
    classes_before: list[str]

    @property
    def ok(self) -> bool:
        return not (self.missing or self.changed or self.added or self.classes_now != self.classes_before)

    def summary(self) -> str:
        def names(items: list[str]) -> str:
            shown = ", ".join(items[:3])
            return shown + (f", ... ({len(items) - 3} more)" if len(items) > 3 else "")

        parts = []
        if self.classes_now != self.classes_before:
            parts.append(f"class folders are now {self.classes_now} (were {self.classes_before})")
        if self.changed:
            parts.append(f"{len(self.changed)} changed ({names([p for p, _ in self.changed])})")
        if self.missing:
            parts.append(f"{len(self.missing)} missing ({names(self.missing)})")
        if self.added:
            parts.append(f"{len(self.added)} added ({names(self.added)})")
        return "; ".join(parts) if parts else f"intact: {self.checked} files ({self.level} checked)"


def verify_files(manifest: Manifest, *, level: str = "hash", quiet: bool = True) -> VerifyReport:
    """Compare the files under the manifest's root with its records: missing, changed (size, or
    sha256 at level ``hash``), and added (what Keras would list now but the manifest lacks)."""
    root = str(manifest.root)
    listed, _, classes_now = index_directory(root)
    known = {e.path for e in manifest.files}
    added = sorted(to_posix(p) for p in listed if to_posix(p) not in known)
    missing: list[str] = []
    changed: list[tuple[str, str]] = []
    progress = _Progress(f"verifying ({level})", len(manifest.files), quiet)
    for i, e in enumerate(manifest.files):
        full = os.path.join(root, e.path)
        try:
            size = os.stat(full).st_size
            if not os.path.isfile(full):
                raise FileNotFoundError
        except OSError:
            missing.append(e.path)
            continue
        if size != e.size:
            changed.append((e.path, f"size {e.size} -> {size} bytes"))
        elif level == "hash":
            try:
                digest = sha256_file(full)
            except OSError as exc:
                changed.append((e.path, f"unreadable ({exc.strerror})"))
                continue
            if digest != e.sha256:
                changed.append((e.path, "content changed (sha256 differs)"))
        progress.step(i + 1)
    return VerifyReport(level, len(manifest.files), missing, changed, added, classes_now, manifest.class_names)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class _Progress:
    """'label 1200/5000' on stderr at most every 2 s, and only for work that takes that long."""

    def __init__(self, label: str, total: int, quiet: bool):
        self.label, self.total, self.quiet = label, total, quiet
        self.start = self.last = time.monotonic()

    def step(self, done: int) -> None:
        now = time.monotonic()
        if self.quiet or now - self.last < 2.0:
            return
        self.last = now
        eta = (now - self.start) / done * (self.total - done)
        print(f"  {self.label}: {done}/{self.total} files, ETA {eta:.0f} s", file=sys.stderr, flush=True)
