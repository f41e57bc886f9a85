"""The manifest: Keras' split rules, determinism, verification, and every bad input (exit 2,
one line naming the file, nothing written). The comparison with Keras itself is in
tests/tf/test_keras_split.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from bench.cli import main
from bench.errors import CheckFailed, UserError
from bench.dataset import PipelineOptions, build_manifest, keras_split, load_manifest, verify_files
from bench.orders import epoch_order, epoch_permutation, fixed_batches_order
from tests.data_fixtures import (BAD_FILES, bad_file_bytes, image_bytes, make_awkward_tree, make_class_folder,
                                 write)


@pytest.fixture()
def data(tmp_path):
    return make_class_folder(tmp_path / "data", {"Cockatoo": 9, "Bananaquit": 7, "Black Skimmer": 5})


def cli(*argv: str) -> int:
    return main([str(a) for a in argv])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("twinbench: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


# ---- the split -------------------------------------------------------------------------------------
def test_split_follows_keras_rules(data):
    m = build_manifest(data, validation_split=0.2, seed=123)
    assert m.class_names == ["Bananaquit", "Black Skimmer", "Cockatoo"]  # sorted folder names
    assert len(m.entries("training")) == 21 - int(0.2 * 21) and len(m.entries("validation")) == int(0.2 * 21)
    # Keras: RandomState(seed).shuffle of the sorted listing, training first.
    listing = [f"{c}/{i:03d}.jpg" for c, n in (("Bananaquit", 7), ("Black Skimmer", 5), ("Cockatoo", 9))
               for i in range(n)]
    expected = list(listing)
    np.random.RandomState(123).shuffle(expected)
    assert [e.path for e in m.files] == expected
    assert [e.split for e in m.files] == ["training"] * 17 + ["validation"] * 4
    for e in m.files:
        assert m.class_names[e.label] == e.path.split("/")[0]
    assert [str(p) for p in m.paths("val")] == [str(data / e.path) for e in m.entries("validation")]
    np.testing.assert_array_equal(m.labels("training"), [e.label for e in m.files[:17]])
    other = build_manifest(data, validation_split=0.2, seed=124)
    assert [e.path for e in other.files] != expected and other.fingerprint != m.fingerprint


def test_keras_split_shuffles_labels_with_paths():
    paths = [f"c{i % 3}/{i}.jpg" for i in range(50)]
    labels = np.array([i % 3 for i in range(50)], np.int32)
    shuffled, shuffled_labels, n_val = keras_split(paths, labels, 0.3, 99)
    assert n_val == 15 and shuffled != paths
    assert all(int(p[1]) == y for p, y in zip(shuffled, shuffled_labels))


def test_manifest_bytes_are_deterministic_and_round_trip(data, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert cli("manifest", data, "-o", a) == 0
    assert cli("manifest", data, "-o", b) == 0
    assert a.read_bytes() == b.read_bytes()
    raw = json.loads(a.read_text())
    assert raw["format"] == "twinbench-manifest" and raw["version"] == 1
    assert raw["split"]["seed"] == 123 and raw["split"]["validation_split"] == 0.2
    assert "RandomState" in raw["split"]["algorithm"]
    assert len(a.read_text().splitlines()) == len(raw["files"]) + 12  # one file record a line
    m = load_manifest(a)
    assert m.fingerprint == raw["fingerprint"] and m.num_classes == 3 and m.root == data
    assert all(p.is_file() for s in ("training", "validation") for p in m.paths(s))
    e = m.files[0]
    assert e.size == (data / e.path).stat().st_size and len(e.sha256) == 64


def test_unicode_names_and_empty_class(tmp_path, capsys):
    root = make_awkward_tree(tmp_path / "awk")
    out = tmp_path / "m.json"
    assert cli("manifest", root, "-o", out) == 0
    captured = capsys.readouterr()
    assert "'empty_cls' has no images" in captured.err and "as Keras keeps it" in captured.err
    m = load_manifest(out)
    assert "empty_cls" in m.class_names and m.counts()["per_class"]["empty_cls"] == {"training": 0, "validation": 0}
    assert "b_class/日本.png" in out.read_text(encoding="utf-8")  # readable, not \\u-escaped
    assert any(e.path == "ünïcode_cls/ß.jpg" for e in m.files)


# ---- verify ----------------------------------------------------------------------------------------
def test_verify_names_changed_missing_and_added_files(data, tmp_path, capsys):
    out = tmp_path / "m.json"
    build_manifest(data).save(out)
    assert cli("manifest", "verify", out) == 0
    assert "intact: 21 files" in capsys.readouterr().out
    same_size = data / "Cockatoo" / "003.jpg"
    content = bytearray(same_size.read_bytes())
    content[-3] ^= 0xFF
    same_size.write_bytes(bytes(content))
    (data / "Bananaquit" / "001.jpg").unlink()
    write(data / "Black Skimmer" / "sub" / "new.PNG", image_bytes(99, "PNG"))
    assert cli("manifest", "verify", out) == 1
    captured = capsys.readouterr()
    assert "changed  Cockatoo/003.jpg" in captured.out
    assert "missing  Bananaquit/001.jpg" in captured.out
    assert "added    Black Skimmer/sub/new.PNG" in captured.out
    assert "1 changed" in captured.err and "1 missing" in captured.err and "1 added" in captured.err
    # The size check alone misses the same-size edit; readers fail on any change (exit 1).
    report = verify_files(load_manifest(out, verify="none"), level="size")
    assert not [p for p, _ in report.changed] and report.missing == ["Bananaquit/001.jpg"]
    with pytest.raises(CheckFailed, match="Cockatoo/003.jpg"):
        load_manifest(out)
    assert load_manifest(out, verify="none").fingerprint


def test_verify_notices_a_new_class_folder(data, tmp_path, capsys):
    out = tmp_path / "m.json"
    build_manifest(data).save(out)
    (data / "Dodo").mkdir()
    assert cli("manifest", "verify", out, "--level", "size") == 1
    assert "Dodo" in capsys.readouterr().out


def test_moved_root(data, tmp_path, capsys):
    out = tmp_path / "manifests" / "m.json"
    build_manifest(data).save(out)
    moved = tmp_path / "elsewhere"
    shutil.move(str(data), str(moved))
    assert cli("manifest", "verify", out) == 2
    err = one_line_error(capsys)
    assert str(data) in err and "--data-root" in err
    assert cli("manifest", "verify", out, "--data-root", moved) == 0
    # Manifest and data copied together: found through the recorded relative path.
    bundle = tmp_path / "copy"
    shutil.copytree(tmp_path / "manifests", bundle / "manifests")
    shutil.copytree(moved, bundle / "data")
    assert load_manifest(bundle / "manifests" / "m.json").root == bundle / "data"


# ---- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_file_is_named_and_nothing_written(kind, data, tmp_path, capsys):
    name, _, words = BAD_FILES[kind]
    write(data / "Cockatoo" / name, bad_file_bytes(kind))
    out = tmp_path / "m.json"
    assert cli("manifest", data, "-o", out) == 2
    err = one_line_error(capsys)
    assert str(data / "Cockatoo" / name) in err and words in err
    assert not out.exists() and not list(tmp_path.glob(".m.json*"))


def test_broken_link_is_unreadable(data, tmp_path, capsys):
    (data / "Cockatoo" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    assert cli("manifest", data, "-o", tmp_path / "m.json") == 2
    err = one_line_error(capsys)
    assert "gone.jpg" in err and "cannot be read" in err


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(data, tmp_path, capsys):
    target = data / "Cockatoo" / "000.jpg"
    target.chmod(0)
    try:
        assert cli("manifest", data, "-o", tmp_path / "m.json") == 2
    finally:
        target.chmod(0o644)
    assert "000.jpg" in one_line_error(capsys)


def test_several_bad_files_counted(data, tmp_path, capsys):
    for i in range(3):
        write(data / "Bananaquit" / f"zero{i}.jpg", b"")
    assert cli("manifest", data, "-o", tmp_path / "m.json") == 2
    assert "2 more bad file(s)" in one_line_error(capsys)


@pytest.mark.parametrize("case,words", [
    ("no-classes", "has no class subfolders"),
    ("no-images", "no images"),
    ("missing", "no such folder"),
    ("tiny", "leaves the validation set empty"),
])
def test_bad_folder(case, words, tmp_path, capsys):
    root = tmp_path / "data"
    root.mkdir()
    if case == "no-classes":
        write(root / "a.jpg", image_bytes(0))
    elif case == "no-images":
        (root / "cats").mkdir()
        write(root / "cats" / "notes.txt", b"x")
    elif case == "missing":
        root = tmp_path / "nope"
    else:
        make_class_folder(root, {"a": 2, "b": 2})  # int(0.2 * 4) = 0
    assert cli("manifest", root, "-o", tmp_path / "m.json") == 2
    assert words in one_line_error(capsys)
    assert not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("edit,words", [
    (lambda t: t[:-20], "not valid JSON"),
    (lambda t: t.replace('"label": 0', '"label": 7', 1), "out of range"),
    (lambda t: t.replace('"path": "Black Skimmer/', '"path": "../Black Skimmer/', 1), "escapes the data root"),
    (lambda t: t.replace('"path": "Black Skimmer/', '"path": "/Black Skimmer/', 1), "escapes the data root"),
    (lambda t: t.replace('"version": 1', '"version": 99'), "newer than this twinbench"),
    (lambda t: t.replace('"size": ', '"size": 1', 1), "fingerprint does not match"),
    (lambda t: t.replace('"format": "twinbench-manifest"', '"format": "other"'), "not a twinbench manifest"),
])
def test_hand_edited_manifest(edit, words, data, tmp_path, capsys):
    out = tmp_path / "m.json"
    build_manifest(data).save(out)
    out.write_text(edit(out.read_text()))
    assert cli("manifest", "verify", out) == 2
    err = one_line_error(capsys)
    assert words in err and str(out) in err


def test_duplicate_path(data, tmp_path):
    out = tmp_path / "m.json"
    build_manifest(data).save(out)
    raw = json.loads(out.read_text())
    raw["files"][1]["path"] = raw["files"][0]["path"]
    raw["files"][1]["label"] = raw["files"][0]["label"]
    out.write_text(json.dumps(raw))
    with pytest.raises(UserError, match="duplicate path"):
        load_manifest(out)


def test_existing_output_needs_force(data, tmp_path, capsys):
    out = tmp_path / "m.json"
    out.write_text("precious")
    assert cli("manifest", data, "-o", out) == 2
    assert "--force" in one_line_error(capsys) and out.read_text() == "precious"
    assert cli("manifest", data, "-o", out, "--force") == 0 and load_manifest(out)


@pytest.mark.parametrize("argv,words", [
    (["manifest", "verify"], "needs the MANIFEST"),
    (["manifest", "verify", "m.json", "-o", "x.json"], "drop -o"),
    (["manifest", "somewhere"], "missing -o MANIFEST"),
])
def test_command_forms(argv, words, capsys):
    assert cli(*argv) == 2
    assert words in one_line_error(capsys)


def test_bad_split_options(data, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli("manifest", data, "-o", tmp_path / "m.json", "--validation-split", "1.5")
    assert exc.value.code == 2 and "between 0 and 1" in capsys.readouterr().err
    assert cli("manifest", data, "-o", tmp_path / "m.json", "--seed", "-1") == 2
    assert "seed must be an integer" in one_line_error(capsys)


def test_real_cli_shows_no_traceback(data, tmp_path):
    write(data / "Cockatoo" / "empty.jpg", b"")
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "manifest", str(data), "-o", str(tmp_path / "m.json")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr and "empty.jpg" in proc.stderr


# ---- shared helpers --------------------------------------------------------------------------------
def test_epoch_permutation_is_pinned():
    p = epoch_permutation(123, 10, 0)
    assert sorted(p.tolist()) == list(range(10))
    # Pinned values: changing the algorithm would silently change every manifest-order run.
    assert p.tolist() == np.random.RandomState([123, 0]).permutation(10).tolist()
    assert epoch_permutation(123, 10, 0).tolist() == p.tolist()
    assert epoch_permutation(123, 10, 1).tolist() != p.tolist()
    assert epoch_permutation(124, 10, 0).tolist() != p.tolist()
    assert epoch_permutation(123, 452, 0)[:5].tolist() == [120, 152, 396, 65, 411]


def test_fixed_batches_order_keeps_the_batches_and_moves_them():
    n, b = 452, 16  # the demo's training split at the quick profile's batch
    first = fixed_batches_order(123, n, b, 0)
    assert first.tolist() == epoch_permutation(123, n, 0).tolist()  # epoch 0 is the manifest order's
    groups = lambda order: [frozenset(order[i:i + b].tolist()) for i in range(0, n, b)]
    for epoch in (1, 2, 3):
        order = fixed_batches_order(123, n, b, epoch)
        assert sorted(order.tolist()) == list(range(n))
        assert set(groups(order)) == set(groups(first))  # the same 29 batches ...
        assert groups(order)[-1] == groups(first)[-1] and len(groups(order)[-1]) == n % b  # the short one last
        assert groups(order) != groups(first)  # ... in another order
        assert order.tolist() == fixed_batches_order(123, n, b, epoch).tolist()  # pinned by (seed, epoch)
    assert groups(fixed_batches_order(123, n, b, 1)) != groups(fixed_batches_order(123, n, b, 2))
    assert set(groups(fixed_batches_order(124, n, b, 1))) != set(groups(first))  # the seed picks the batches
    # The manifest order draws new batches every epoch: the contrast this order exists for.
    assert set(groups(epoch_permutation(123, n, 1))) != set(groups(first))
    # epoch_order dispatches on the options; native has no shared order.
    options = PipelineOptions(batch_size=b, order="fixed-batches", seed=123)
    assert epoch_order(options, n, 2).tolist() == fixed_batches_order(123, n, b, 2).tolist()
    assert epoch_order(options.replace(order="manifest"), n, 2).tolist() == epoch_permutation(123, n, 2).tolist()
    with pytest.raises(ValueError, match="native"):
        epoch_order(options.replace(order="native"), n, 0)


def test_pipeline_options_validate_and_round_trip():
    options = PipelineOptions(image_size=64, decoder="seed", order="manifest", workers=0)
    assert PipelineOptions.from_dict(options.to_dict()) == options
    for bad in ({"decoder": "fast"}, {"batch_size": 0}, {"order": "random"}, {"preprocessing": "torch"},
                {"workers": -1}, {"seed": -3}, {"image_size": 2.5}):
        with pytest.raises(UserError):
            PipelineOptions(**bad)
    with pytest.raises(UserError, match="unknown pipeline option"):
        PipelineOptions.from_dict({"colour": "blue"})
