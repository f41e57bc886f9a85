"""``twinbench report`` on the committed sample run: every section, every figure, both formats,
and reports from partial runs (what an interrupted ``twinbench run`` leaves)."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from bench.report import build_report
from bench.report_doc import markdown_table
from bench.runset import find, group_runs, metrics

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "records"
REPEAT_A = FIXTURES / "repeat-a"
TWINBENCH = [sys.executable, "-m", "bench.cli"]
SECTIONS = ("Summary", "Training", "Parity", "Performance", "Residual structure")


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("full")
    build_report([REPEAT_A], out)
    return out


def _figures_in_markdown(text: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)


def test_every_section_and_figure_is_written(full):
    md = (full / "report.md").read_text()
    for title in SECTIONS:
        assert f"\n## {title}\n" in md
    names = _figures_in_markdown(md)
    for expected in ("training.png", "epoch_times.png", "confusion.png", "predictions.png", "parity.png",
                     "throughput.png", "memory.png", "mfu.png", "blocks.png", "residual_ratios.png"):
        assert expected in names
    for name in names:
        with Image.open(full / name) as im:  # a real PNG with content, not an empty canvas
            assert im.format == "PNG" and im.width > 300 and im.height > 150
            assert len(im.convert("RGB").getcolors(maxcolors=1 << 20) or range(1 << 20)) > 20


def test_html_is_self_contained(full):
    html = (full / "report.html").read_text()
    md = (full / "report.md").read_text()
    sources = re.findall(r"<img [^>]*src='([^']+)'", html)
    assert len(sources) == len(_figures_in_markdown(md))
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
            im.verify()
    # Nothing fetched from anywhere: no external URLs, scripts or stylesheets.
    assert not re.search(r"(src|href)=['\"](https?:|//|file:)", html)
    assert "<script" not in html


def test_summary_holds_the_verdicts_and_conditions(full):
    md = (full / "report.md").read_text()
    summary = md.split("\n## Summary\n", 1)[1].split("\n## ", 1)[0]
    for text in ("parity", "final validation accuracy", "training throughput", "peak memory", "best MFU",
                 "| device |", "| versions |", "| commit |", "manifest fingerprint", "| threads |"):
        assert text in summary, text
    # The numbers are the record's: the final accuracies appear as the record states them.
    record = json.loads(next(REPEAT_A.rglob("run.json")).read_text())
    for fw in ("tf", "torch"):
        acc = record["frameworks"][fw]["final"]["val_accuracy"]
        assert f"{100 * acc:.1f}%" in summary


def test_conditions_of_a_repeated_set_name_every_seed(tmp_path):
    """A set of repeats is about seeds 123..125, not the last repeat's seed alone."""
    run = tmp_path / "run"
    shutil.copytree(REPEAT_A, run)
    train = next(run.glob("train-*"))
    doc = json.loads((train / "run.json").read_text())
    shutil.rmtree(train)
    for i in range(3):
        rdir = run / "train-set" / f"repeat-{i}"
        rdir.mkdir(parents=True)
        d = json.loads(json.dumps(doc))
        d["repeat"] = {"set": "train-set", "index": i, "of": 3, "seed": 123 + i}
        d["config"]["seed"] = 123 + i
        (rdir / "run.json").write_text(json.dumps(d))
    build_report([run], tmp_path / "out")
    summary = (tmp_path / "out" / "report.md").read_text().split("\n## Summary\n", 1)[1].split("\n## ", 1)[0]
    training = next(line for line in summary.splitlines() if line.startswith("| training |"))
    assert "seeds 123..125 (3 repeats, run i at seed + i)" in training, training
    assert "n=3" in summary
    # Three copies of one run: the same images right every time, so no part of a spread to split.
    md = (tmp_path / "out" / "report.md").read_text()
    n = len(doc["frameworks"]["torch"]["predictions"]["labels"])
    assert "Where each framework's spread comes from" in md
    assert f"PyTorch: std 0.0 over 3 runs; image-by-image disagreement alone 0.0 (0 of {n} validation images" in md


def test_parity_section_lists_the_ablations(full):
    md = (full / "report.md").read_text()
    parity = md.split("\n## Parity\n", 1)[1].split("\n## ", 1)[0]
    doc = json.loads((REPEAT_A / "parity.json").read_text())
    assert parity.lstrip().startswith("**" + doc["results"]["baseline"]["verdict"].upper())
    for name in doc["ablations"]:
        assert f"| {name} |" in parity


def test_residual_section_has_the_block_table_and_both_frameworks(full):
    md = (full / "report.md").read_text()
    res = md.split("\n## Residual structure\n", 1)[1].split("\n## ", 1)[0]
    assert "| 2a | conv_block |" in res and "| 5c | identity_block |" in res
    for col in ("before TensorFlow", "before PyTorch", "after TensorFlow", "after PyTorch"):
        assert col in res


def test_report_from_a_training_record_alone(tmp_path):
    only = tmp_path / "only-train"
    src = next(REPEAT_A.rglob("run.json")).parent
    shutil.copytree(src, only / src.name)
    out = subprocess.run([*TWINBENCH, "report", str(only), "-o", str(tmp_path / "r"), "--quiet"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    md = (tmp_path / "r" / "report.md").read_text()
    assert "No parity record" in md and "No benchmark record" in md
    assert "training.png" in _figures_in_markdown(md)


def test_bad_report_input_exits_2(tmp_path):
    (tmp_path / "empty").mkdir()
    out = subprocess.run([*TWINBENCH, "report", str(tmp_path / "empty"), "-o", str(tmp_path / "r")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "holds no twinbench run records" in out.stderr and "Traceback" not in out.stderr


def test_runs_group_by_session_and_metrics_pool_repeats():
    records = find([FIXTURES])
    runs = group_runs(records)
    assert sorted(r.name for r in runs) == sorted(json.loads((d / "session.json").read_text())["run_id"]
                                                  for d in (FIXTURES / "repeat-a", FIXTURES / "repeat-b"))
    one = metrics(runs[0].records)
    both = metrics(records)
    pick = lambda ms: next(m for m in ms if m.name == "throughput.train" and m.label("framework") == "torch")  # noqa: E731
    assert len(pick(both).samples) == 2 * len(pick(one).samples)


def test_markdown_table_escapes_pipes():
    import pandas as pd

    text = markdown_table(pd.DataFrame({"a": ["x|y", None], "b": [1.5, 2]}))
    assert text.splitlines() == ["| a | b |", "| --- | --- |", "| x\\|y | 1.5 |", "| - | 2.0 |"]


def test_two_models_get_a_side_by_side_section(tmp_path):
    """Records of resnet50 and resnet50_c3 together: the comparison table and per-block figure."""
    shutil.copytree(REPEAT_A, tmp_path / "resnet50")
    src = next(REPEAT_A.rglob("run.json"))
    doc = json.loads(src.read_text())
    doc["config"]["model"] = "resnet50_c3"
    doc["run_id"] = "train-c3"
    for run in doc["frameworks"].values():
        run["final"]["val_accuracy"] = 0.5
    (tmp_path / "c3").mkdir()
    (tmp_path / "c3" / "run.json").write_text(json.dumps(doc))
    out = tmp_path / "report"
    build_report([tmp_path / "resnet50", tmp_path / "c3"], out)
    md = (out / "report.md").read_text()
    side = md.split("\n## Models side by side\n", 1)[1]
    assert "| measure | resnet50 | resnet50_c3 |" in side
    assert "| parameters | 25,636,712 |" in side
    assert "| val acc PyTorch |" in side and "50.0%" in side
    assert "models.png" in _figures_in_markdown(md) and (out / "blocks_resnet50_c3.png").is_file()
    # The main sections still describe the run's own model.
    assert "`resnet50`, TensorFlow vs PyTorch" in md


def test_a_parity_trajectory_gets_its_figure(tmp_path):
    doc = json.loads((REPEAT_A / "parity.json").read_text())
    doc["results"]["baseline"]["trajectory"] = {
        "steps": 3, "loss_tf": [1.5, 1.2, 1.0], "loss_torch": [1.5, 1.2, 1.0001],
        "loss_rel": [1e-7, 3e-7, 1e-4], "param_rel": [1e-8, 1e-7, 1e-6], "bn_rel": [1e-9, 1e-8, 1e-7]}
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "parity.json").write_text(json.dumps(doc))
    build_report([tmp_path / "in"], tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "trajectory.png" in _figures_in_markdown(md) and "3 training steps" in md
    assert "No training record" in md


def test_ratio_note_says_where_the_target_is_judged():
    from bench.report_summary import ratio_note

    assert ratio_note(0.97, {"input_size": 224}) == "target >= 0.97; this run 224 px, same batch and precision"
    small = ratio_note(0.97, {"input_size": 64})
    assert small.startswith("target >= 0.97; judged at 224 px") and "this run 64 px" in small
    assert ratio_note(0.97, {}) == "target >= 0.97; same run, same batch and precision"


def test_a_slower_arm_gets_the_ops_where_its_step_loses(tmp_path):
    """The bench record's op gaps (bench.measure.op_gaps) become a table in Performance and a note
    beside the arm's ratio in the Summary."""
    runs = tmp_path / "runs"
    shutil.copytree(REPEAT_A, runs)
    path = next(runs.rglob("bench.json"))
    doc = json.loads(path.read_text())
    ops = [{"name": "aten::copy_", "ms": [307.7, 20.0], "calls": [1831, 120], "listed": [True, True], "excess_ms": 287.7},
           {"name": "aten::mul", "ms": [124.5, 0.0], "calls": [1654, None], "listed": [True, False], "excess_ms": 124.5}]
    doc["arm_ratios"] = [{"kind": "keras-torch/torch", "id": "a", "other_id": "b", "mode": "train", "batch": 8,
                          "input_size": 224, "precision": "fp32", "layout": "nhwc", "compile": "eager",
                          "ratio": 0.636, "low": 0.604, "high": 0.654, "windows": [5, 5], "images_per_s": [4.07, 6.40],
                          "op_gaps": {"clock": "cpu", "total_ms": [1985.0, 1300.0], "ops": ops}}]
    path.write_text(json.dumps(doc))
    build_report([runs], tmp_path / "r")
    md = (tmp_path / "r" / "report.md").read_text()
    performance = md.split("\n## Performance\n")[1].split("\n## ")[0]
    assert "Where Keras on torch is slower than PyTorch (0.64x, train, b8 224 px fp32)" in performance
    assert "1985 ms against 1300 ms" in performance and "n=1, no spread" in performance
    assert "| aten::copy_ | 307.7 (1831) | 20.0 (120) | 287.7 | 42.0% |" in performance
    assert "| aten::mul | 124.5 (1654) | 0 (not called) | 124.5 | 18.2% |" in performance
    summary = md.split("\n## Summary\n")[1].split("\n## ")[0]
    assert "slower mostly in aten::copy_ (+288 ms a step), aten::mul (+124 ms a step)" in summary
