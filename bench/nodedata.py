"""The manifest's images on a node of a cluster: fetched once per node, verified before use.

A Ray node trains on the images the manifest pins, never on whatever happens to lie at a path:
either the driver ships them once through Ray's object store (:func:`pack_images`) and the first
task on a node writes them into the node's cache (``$TWINBENCH_NODE_CACHE``, default
``$TMPDIR/twinbench-node-data-UID``), or every node reads a shared path (``--data-root`` with
``--executor ray``). Before any worker starts, every file is checked against the manifest's
sha256; a node whose copy differs refuses with one line naming the file (a UserError: exit 2).

Framework-free and Ray-free: the Ray task (``bench.ray_executor``) calls :func:`node_images`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

from bench import atomic
from bench.dataset import sha256_file
from bench.errors import UserError

CACHE_ENV = "TWINBENCH_NODE_CACHE"
COMPLETE_NAME = ".complete"  # written after the last image: a cache without it is refilled


def cache_root() -> Path:
    value = os.environ.get(CACHE_ENV)
    return Path(value) if value else Path(tempfile.gettempdir()) / f"twinbench-node-data-{os.getuid()}"


def pack_images(manifest) -> dict[str, bytes]:
    """Driver side: every file the manifest lists, by its manifest path (read once, put once)."""
    return {e.path: (Path(manifest.root) / e.path).read_bytes() for e in manifest.files}


def node_images(manifest, *, node: str, shared_root: str | os.PathLike | None = None,
                fetch: Callable[[], dict[str, bytes]] | None = None) -> Path:
    """The folder this node's worker reads the images from, checked against the manifest.

    ``shared_root``: a path every node mounts (verified here, on this node). Otherwise the
    node's cache for this manifest, filled from ``fetch()`` (the object-store copy) the first time.
    """
    if shared_root is not None:
        root = Path(shared_root)
        if not root.is_dir():
            raise UserError(f"node {node[:12]}: --data-root {root} is not a folder on this node; mount the "
                            f"shared data there or drop --data-root to ship the images through Ray")
        check_copy(manifest, root, node=node)
        return root
    if fetch is None:
        raise UserError("no images for the node: pass --data-root or let the driver ship them")  # our bug if hit
    root = cache_root() / manifest.fingerprint[:32]
    with atomic.file_lock(root.parent / f"{root.name}.lock"):  # one task per node fills the cache
        if not (root / COMPLETE_NAME).is_file():
            for path, data in fetch().items():
                atomic.write_bytes(root / path, data)
            atomic.write_text(root / COMPLETE_NAME, manifest.fingerprint + "\n")
    check_copy(manifest, root, node=node)
    return root


def check_copy(manifest, root: Path, *, node: str) -> None:
    """Every manifest file under ``root`` with the manifest's sha256, or a one-line refusal naming it."""
    for e in manifest.files:
        full = root / e.path
        if not full.is_file():
            raise UserError(f"node {node[:12]}: {full} is missing: this node's copy of the data is not the "
                            f"manifest's ({manifest.short_fingerprint}); the node refuses to train on it")
        digest = sha256_file(full)
        if digest != e.sha256:
            raise UserError(f"node {node[:12]}: {full} differs from the manifest (sha256 {digest[:12]}, manifest "
                            f"{e.sha256[:12]}); the node refuses to train on it: fix or remove its copy")


