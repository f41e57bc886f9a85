"""The demo dataset: the seed's shape (4 classes, 565 JPEGs at 224 px, 452 / 113 at 0.2 / 123),
deterministic, varied (colour alone does not separate the classes) yet structured."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from bench import demo
from bench.cli import main
from bench.dataset import build_manifest


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    return demo.write_demo(tmp_path_factory.mktemp("demo") / "demo", seed=0)


def test_demo_has_the_seeds_shape_and_split(demo_dir):
    manifest = build_manifest(demo_dir, validation_split=0.2, seed=123)
    assert manifest.class_names == ["Bananaquit", "Black Skimmer", "Black Throated Bushtiti", "Cockatoo"]
    assert len(manifest.files) == 565
    assert (len(manifest.entries("training")), len(manifest.entries("validation"))) == (452, 113)
    per_class = manifest.counts()["per_class"]
    assert all(c["validation"] > 10 for c in per_class.values())  # every class in both splits
    digests = {e.sha256 for e in manifest.files}
    assert len(digests) == 565  # no two images alike
    for path in manifest.paths("validation")[:20]:
        with Image.open(path) as im:
            assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (224, 224))


def thumbnails(manifest, split: str, size: int) -> np.ndarray:
    out = []
    for path in manifest.paths(split):
        with Image.open(path) as im:
            out.append(np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR), np.float64).ravel() / 255)
    return np.stack(out)


def test_colour_alone_does_not_separate_but_structure_does(demo_dir):
    """Mean colour with a nearest-centroid rule stays near chance; a linear model on 8 x 8
    thumbnails does clearly better: the signal is in the shapes (a CNN's job)."""
    manifest = build_manifest(demo_dir)
    y_train, y_val = manifest.labels("training"), manifest.labels("validation")
    majority = np.bincount(y_val).max() / len(y_val)

    def ridge_accuracy(size: int) -> float:
        x_train, x_val = thumbnails(manifest, "training", size), thumbnails(manifest, "validation", size)
        a = np.c_[x_train, np.ones(len(x_train))]
        w = np.linalg.solve(a.T @ a + np.eye(a.shape[1]), a.T @ np.eye(4)[y_train])
        return float(np.mean(np.argmax(np.c_[x_val, np.ones(len(x_val))] @ w, axis=1) == y_val))

    colour, shape = ridge_accuracy(1), ridge_accuracy(8)
    assert colour < majority + 0.15
    assert shape > colour + 0.15


def test_generation_is_deterministic_and_seeded():
    counts = {"Bananaquit": 2, "Cockatoo": 2}
    a, b = demo.demo_files(seed=0, counts=counts), demo.demo_files(seed=0, counts=counts)
    assert list(a) == ["Bananaquit/001.jpg", "Bananaquit/002.jpg", "Cockatoo/001.jpg", "Cockatoo/002.jpg"]
    assert a == b
    c = demo.demo_files(seed=1, counts=counts)
    assert all(a[k] != c[k] for k in a)


def test_write_demo_is_all_or_nothing_and_never_clobbers(tmp_path):
    counts = {"Bananaquit": 2, "Cockatoo": 1}
    target = demo.write_demo(tmp_path / "d", seed=0, counts=counts)
    assert json.loads((target / demo.MARKER).read_text())["seed"] == 0
    before = hashlib.sha256((target / "Cockatoo" / "001.jpg").read_bytes()).hexdigest()
    demo.write_demo(target, seed=0, counts=counts)  # complete: kept as it is
    assert hashlib.sha256((target / "Cockatoo" / "001.jpg").read_bytes()).hexdigest() == before
    with pytest.raises(Exception, match="--force"):
        demo.write_demo(target, seed=1, counts=counts)
    demo.write_demo(target, seed=1, counts=counts, force=True)
    assert json.loads((target / demo.MARKER).read_text())["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temporary folders left
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("precious")
    with pytest.raises(Exception, match="holds no twinbench demo"):
        demo.write_demo(mine, seed=0, counts=counts, force=True)
    assert (mine / "thesis.txt").read_text() == "precious"


def test_cli_demo_then_manifest(demo_dir, tmp_path, capsys):
    assert main(["data", "demo", str(demo_dir)]) == 0  # complete: nothing rewritten
    assert "already there" in capsys.readouterr().out
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    assert main(["data", "demo", str(tmp_path / "mine")]) == 2
    assert "holds no twinbench demo" in capsys.readouterr().err
    out = tmp_path / "m.json"
    assert main(["manifest", str(demo_dir), "-o", str(out)]) == 0
    assert "452 training, 113 validation" in capsys.readouterr().out
