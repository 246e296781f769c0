"""The results store: one loader for every reader, appends on fresh lines, legacy rows upgraded."""

import json
import shutil
from pathlib import Path

import pytest

from sca_lib import results, studies
from sca_lib.spec import SPEC_KEYS

COMMITTED = Path(__file__).resolve().parent.parent / "results" / "cpu-v1-superseded"


def _row(run_id="r1", **kw):
    config = studies.normalise({"mode": "fast", "backbone": "mobilenet_v3_small", "seed": 0, "attention": None})
    row = {"run_id": run_id, "config": config,
           "mAP": 0.5, "top1": 0.6, "study": "variants"}
    row.update(kw)
    return row


def test_committed_rows_load_upgraded_to_the_current_format():
    rows = results.load_results(COMMITTED)
    assert len(rows) == 57
    grid = {p["run_id"]: p for p in studies.build_grid("cpu_v1")}
    for r in rows:
        assert r["grid"] == "cpu_v1" and "preset" not in r
        c = r["config"]
        assert c["mode"] == "cpu" and "preset" not in c and set(SPEC_KEYS) <= set(c)
        assert r["run_id"] == results.config_hash(c) and r["stored_run_id"] != r["run_id"]
        assert grid[r["run_id"]]["config"] == c  # the current grid names the same run
    raw = json.loads((COMMITTED / "runs.shard-0-of-2.jsonl").read_text().splitlines()[0])
    assert results.upgrade_row(raw)["stored_run_id"] == raw["run_id"] and raw["config"]["preset"] == "cpu"  # untouched


def test_bad_lines_are_named_and_skipped_by_the_one_loader(tmp_path, capsys):
    path = tmp_path / "runs.jsonl"
    lines = [json.dumps(_row("a")), "{}", "null", json.dumps({k: v for k, v in _row("b").items() if k != "mAP"}),
             "[1, 2]", "not json", json.dumps(_row("c", status="failed", reason="diverged", mAP=None)),
             json.dumps(_row("d", status="weird")), '{"run_id": "e", "con']
    path.write_text("\n".join(lines))  # the last line is partial
    rows = results.read_results(path)
    assert [r["run_id"] for r in rows] == ["a", "c"]
    err = capsys.readouterr().err
    for n in (2, 3, 4, 5, 6, 8, 9):
        assert f"{path}:{n}:" in err
    assert f"{path}:9: a partial line" in err and "mAP" in err


def test_merge_names_the_bad_line_instead_of_a_raw_decode_error(tmp_path, capsys):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(json.dumps(_row("a")) + "\n" + '{"run_id": "x", "con')
    b.write_text(json.dumps(_row("b")) + "\n{}\n" + json.dumps(_row("a")) + "\n")
    assert results.merge_results([a, b], tmp_path / "out" / "m.jsonl") == 2
    err = capsys.readouterr().err
    assert f"{a}:2:" in err and f"{b}:2:" in err
    assert [r["run_id"] for r in results.load_results(tmp_path / "out")] == ["a", "b"]


def test_append_starts_on_a_fresh_line_after_a_partial_one(tmp_path, capsys):
    path = tmp_path / "runs.jsonl"
    results.append_row(path, _row("a"))
    with open(path, "a") as f:
        f.write('{"run_id": "cut", "con')
    results.append_row(path, _row("b"))
    assert f"{path}:2: ends in a partial line" in capsys.readouterr().err
    assert [r["run_id"] for r in results.load_results(tmp_path)] == ["a", "b"]
    assert path.read_text().endswith("\n") and len(path.read_text().splitlines()) == 3
    with pytest.raises(ValueError, match="refusing to append a bad row"):
        results.append_row(path, {"run_id": "c"})


def test_a_finished_row_wins_over_a_failed_one_of_the_same_run(tmp_path):
    results.append_row(tmp_path / "a.jsonl", _row("x", status="failed", reason="diverged"))
    results.append_row(tmp_path / "a.jsonl", _row("y"))
    results.append_row(tmp_path / "b.jsonl", _row("x", mAP=0.7))
    rows = results.load_results(tmp_path)
    assert [(r["run_id"], r.get("status", "ok")) for r in rows] == [("x", "ok"), ("y", "ok")]
    assert rows[0]["mAP"] == 0.7


def test_merging_the_committed_files_keeps_every_run(tmp_path):
    for f in COMMITTED.glob("*.jsonl"):
        shutil.copy(f, tmp_path / f.name)
    assert results.merge_results(sorted(tmp_path.glob("*.jsonl")), tmp_path / "m" / "runs.jsonl") == 57
    merged = results.load_results(tmp_path / "m")
    assert [r["run_id"] for r in merged] == [r["run_id"] for r in results.load_results(COMMITTED)]
