"""The embedded demo dataset: a deterministic image folder with the seed's shape.

    twinbench data demo DIR [--seed 0]

The seed trains on 565 bird photos in 4 classes (224 x 224 JPEG after resizing; 452 / 113 at
split 0.2, seed 123). The photos are not redistributable, so ``make run`` uses this stand-in:
the same class names, 565 JPEG images at 224 x 224, each a drawn "bird" whose shape and colour
pattern depend on its class, at a random position, scale, rotation and mirror, with jittered
colours, a random background gradient, pixel noise and distractor blobs. Colour alone does not
separate the classes (palettes overlap), shape does: a ResNet-50 from scratch needs a few epochs,
and the shapes stay legible at 64 px.

numpy and PIL only; the same seed gives the same pixels (the JPEG bytes depend on the libjpeg
that Pillow ships).
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from bench import atomic
from bench.errors import UserError

DEMO_VERSION = 1
IMAGE_SIZE = 224
JPEG_QUALITY = 90  # Pillow's 4:2:0 chroma subsampling at this quality, like most camera JPEGs
MARKER = ".twinbench-demo.json"  # a dot-file at the top: Keras lists only folders there
# The seed's class names; unequal class sizes summing to its 565 images.
CLASS_COUNTS: dict[str, int] = {
    "Bananaquit": 166,
    "Black Skimmer": 111,
    "Black Throated Bushtiti": 122,
    "Cockatoo": 166,
}

RGB = tuple[int, int, int]


def default_demo_dir() -> Path:
    """``data/demo`` in the repository (git-ignored), where ``make run`` keeps the demo."""
    return Path(__file__).resolve().parent.parent / "data" / "demo"


# ---- drawing ---------------------------------------------------------------------------------------
def _jitter(rng: np.random.Generator, colour: RGB, amount: int = 40) -> RGB:
    c = np.asarray(colour) + rng.integers(-amount, amount + 1, 3)
    return tuple(int(v) for v in np.clip(c, 0, 255))  # type: ignore[return-value]


def _random_colour(rng: np.random.Generator) -> RGB:
    return tuple(int(v) for v in rng.integers(0, 256, 3))  # type: ignore[return-value]


# Each drawer paints one bird on a transparent S x S canvas centred at (S/2, S/2). Palettes are
# chosen so that every colour also appears in another class (yellow: Bananaquit and Cockatoo's
# crest; black: Skimmer and Bushtiti; white/grey: Cockatoo and Bushtiti): shape decides.
def _bananaquit(d: ImageDraw.ImageDraw, s: int, rng: np.random.Generator) -> None:
    # Round yellow belly, dark back, small dark head with a short curved bill.
    body = _jitter(rng, (240, 210, 40)); back = _jitter(rng, (50, 50, 55), 25)
    d.ellipse([0.22 * s, 0.38 * s, 0.78 * s, 0.80 * s], fill=body)
    d.chord([0.22 * s, 0.38 * s, 0.78 * s, 0.80 * s], 180, 360, fill=back)
    d.ellipse([0.62 * s, 0.24 * s, 0.84 * s, 0.46 * s], fill=back)
    d.polygon([(0.82 * s, 0.33 * s), (0.95 * s, 0.40 * s), (0.82 * s, 0.38 * s)], fill=_jitter(rng, (30, 30, 30), 20))


def _black_skimmer(d: ImageDraw.ImageDraw, s: int, rng: np.random.Generator) -> None:
    # Long, flat black body over a white underside, and a long red-orange bill: a horizontal wedge.
    black = _jitter(rng, (25, 25, 30), 20); white = _jitter(rng, (235, 235, 230), 20)
    d.ellipse([0.08 * s, 0.42 * s, 0.70 * s, 0.62 * s], fill=white)
    d.polygon([(0.05 * s, 0.40 * s), (0.72 * s, 0.46 * s), (0.60 * s, 0.54 * s), (0.10 * s, 0.52 * s)], fill=black)
    d.ellipse([0.60 * s, 0.38 * s, 0.76 * s, 0.54 * s], fill=black)
    d.polygon([(0.74 * s, 0.45 * s), (0.98 * s, 0.55 * s), (0.74 * s, 0.52 * s)], fill=_jitter(rng, (225, 70, 30)))


def _bushtit(d: ImageDraw.ImageDraw, s: int, rng: np.random.Generator) -> None:
    # Small grey ball with a black throat patch and a long straight tail.
    grey = _jitter(rng, (150, 145, 140), 35); black = _jitter(rng, (20, 20, 20), 15)
    d.rectangle([0.05 * s, 0.50 * s, 0.48 * s, 0.58 * s], fill=grey)
    d.ellipse([0.35 * s, 0.35 * s, 0.70 * s, 0.70 * s], fill=grey)
    d.ellipse([0.55 * s, 0.48 * s, 0.68 * s, 0.62 * s], fill=black)
    d.ellipse([0.58 * s, 0.40 * s, 0.63 * s, 0.45 * s], fill=_jitter(rng, (230, 200, 60), 30))


def _cockatoo(d: ImageDraw.ImageDraw, s: int, rng: np.random.Generator) -> None:
    # Tall white body, a spiky yellow crest, a dark hooked bill: a vertical shape with spikes.
    white = _jitter(rng, (240, 240, 235), 15); crest = _jitter(rng, (245, 215, 50))
    for k in range(4):
        x = (0.38 + 0.07 * k) * s
        d.polygon([(x, 0.30 * s), (x - 0.10 * s, 0.05 * s + 0.03 * k * s), (x + 0.05 * s, 0.28 * s)], fill=crest)
    d.ellipse([0.30 * s, 0.22 * s, 0.66 * s, 0.92 * s], fill=white)
    d.ellipse([0.50 * s, 0.22 * s, 0.72 * s, 0.44 * s], fill=white)
    d.pieslice([0.62 * s, 0.30 * s, 0.80 * s, 0.46 * s], 200, 40, fill=_jitter(rng, (40, 40, 45), 20))


DRAWERS: dict[str, Callable[[ImageDraw.ImageDraw, int, np.random.Generator], None]] = {
    "Bananaquit": _bananaquit,
    "Black Skimmer": _black_skimmer,
    "Black Throated Bushtiti": _bushtit,
    "Cockatoo": _cockatoo,
}


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A linear gradient between two random colours at a random angle (float HWC)."""
    a, b = np.asarray(_random_colour(rng), float), np.asarray(_random_colour(rng), float)
    angle = rng.uniform(0, 2 * math.pi)
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    t = (np.cos(angle) * x + np.sin(angle) * y)
    t = (t - t.min()) / max(t.max() - t.min(), 1e-9)
    return a + (b - a) * t[..., None]


def demo_image(class_name: str, rng: np.random.Generator, size: int = IMAGE_SIZE) -> Image.Image:
    """One demo image of ``class_name`` (RGB, size x size)."""
    canvas = Image.fromarray(np.clip(_background(rng, size), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(0, 4))):  # distractor blobs, any colour
        r = rng.uniform(0.03, 0.09) * size
        cx, cy = rng.uniform(0, size, 2)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=_random_colour(rng))
    # The bird on its own layer: drawn large, then scaled, rotated, mirrored and placed.
    s = 256
    bird = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    DRAWERS[class_name](ImageDraw.Draw(bird), s, rng)
    scale = rng.uniform(0.45, 0.95)
    side = max(8, int(size * scale))
    bird = bird.resize((side, side), Image.BILINEAR)
    bird = bird.rotate(float(rng.uniform(-25, 25)), resample=Image.BILINEAR, expand=False)
    if rng.random() < 0.5:
        bird = bird.transpose(Image.FLIP_LEFT_RIGHT)
    x0 = int(rng.integers(-side // 6, size - side + side // 6 + 1))
    y0 = int(rng.integers(-side // 6, size - side + side // 6 + 1))
    canvas.paste(bird, (x0, y0), bird)
    if rng.random() < 0.3:
        canvas = canvas.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.5, 1.5))))
    pixels = np.asarray(canvas, dtype=np.float32)
    pixels = pixels * rng.uniform(0.7, 1.2) + rng.normal(0.0, rng.uniform(4, 16), pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def demo_files(seed: int = 0, counts: dict[str, int] | None = None) -> dict[str, bytes]:
    """{"<class>/<NNN>.jpg": JPEG bytes} for the whole demo set (or ``counts`` per class)."""
    counts = CLASS_COUNTS if counts is None else counts
    out: dict[str, bytes] = {}
    for k, (name, count) in enumerate(counts.items()):
        for i in range(count):
            rng = np.random.default_rng([seed, k, i])  # one stream per image: any subset is reproducible
            buf = io.BytesIO()
            demo_image(name, rng).save(buf, format="JPEG", quality=JPEG_QUALITY)
            out[f"{name}/{i + 1:03d}.jpg"] = buf.getvalue()
    return out


# ---- writing ---------------------------------------------------------------------------------------
def read_marker(directory: Path) -> dict | None:
    try:
        return json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return None


def is_complete(directory: Path, seed: int, counts: dict[str, int] | None = None) -> bool:
    """The folder holds this demo (same version, seed and counts) with every file in place."""
    counts = CLASS_COUNTS if counts is None else counts
    marker = read_marker(directory)
    if not marker or marker.get("version") != DEMO_VERSION or marker.get("seed") != seed or marker.get("counts") != counts:
        return False
    return all(len(list((directory / name).glob("*.jpg"))) == n for name, n in counts.items())


def write_demo(directory: str | os.PathLike, seed: int = 0, *, force: bool = False,
               counts: dict[str, int] | None = None) -> Path:
    """Write the demo set into ``directory`` (created; all or nothing) and return its path.

    An existing complete demo with the same seed is kept as it is. An existing demo with other
    settings is replaced only with ``force``; any other non-empty folder is never touched.
    """
    directory = Path(directory)
    counts = CLASS_COUNTS if counts is None else dict(counts)
    if is_complete(directory, seed, counts):
        return directory
    if directory.exists():
        if not directory.is_dir():
            raise UserError(f"{directory} exists and is not a folder: choose another place for the demo data")
        if any(directory.iterdir()):
            if read_marker(directory) is None:
                raise UserError(f"{directory} is not empty and holds no twinbench demo: choose an empty or new folder")
            if not force:
                raise UserError(f"{directory} holds a twinbench demo with other settings (or an incomplete one): "
                                f"pass --force to replace it")
    directory.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target, then swap it in: a reader never sees half a dataset.
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        for rel, data in demo_files(seed, counts).items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(data)
        atomic.write_json(tmp / MARKER, {"generator": "twinbench demo", "version": DEMO_VERSION, "seed": seed,
                                         "counts": counts, "image_size": IMAGE_SIZE, "jpeg_quality": JPEG_QUALITY})
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            directory.rename(old)
            tmp.rename(directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return directory


def ensure_demo(directory: str | os.PathLike | None = None, seed: int = 0) -> Path:
    """The demo folder, written on first use (``make run``'s default data)."""
    directory = Path(directory) if directory is not None else default_demo_dir()
    force = directory == default_demo_dir()  # ours, git-ignored: regenerate if another version
    return write_demo(directory, seed, force=force)
