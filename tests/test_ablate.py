"""The ablation runner (skip, resume, shard, merge) and the statistics behind its tables."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from sca_lib import ablate, report


def fake_train(calls):
    """A deterministic stand-in for the training engine: mAP depends on the variant and the seed."""

    def train(config, out_dir):
        calls.append(config)
        bonus = {"none": 0.0, "channel": 0.02, "spatial": -0.01, "dual": 0.03, "lite": 0.01}[config["attention"] or "none"]
        noise = 0.001 * config["seed"]
        return {"mAP": 0.5 + bonus + noise, "top1": 0.6 + bonus, "per_class_ap": [0.5] * 20,
                "params_total": 1000, "flops": 10, "wall_time_s": 1.0, "images_per_s": 100.0, "config": config}

    return train


def test_grid_is_deterministic_and_deduplicates_shared_configs():
    g1, g2 = ablate.build_grid("cpu"), ablate.build_grid("cpu")
    assert [p["run_id"] for p in g1] == [p["run_id"] for p in g2]
    ids = [p["run_id"] for p in g1]
    assert len(ids) == len(set(ids))
    # the default dual model (reduction default, no dropout, staged, plain init) is shared by knob studies
    shared = [p for p in g1 if len(p["studies"]) > 1]
    assert shared, "knob studies should reuse the default dual runs instead of training them again"
    assert {s for p in g1 for s in p["studies"]} == {"variants", "variants_single", "placement", "reduction", "strength", "dropout", "schedule", "init"}
    assert all(p["config"]["seed"] in (0, 1, 2) for p in g1)


def test_grid_errors():
    with pytest.raises(ValueError, match="unknown ablation preset 'huge'"):
        ablate.build_grid("huge")
    with pytest.raises(ValueError, match="unknown studies"):
        ablate.build_grid("cpu", only=["colour"])
    for bad in ("1", "2/2", "a/b", "-1/3"):
        with pytest.raises(ValueError, match="--shard"):
            ablate.parse_shard(bad)
    assert ablate.parse_shard("1/4") == (1, 4)


def test_skip_finished_runs_and_no_duplicates(tmp_path):
    calls = []
    rows = ablate.run_grid("fast", tmp_path / "res", tmp_path / "runs", train_fn=fake_train(calls), progress=False)
    n = len(ablate.build_grid("fast"))
    assert len(rows) == len(calls) == n == 4
    calls.clear()
    rows = ablate.run_grid("fast", tmp_path / "res", tmp_path / "runs", train_fn=fake_train(calls), progress=False)
    assert calls == [] and len(rows) == n
    lines = (tmp_path / "res" / "runs.jsonl").read_text().splitlines()
    assert len(lines) == n
    row = json.loads(lines[0])
    for key in ("run_id", "config", "git_commit", "mAP", "top1", "per_class_ap", "params_total", "flops",
                "wall_time_s", "images_per_s", "study"):
        assert key in row
    assert row["run_id"] == ablate.config_hash(row["config"])


def test_interrupted_grid_finishes_where_it_stopped(tmp_path):
    calls = []
    train = fake_train(calls)

    def dies_on_third(config, out_dir):
        if len(calls) == 2:
            raise KeyboardInterrupt
        return train(config, out_dir)

    with pytest.raises(KeyboardInterrupt):
        ablate.run_grid("fast", tmp_path, tmp_path / "runs", train_fn=dies_on_third, progress=False)
    assert len(ablate.load_results(tmp_path)) == 2
    calls.clear()
    rows = ablate.run_grid("fast", tmp_path, tmp_path / "runs", train_fn=train, progress=False)
    assert len(calls) == 2 and len(rows) == 4
    # a truncated last line (killed mid-write) is ignored, not fatal
    with open(tmp_path / "runs.jsonl", "a") as f:
        f.write('{"run_id": "abc", "conf')
    assert len(ablate.load_results(tmp_path)) == 4


def test_shards_cover_the_grid_once_and_merge(tmp_path):
    calls = []
    for i in range(3):
        ablate.run_grid("fast", tmp_path / "res", tmp_path / "runs", shard=(i, 3), train_fn=fake_train(calls), progress=False)
    files = sorted((tmp_path / "res").glob("*.jsonl"))
    assert [f.name for f in files] == [f"runs.shard-{i}-of-3.jsonl" for i in range(3)]
    ids = [json.loads(l)["run_id"] for f in files for l in f.read_text().splitlines()]
    assert sorted(ids) == sorted(p["run_id"] for p in ablate.build_grid("fast"))
    out = tmp_path / "merged" / "runs.jsonl"
    assert ablate.merge_results(files + files, out) == 4  # duplicates dropped
    assert len(ablate.load_results(out.parent)) == 4
    with pytest.raises(FileNotFoundError, match="results file not found"):
        ablate.merge_results([tmp_path / "nope.jsonl"], out)


def test_t_interval_matches_hand_computation():
    m, lo, hi, n = report.mean_ci([1.0, 2.0, 3.0])
    half = 4.303 * 1.0 / math.sqrt(3)
    assert (m, n) == (2.0, 3) and lo == pytest.approx(2 - half) and hi == pytest.approx(2 + half)
    assert report.mean_ci([5.0])[1:3] == (float("-inf"), float("inf"))
    assert report.t_quantile(100) == 1.96


def test_paired_difference_uses_common_seeds_only():
    a = {0: 0.60, 1: 0.62, 2: 0.64, 3: 0.9}
    b = {0: 0.50, 1: 0.51, 2: 0.55}
    d, lo, hi, n = report.paired_difference(a, b)
    diffs = np.array([0.10, 0.11, 0.09])
    assert n == 3 and d == pytest.approx(diffs.mean())
    assert hi - d == pytest.approx(4.303 * diffs.std(ddof=1) / math.sqrt(3))


def _rows(values):
    rows = []
    for attention, maps in values.items():
        for seed, v in enumerate(maps):
            cfg = ablate._normalise({"preset": "cpu", "backbone": "resnet18", "seed": seed, "attention": attention})
            rows.append({"run_id": f"{attention}-{seed}", "study": "variants", "studies": ["variants"], "config": cfg,
                         "mAP": v, "top1": v, "params_total": 10, "wall_time_s": 1.0, "git_commit": "abc"})
    return rows


def test_study_table_marks_significance_on_a_hand_made_results_file():
    rows = _rows({None: [0.50, 0.52, 0.54], "dual": [0.60, 0.62, 0.64], "channel": [0.49, 0.55, 0.52]})
    table = report.study_table(report.results_frame(rows), "variants", "mAP").set_index("setting")
    assert table.loc["dual", "diff"] == pytest.approx(10.0)          # +10 points on every seed
    assert table.loc["dual", "significant"] == "yes"
    assert table.loc["channel", "significant"] == "no"               # diffs -1, +3, -2: CI contains 0
    assert table.loc["none", "significant"] == "" and math.isnan(table.loc["none", "diff"])
    assert table.loc["dual", "mAP mean"] == pytest.approx(62.0)


def test_write_report_files(tmp_path):
    rows = _rows({None: [0.50, 0.52, 0.54], "dual": [0.60, 0.62, 0.64]})
    with open(tmp_path / "runs.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    tables = report.write_report(tmp_path, quiet=True)
    assert (tmp_path / "summary.md").read_text().count("| resnet18 |") == 4  # 2 settings x (mAP, top1)
    assert (tmp_path / "fig_variants.png").stat().st_size > 1000
    assert set(pd.read_csv(tmp_path / "summary.csv")["metric"]) == {"mAP", "top1"}
    assert "variants/mAP" in tables
    with pytest.raises(FileNotFoundError, match="no results in"):
        report.write_report(tmp_path / "empty")


def test_fast_preset_end_to_end_with_the_real_engine(tmp_path):
    """The runner drives the real training engine: finished runs have metrics and are skipped on rerun."""
    rows = ablate.run_grid("fast", tmp_path / "res", tmp_path / "runs", progress=False)
    assert len(rows) == 4
    for r in rows:
        assert 0.0 <= r["mAP"] <= 1.0 and 0.0 <= r["top1"] <= 1.0 and len(r["per_class_ap"]) == 20
        assert r["params_total"] > 0 and r["flops"] > 0 and r["images_per_s"] > 0
        assert (tmp_path / "runs" / r["run_id"]).is_dir()
    dual = [r for r in rows if r["config"]["attention"] == "dual"]
    none = [r for r in rows if r["config"]["attention"] is None]
    assert dual[0]["params_total"] > none[0]["params_total"]
    calls = []
    again = ablate.run_grid("fast", tmp_path / "res", tmp_path / "runs", progress=False, train_fn=fake_train(calls))
    assert calls == [] and [r["run_id"] for r in again] == [r["run_id"] for r in rows]
