"""The run record (bench.results): round trip, validation, newer schemas, atomic saves, discovery."""

from __future__ import annotations

import json
import math

import pytest

from bench import results
from bench.errors import UserError


def _record(run_id: str = "train-1", created: str | None = None) -> results.RunRecord:
    record = results.new_record(run_id, command=["twinbench", "train"], config={"epochs": 2},
                                manifest={"fingerprint": "abc", "classes": ["a", "b"]})
    if created:
        record.created = created
    run = results.new_framework_run()
    run.update({"status": "complete", "epochs_completed": 2,
                "history": [{"epoch": 1, "loss": 0.9, "val_loss": float("nan")}, {"epoch": 2, "loss": 0.5}],
                "memory": {"measure": "cpu_peak_rss", "peak_bytes": 123, "label": "peak RSS"}})
    record.frameworks["torch"] = run
    record.status = "complete"
    return record


def test_round_trip_through_a_run_directory(tmp_path):
    record = _record()
    path = results.save_record(record, tmp_path)
    assert path == tmp_path / results.RECORD_NAME
    loaded = results.load_record(tmp_path)  # a directory or the file itself
    assert loaded.path == path and results.load_record(path).run_id == "train-1"
    assert loaded.series("torch", "loss") == [0.9, 0.5]
    # NaN is not JSON: stored as null, and the file is strict JSON.
    doc = json.loads(path.read_text())
    assert doc["frameworks"]["torch"]["history"][0]["val_loss"] is None
    assert doc["format"] == results.SCHEMA and doc["version"] == results.SCHEMA_VERSION
    assert doc["machine"] == loaded.environment["machine"] and "commit" in doc and "schema" not in doc
    assert loaded.to_dict()["frameworks"] == doc["frameworks"]
    assert loaded.invocations[0]["command"] == ["twinbench", "train"]


def test_newer_schema_version_is_refused_with_an_upgrade_hint(tmp_path):
    results.save_record(_record(), tmp_path)
    path = tmp_path / results.RECORD_NAME
    doc = json.loads(path.read_text())
    doc["version"] = results.SCHEMA_VERSION + 1
    path.write_text(json.dumps(doc))
    with pytest.raises(UserError) as err:
        results.load_record(tmp_path)
    message = str(err.value)
    assert "newer" in message and "upgrade twinbench" in message and str(path) in message
    assert "\n" not in message
    # A record written before the envelope (schema/schema_version) is read, and refused the same way.
    legacy = {k: v for k, v in doc.items() if k not in ("format", "version", "machine", "commit", "twinbench")}
    legacy.update(schema=results.SCHEMA, schema_version=results.SCHEMA_VERSION,
                  environment={"machine": doc["machine"], "commit": doc["commit"], "frameworks": {}})
    path.write_text(json.dumps(legacy))
    assert results.load_record(tmp_path).environment["machine"] == doc["machine"]
    path.write_text(json.dumps({**legacy, "schema_version": results.SCHEMA_VERSION + 1}))
    with pytest.raises(UserError, match="upgrade twinbench"):
        results.load_record(tmp_path)


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d.update(format="other"), "not a twinbench run record"),
    (lambda d: d.update(status="bogus"), "unknown status"),
    (lambda d: d["frameworks"]["torch"]["history"].append({"epoch": 2}), "expected 3"),
    (lambda d: d["frameworks"]["torch"]["memory"].update(measure="vibes"), "memory.measure"),
    (lambda d: d.pop("run_id"), "'run_id'"),
])
def test_invalid_records_are_named(tmp_path, mutate, expected):
    results.save_record(_record(), tmp_path)
    path = tmp_path / results.RECORD_NAME
    doc = json.loads(path.read_text())
    mutate(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(UserError, match=expected):
        results.load_record(path)


def test_damaged_or_missing_record_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no run record"):
        results.load_record(tmp_path)
    (tmp_path / results.RECORD_NAME).write_text('{"schema": "twinbench.run", ')
    with pytest.raises(UserError, match="not valid JSON"):
        results.load_record(tmp_path)


def test_a_failed_save_leaves_the_previous_record_intact(tmp_path):
    record = _record()
    results.save_record(record, tmp_path)
    before = (tmp_path / results.RECORD_NAME).read_bytes()
    record.status = "not-a-status"  # refused before anything is written
    with pytest.raises(UserError):
        results.save_record(record)
    assert (tmp_path / results.RECORD_NAME).read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [results.RECORD_NAME]  # no temporary left behind


def test_find_records_oldest_first_and_skips_foreign_files(tmp_path):
    results.save_record(_record("late", "2025-02-01T00:00:00+00:00"), tmp_path / "a")
    results.save_record(_record("early", "2025-01-01T00:00:00+00:00"), tmp_path / "nested" / "b")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / results.RECORD_NAME).write_text('{"not": "ours"}')
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / results.RECORD_NAME).write_text("garbage")
    found = results.find_records(tmp_path)
    assert [results.load_record(p).run_id for p in found] == ["early", "late"]
    assert results.find_records(tmp_path, kind="bench") == []
    with pytest.raises(UserError, match="no such directory"):
        results.find_records(tmp_path / "missing")


def test_framework_lookup_names_what_exists():
    record = _record()
    with pytest.raises(KeyError, match="has no 'tf' results .*torch"):
        record.framework("tf")
    assert math.isnan(record.history("torch")[0]["val_loss"])
