"""The manifest's split equals Keras' own ``image_dataset_from_directory(...).file_paths``,
element for element and in order, on an awkward folder, for several seeds and fractions."""

from __future__ import annotations

import numpy as np
import pytest
import keras

from bench.dataset import build_manifest, index_directory
from tests.data_fixtures import make_awkward_tree

SEEDS = (123, 0, 7, 2**31 + 5)
FRACTIONS = (0.2, 0.1, 0.33, 0.5, 0.9)


@pytest.fixture(scope="module")
def awkward(tmp_path_factory):
    return make_awkward_tree(tmp_path_factory.mktemp("awkward"))


def keras_split(root, fraction, seed):
    train, val = keras.utils.image_dataset_from_directory(
        str(root), validation_split=fraction, subset="both", seed=seed, image_size=(8, 8), batch_size=4,
        verbose=False)
    return train, val


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("fraction", FRACTIONS)
def test_lists_equal_keras_file_paths(awkward, seed, fraction):
    manifest = build_manifest(awkward, validation_split=fraction, seed=seed)
    train, val = keras_split(awkward, fraction, seed)
    assert [str(p) for p in manifest.paths("training")] == train.file_paths
    assert [str(p) for p in manifest.paths("validation")] == val.file_paths
    assert manifest.class_names == train.class_names


def test_awkward_tree_exercises_the_rules(awkward):
    """The folder really holds the awkward cases (so the comparison above means something)."""
    manifest = build_manifest(awkward, validation_split=0.2, seed=123)
    paths = {e.path for e in manifest.files}
    assert "empty_cls" in manifest.class_names and ".hidden_cls" not in manifest.class_names
    assert manifest.empty_classes() == ["empty_cls"]
    for listed in ("b_class/.hidden.jpg", "b_class/.dotdir/6.jpg", "b_class/X.JPG", "b_class/d.jpg/7.jpg",
                   "b_class/sub/deep/1.jpg", "b_class/sub b/3.jpg", "b_class/日本.png", "ünïcode_cls/ß.jpg"):
        assert listed in paths
    assert not any(p.endswith((".txt", ".bak", ".tif", ".db", ".DS_Store")) or "link_dir" in p for p in paths)
    # os.walk roots sorted as strings: "sub" < "sub b" < "sub-c" < "sub.d" < "sub/deep" (' ' < '-' <
    # '.' < '/'), so sub/deep comes after its parent's siblings: a recursive sorted walk would differ.
    rel, _, _ = index_directory(str(awkward))
    order = [p for p in rel if p.startswith("b_class/sub")]
    assert order == ["b_class/sub/2.jpg", "b_class/sub b/3.jpg", "b_class/sub-c/4.png", "b_class/sub.d/5.jpg",
                     "b_class/sub/deep/1.jpg"]


def test_validation_labels_equal_keras(awkward):
    """Keras' validation subset is not shuffled: its labels follow file_paths, as ours do."""
    manifest = build_manifest(awkward, validation_split=0.33, seed=7)
    _, val = keras_split(awkward, 0.33, 7)
    labels = np.concatenate([y.numpy() for _, y in val])
    np.testing.assert_array_equal(labels, manifest.labels("validation"))
