"""Image folders for the data tests: awkward listings, every input format, bad files.

numpy + PIL only, so the framework-free, the TF and the torch test sets all build the same
folders (``from tests.data_fixtures import ...``).
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def tiny_image(seed: int, size: tuple[int, int] = (12, 9)) -> Image.Image:
    """A small smooth-ish RGB image (JPEG-friendly), different per seed."""
    w, h = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    a, b, c = rng.integers(1, 9, 3)
    arr = np.stack([(x * a * 9) % 256, (y * b * 11) % 256, ((x + y) * c * 7) % 256], -1)
    return Image.fromarray(arr.astype(np.uint8))


def image_bytes(seed: int, fmt: str = "JPEG", size: tuple[int, int] = (12, 9)) -> bytes:
    buf = io.BytesIO()
    tiny_image(seed, size).save(buf, format=fmt)
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_awkward_tree(root: Path) -> Path:
    """A folder that exercises every rule of Keras' listing.

    Classes: sorted with case and spaces, a unicode name, an empty class (kept by Keras), a
    dot-folder (skipped) and a stray top-level image (ignored). Inside classes: nested and
    sibling subfolders whose names sort around '/', a dot-folder and hidden files (both listed by
    Keras), mixed-case extensions, non-image files, unicode file names, a folder named like an
    image, and a symlinked folder (not followed).
    """
    k = iter(range(10_000))
    img = lambda fmt="JPEG": image_bytes(next(k), fmt)  # noqa: E731
    layout = {
        "b_class": ["x.jpg", "X.JPG", "a.jpeg", "y.Png", "z.JpEg", "w.gif", "v.bmp", ".hidden.jpg",
                    "sub/deep/1.jpg", "sub/2.jpg", "sub b/3.jpg", "sub-c/4.png", "sub.d/5.jpg",
                    ".dotdir/6.jpg", "d.jpg/7.jpg", "café.jpg", "日本.png"],
        "A class": ["one.jpg", "two.JPEG", "nested/Three.jpg", "nested/four.PNG", "Zeta.jpg", "alpha.jpg"],
        "ünïcode_cls": ["ß.jpg", "e\u0301.jpg", "1.jpg", "10.jpg", "2.jpg"],
        "class10": ["a.jpg", "b.jpg"],
        "class9": ["a.jpg", "b.jpg", "c.jpg"],
    }
    fmt_of = {".png": "PNG", ".gif": "GIF", ".bmp": "BMP"}
    for cls, files in layout.items():
        for name in files:
            ext = os.path.splitext(name)[1].lower()
            write(root / cls / name, img(fmt_of.get(ext, "JPEG")))
    (root / "empty_cls").mkdir()
    write(root / ".hidden_cls" / "h.jpg", img())
    write(root / "stray.jpg", img())
    write(root / "README.txt", b"not a class\n")
    for junk in ("b_class/notes.txt", "b_class/image.jpg.bak", "b_class/scan.tif", "A class/Thumbs.db",
                 "A class/nested/.DS_Store"):
        write(root / junk, b"junk")
    (root / "b_class" / "link_dir").symlink_to(root / "class9", target_is_directory=True)
    return root


# ---- every input format ----------------------------------------------------------------------------
def _png_raw(path: Path, rows: list[bytes], width: int, height: int, bit_depth: int, colour_type: int) -> None:
    """A PNG written byte by byte (PIL cannot write 16-bit RGB or sub-byte grayscale)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + r for r in rows)
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    write(path, b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def make_format_zoo(root: Path, *, size: tuple[int, int] = (53, 37)) -> dict[str, Path]:
    """Two classes holding one file per input format (non-square, so resizing is exercised both
    up and down); returns {kind: path}. Grayscale, RGBA, palette (with and without transparency),
    16-bit PNG, CMYK and progressive JPEG, animated and transparent GIF, 8/24/32-bit BMP."""
    w, h = size
    base = tiny_image(1, size)
    rng = np.random.default_rng(5)
    files: dict[str, Path] = {}

    def save(kind: str, cls: str, name: str, image: Image.Image, fmt: str, **kw) -> None:
        path = root / cls / name
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, format=fmt, **kw)
        files[kind] = path

    save("rgb_jpeg", "birds", "rgb.jpg", base, "JPEG", quality=90)
    save("rgb444_jpeg", "birds", "rgb444.jpg", base, "JPEG", quality=95, subsampling=0)
    save("progressive_jpeg", "birds", "prog.jpg", base, "JPEG", quality=85, progressive=True)
    save("gray_jpeg", "birds", "gray.jpg", base.convert("L"), "JPEG")
    save("cmyk_jpeg", "birds", "cmyk.JPG", base.convert("CMYK"), "JPEG", quality=90)
    save("big_jpeg", "birds", "big.jpeg", tiny_image(2, (96, 80)), "JPEG", quality=80)
    save("gray_png", "birds", "gray.png", base.convert("L"), "PNG")
    save("rgba_png", "birds", "rgba.png", Image.fromarray(np.dstack([np.asarray(base), rng.integers(0, 256, (h, w), dtype=np.uint8)])), "PNG")
    save("palette_png", "birds", "palette.png", base.convert("P", palette=Image.ADAPTIVE, colors=16), "PNG")
    save("palette_trns_png", "cats", "palette_trns.png", base.convert("P", palette=Image.ADAPTIVE, colors=16), "PNG", transparency=3)
    save("la_png", "cats", "la.png", base.convert("LA"), "PNG")
    save("bilevel_png", "cats", "bilevel.png", base.convert("1"), "PNG")
    gray16 = rng.integers(0, 65536, (h, w)).astype(np.uint16)
    save("gray16_png", "cats", "gray16.png", Image.fromarray(gray16), "PNG")
    rgb16 = rng.integers(0, 65536, (h, w, 3)).astype(">u2")
    _png_raw(root / "cats" / "rgb16.png", [r.tobytes() for r in rgb16], w, h, 16, 2)
    files["rgb16_png"] = root / "cats" / "rgb16.png"
    frames = [base.convert("P", palette=Image.ADAPTIVE, colors=32),
              base.rotate(180).convert("P", palette=Image.ADAPTIVE, colors=32)]
    save("animated_gif", "cats", "anim.gif", frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    save("transparent_gif", "cats", "trans.gif", frames[0], "GIF", transparency=0)
    save("rgb_bmp", "cats", "rgb.bmp", base, "BMP")
    save("palette_bmp", "cats", "palette.bmp", base.convert("P", palette=Image.ADAPTIVE, colors=16), "BMP")
    save("rgba_bmp", "cats", "rgba.bmp", Image.fromarray(np.dstack([np.asarray(base), np.full((h, w), 200, np.uint8)])), "BMP")
    save("png_named_jpg", "cats", "png_inside.jpg", base, "PNG")
    return files


# ---- bad files -------------------------------------------------------------------------------------
def truncated_jpeg() -> bytes:
    data = image_bytes(3, "JPEG", (64, 48))
    return data[: len(data) * 2 // 3]


def bilevel_bmp() -> bytes:
    buf = io.BytesIO()
    tiny_image(4).convert("1").save(buf, format="BMP")
    return buf.getvalue()


BAD_FILES = {
    # name -> (file name in class folder, bytes, words the error line must contain)
    "zero-byte": ("empty.jpg", b"", "empty (0 bytes)"),
    "text": ("notes.jpg", b"this is a text file, not a picture\n", "text file"),
    "truncated": ("cut.jpg", None, "truncated"),
    "corrupt": ("garbage.jpg", b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4, "corrupt"),
    "bmp-1bit": ("mono.bmp", None, "1-bit BMP"),
}


def bad_file_bytes(kind: str) -> bytes:
    name, data, _ = BAD_FILES[kind]
    if data is not None:
        return data
    return truncated_jpeg() if kind == "truncated" else bilevel_bmp()


def make_class_folder(root: Path, classes: dict[str, int], *, start: int = 0) -> Path:
    """``classes``: {name: number of small JPEGs}."""
    k = start
    for cls, count in classes.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            write(root / cls / f"{i:03d}.jpg", image_bytes(k))
            k += 1
    return root
