"""The record envelope, once: what every record twinbench writes starts with (a library).

    format     the record's kind, e.g. "twinbench.run", "twinbench.bench", "twinbench.parity"
    version    that format's version; readers refuse newer ones (``bench.runset``)
    created    ISO 8601 local time with offset
    twinbench  the version that wrote it
    machine    ``bench.envinfo.machine_info()``: CPU, cores, flags, python, platform
    commit     ``bench.envinfo.commit_info()``: the checkout's commit and whether it was dirty
    versions   framework package versions where the writer knows them ({} otherwise)

then the record's own fields. :func:`write` stores a record atomically with NaN and infinities as
null (JSON has neither). Records written before the envelope (``schema``/``schema_version``,
machine and commit under ``environment`` or ``env``) are still read: ``bench.runset``. Numpy-free at
import, as the benchmark side is.
"""

from __future__ import annotations

import datetime as _dt
import os
from typing import Any

from bench import __version__

ENVELOPE_KEYS = ("format", "version", "created", "twinbench", "machine", "commit", "versions")


def now_iso() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def envelope(format: str, version: int, *, created: str | None = None, machine: dict | None = None,
             commit: dict | None = None, versions: dict | None = None) -> dict[str, Any]:
    """The envelope's fields; machine and commit are read now unless given (a record rewritten
    many times keeps the ones it started with)."""
    from bench import envinfo

    return {"format": format, "version": version, "created": created or now_iso(), "twinbench": __version__,
            "machine": machine if machine is not None else envinfo.machine_info(),
            "commit": commit if commit is not None else envinfo.commit_info(),
            "versions": dict(versions or {})}


def record(format: str, version: int, body: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A whole record: the envelope, then ``body`` (which may not redefine an envelope key)."""
    clash = sorted(set(body) & set(ENVELOPE_KEYS))
    if clash:
        raise ValueError(f"{format} record body redefines envelope key(s) {', '.join(clash)}")
    return {**envelope(format, version, **fields), **body}


def write(path: str | os.PathLike, doc: dict[str, Any]) -> None:
    """Store ``doc`` atomically (``bench.atomic``), NaN and infinities as null."""
    from bench import atomic  # numpy: imported when a record is written, not at import

    missing = [k for k in ENVELOPE_KEYS if k not in doc]
    if missing:
        raise ValueError(f"{path}: record without envelope key(s) {', '.join(missing)}")
    atomic.write_json(path, atomic.json_safe(doc))
