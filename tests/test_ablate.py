"""The ablation grids and runner: skip, resume, shard, merge, failed runs, the command line."""

import json

import numpy as np
import pytest

from sca_lib import ablate, report, studies
from sca_lib.engine import DivergenceError
from sca_lib.results import config_hash, is_finished, load_results, merge_results
from sca_lib.spec import SPEC_KEYS


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
    g1, g2 = studies.build_grid("cpu_v1"), studies.build_grid("cpu_v1")
    assert [p["run_id"] for p in g1] == [p["run_id"] for p in g2]
    ids = [p["run_id"] for p in g1]
    assert len(ids) == len(set(ids))
    # the default dual model (reduction default, no dropout, staged, plain init) is shared by knob studies
    shared = [p for p in g1 if len(p["studies"]) > 1]
    assert shared, "knob studies should reuse the default dual runs instead of training them again"
    assert {s for p in g1 for s in p["studies"]} == {"variants", "variants_single", "placement", "reduction",
                                                     "strength", "dropout", "schedule", "init"}
    assert all(p["config"]["seed"] in (0, 1, 2) for p in g1)
    assert [len(studies.build_grid(g)) for g in ("fast", "quick", "cpu_v1", "full")] == [10, 12, 57, 69]


def test_the_detection_cpu_grid_spells_out_its_protocol_and_its_primaries_name_real_settings():
    points = studies.build_grid("detection_cpu")
    assert len(points) == 3 * 5 and len({p["run_id"] for p in points}) == 15
    for p in points:
        c = p["config"]
        assert {k: c[k] for k in studies.DETECTION_CPU_PROTOCOL} == studies.DETECTION_CPU_PROTOCOL
        assert c["task"] == "detection" and c["backbone"] == "mobilenet_v3_small"
    # the report labels each run's setting; every declared primary must be one of those labels, or the
    # Holm family would silently lose it (a mislabelled primary would land among the secondaries)
    rows = [{"run_id": p["run_id"], "grid": "detection_cpu", "studies": p["studies"], "config": p["config"],
             "mAP": 0.5, "status": "ok"} for p in points]
    frame = report.results_frame(rows)
    labels = {(r.study, r.attention) for r in frame.itertuples()}
    assert labels == {("variants", "none"), ("variants", "dual"), ("variants", "fpn dual")}
    assert set(studies.GRIDS["detection_cpu"].primary) == labels - {("variants", "none")}
    full = studies.build_grid("detection_full")  # lite only on MobileNetV3; C4's seven blocks on ResNet50
    assert sorted((p["config"]["backbone"], str(p["config"]["attention"]), str(p["config"]["fpn_attention"]),
                   str(p["config"]["placement"])) for p in full if p["config"]["seed"] == 0) == [
        ("mobilenet_v3_large", "None", "None", "None"), ("mobilenet_v3_large", "None", "dual", "None"),
        ("mobilenet_v3_large", "dual", "None", "after_features.16"),
        ("mobilenet_v3_large", "lite", "None", "after_features.16"),
        ("resnet50", "None", "None", "None"), ("resnet50", "None", "dual", "None"),
        ("resnet50", "dual", "None", "detection")]


def test_the_cpu_grid_spells_out_its_protocol_and_places_the_module_at_a_7x7_map():
    points = studies.build_grid("cpu")
    # 4 variants x 2 schedules, 2 more recipe controls (5 seeds each); 2 ResNet18 settings (3 seeds)
    assert len(points) == (8 + 2) * 5 + 2 * 3
    assert {s for p in points for s in p["studies"]} == {"variants", "variants_single", "recipe", "resnet18"}
    # the strength follow-up's baseline is the very dual run of the cpu grid (same config, same run id)
    dual = {p["run_id"] for p in points if p["config"]["attention"] == "dual" and p["config"]["schedule"] == "staged"}
    strength = studies.build_grid("cpu_strength")
    assert {p["run_id"] for p in strength if p["config"]["strength"] is None} == dual and len(strength) == 10
    for p in points:
        c = p["config"]
        assert {k: c[k] for k in studies.CPU_PROTOCOL} == studies.CPU_PROTOCOL and c["data_version"] == 2
        if c["attention"] is not None:
            assert c["placement"] == studies.CPU_PLACEMENTS[c["backbone"]]
    plain = [p for p in points if p["config"]["attention"] is None and p["config"]["schedule"] == "staged"]
    assert plain[0]["studies"] == ["variants", "recipe"]  # one run serves both studies
    assert len(studies.GRIDS["cpu"].primary) == 6 and len(studies.GRIDS["cpu"].seeds) >= 5
    # the protocol changes the run id: the same model on the first protocol is another run
    v1 = {p["run_id"] for p in studies.build_grid("cpu_v1")}
    assert not v1 & {p["run_id"] for p in points}
    with pytest.raises(ValueError, match="settings may not set"):
        studies.Grid("x", "cpu", (0,), (), settings={"seed": 1})


def test_grid_configs_follow_the_training_contract():
    """A config holds the training mode, backbone, seed, every spec key (normalised) and the schedule."""
    contract = {"mode", "backbone", "seed", "schedule", *SPEC_KEYS}
    for name, grid in studies.GRIDS.items():
        for p in studies.build_grid(name):
            c = p["config"]
            detection = {"fpn_attention"} if grid.settings.get("task") == "detection" else set()
            assert set(c) == contract | ({"quick"} if grid.quick else set()) | set(grid.settings) | detection, name
            assert c["mode"] == grid.mode and p["run_id"] == config_hash(c)
    quick = studies.build_grid("quick")[0]["config"]
    assert quick["quick"] is True and quick["mode"] == "cpu"
    dual = next(p["config"] for p in studies.build_grid("fast") if p["config"]["attention"] == "dual")
    assert dual["placement"] is not None and dual["reduction"] == 8  # defaults spelled out
    plain = next(p["config"] for p in studies.build_grid("fast") if p["config"]["attention"] is None)
    assert plain["placement"] is None and plain["alpha"] is None and plain["drop_rate"] == 0.0
    assert studies.normalise({"backbone": "mobilenet_v3_small", "attention": "dual"}) == \
        studies.normalise({"backbone": "mobilenet_v3_small", "attention": "dual", "reduction": 8,
                           "placement": dual["placement"], "schedule": "staged"})


def test_every_study_knows_its_knob():
    for grid in studies.GRIDS.values():
        for study in grid.studies:
            assert study.knob in SPEC_KEYS + ("schedule",), study.name
            assert all(study.knob in v or study.knob == "attention" for v in study.variants), study.name
    assert studies.find_study("dropout").knob == "drop_rate"
    assert studies.find_study("variants", "fast").question == "plumbing check"
    assert studies.find_study("colour") is None


def test_grid_errors():
    with pytest.raises(ValueError, match="unknown ablation grid 'huge'"):
        studies.build_grid("huge")
    with pytest.raises(ValueError, match="unknown studies"):
        studies.build_grid("cpu", only=["colour"])
    for bad in ("1", "2/2", "a/b", "-1/3"):
        with pytest.raises(ValueError, match="--shard"):
            ablate.parse_shard(bad)
    assert ablate.parse_shard("1/4") == (1, 4)


def test_skip_finished_runs_and_no_duplicates(tmp_path):
    calls = []
    rows = ablate.run_grid("fast", tmp_path / "res", tmp_path / "runs", train_fn=fake_train(calls), progress=False)
    n = len(studies.build_grid("fast"))
    assert len(rows) == len(calls) == n == 10
    calls.clear()
    rows = ablate.run_grid("fast", tmp_path / "res", tmp_path / "runs", train_fn=fake_train(calls), progress=False)
    assert calls == [] and len(rows) == n
    lines = (tmp_path / "res" / "runs.jsonl").read_text().splitlines()
    assert len(lines) == n
    row = json.loads(lines[0])
    for key in ("run_id", "config", "git_commit", "mAP", "top1", "per_class_ap", "params_total", "flops",
                "wall_time_s", "images_per_s", "study", "grid", "status"):
        assert key in row
    assert row["run_id"] == config_hash(row["config"]) and row["grid"] == "fast" and row["status"] == "ok"


def _interrupted_on_third_run(tmp_path):
    """Runs the fast grid into ``tmp_path`` until a KeyboardInterrupt at the third run; returns
    ``(calls, train)``, the fake trainer's call log and the trainer for the rerun."""
    calls = []
    train = fake_train(calls)

    def dies_on_third(config, out_dir):
        if len(calls) == 2:
            raise KeyboardInterrupt
        return train(config, out_dir)

    with pytest.raises(KeyboardInterrupt):
        ablate.run_grid("fast", tmp_path, tmp_path / "runs", train_fn=dies_on_third, progress=False)
    return calls, train


def test_interrupted_grid_finishes_where_it_stopped(tmp_path):
    calls, train = _interrupted_on_third_run(tmp_path)
    assert len(load_results(tmp_path)) == 2
    calls.clear()
    rows = ablate.run_grid("fast", tmp_path, tmp_path / "runs", train_fn=train, progress=False)
    assert len(calls) == 8 and len(rows) == 10


def test_a_partial_last_line_loses_no_row(tmp_path, capsys):
    """Killed mid-write: the next run's row must not be glued onto the partial line and lost."""
    calls, train = _interrupted_on_third_run(tmp_path)
    with open(tmp_path / "runs.jsonl", "a") as f:
        f.write('{"run_id": "abc", "conf')  # the kill cut this row short
    rows = ablate.run_grid("fast", tmp_path, tmp_path / "runs", train_fn=train, progress=False)
    assert len(rows) == 10 and sorted(r["run_id"] for r in rows) == sorted(p["run_id"] for p in studies.build_grid("fast"))
    lines = (tmp_path / "runs.jsonl").read_text().split("\n")
    assert lines[2] == '{"run_id": "abc", "conf'  # set aside, left as it was
    assert f"{tmp_path / 'runs.jsonl'}:3" in capsys.readouterr().err


def test_a_diverging_run_is_recorded_as_failed_and_the_grid_goes_on(tmp_path):
    calls = []
    train = fake_train(calls)
    bad = next(p for p in studies.build_grid("fast") if p["config"]["attention"] == "dual")

    def diverges(config, out_dir):
        if config_hash(config) == bad["run_id"]:
            calls.append(config)
            raise DivergenceError("loss is nan at step 3; last good checkpoint kept")
        return train(config, out_dir)

    rows = ablate.run_grid("fast", tmp_path, tmp_path / "runs", train_fn=diverges, progress=False)
    assert len(rows) == 10 and len(calls) == 10
    failed = [r for r in rows if not is_finished(r)]
    assert [r["run_id"] for r in failed] == [bad["run_id"]]
    assert failed[0]["status"] == "failed" and "loss is nan" in failed[0]["reason"]
    calls.clear()  # a rerun does not try the recorded failure again ...
    ablate.run_grid("fast", tmp_path, tmp_path / "runs", train_fn=diverges, progress=False)
    assert calls == []
    rows = ablate.run_grid("fast", tmp_path, tmp_path / "runs", train_fn=train, progress=False, retry_failed=True)
    assert len(calls) == 1 and all(is_finished(r) for r in rows) and len(rows) == 10  # ... unless asked to


def test_shards_cover_the_grid_once_and_merge(tmp_path):
    calls = []
    for i in range(3):
        ablate.run_grid("fast", tmp_path / "res", tmp_path / "runs", shard=(i, 3), train_fn=fake_train(calls),
                        progress=False)
    files = sorted((tmp_path / "res").glob("*.jsonl"))
    assert [f.name for f in files] == [f"runs.shard-{i}-of-3.jsonl" for i in range(3)]
    ids = [json.loads(l)["run_id"] for f in files for l in f.read_text().splitlines()]
    assert sorted(ids) == sorted(p["run_id"] for p in studies.build_grid("fast"))
    out = tmp_path / "merged" / "runs.jsonl"
    assert merge_results(files + files, out) == 10  # duplicates dropped
    assert len(load_results(out.parent)) == 10
    with pytest.raises(FileNotFoundError, match="results file not found"):
        merge_results([tmp_path / "nope.jsonl"], out)


def test_default_folders_come_from_the_output_root(tmp_path, monkeypatch):
    monkeypatch.setenv("SCA_HOME", str(tmp_path))
    seen = []

    def train(config, out_dir):
        seen.append(out_dir)
        return fake_train([])(config, out_dir)

    ablate.run_grid("fast", train_fn=train, progress=False)
    assert (tmp_path / "results" / "fast" / "runs.jsonl").is_file()
    assert all(p.parent == tmp_path / "runs" / "ablate" / "fast" for p in seen)


def test_command_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ablate, "_default_train_fn", fake_train([]))
    res = tmp_path / "res"
    assert ablate.main(["--grid", "fast", "--results-dir", str(res), "--runs-dir", str(tmp_path / "runs"),
                        "--shard", "0/2", "--no-report"]) == 0
    assert "grid finished: 5 runs" in capsys.readouterr().out
    assert ablate.main(["--grid", "fast", "--results-dir", str(res), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 10 and sum(line.startswith("done") for line in out) == 5
    assert all(f"'{k}'" in out[0] for k in SPEC_KEYS if k != "attention")  # every attention setting listed
    with pytest.raises(SystemExit):
        ablate.main(["--preset", "fast"])  # the grid is --grid now
    capsys.readouterr()
    assert ablate.main(["merge", *map(str, res.glob("*.jsonl")), "--out", str(tmp_path / "m.jsonl")]) == 0
    assert "merged 5 runs" in capsys.readouterr().out


def test_fast_grid_end_to_end_with_the_real_engine(tmp_path):
    """The runner drives the real training engine: finished runs have metrics and are skipped on rerun."""
    rows = ablate.run_grid("fast", tmp_path / "res", tmp_path / "runs", progress=False)
    assert len(rows) == 10
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
    # the tiny study's report: chance and prior lines from the runs, the declared primary comparison corrected
    from sca_lib import report

    tables = report.write_report(tmp_path / "res", figures=False, quiet=True)
    t = tables["variants/mAP"].set_index("setting")
    assert {"chance (random scores)", "prior (image-blind)"} <= set(t.index)
    assert 0 < t.loc["chance (random scores)", "mAP mean"] < 100
    assert t.loc["dual", "family"] == "primary" and t.loc["dual", "p (Holm)"] != ""
    assert t.loc["dual", "significant"] == ("yes" if float(t.loc["dual", "p (Holm)"]) < 0.05 else "no")
    # the validation loss against the prior's loss, in the loss's own units
    loss = tables["variants/val_loss"].set_index("setting")
    assert loss.loc["prior (image-blind)", "val_loss mean"] == pytest.approx(
        np.mean([r["reference"]["prior_val_loss"] for r in rows]))
    assert "chance (random scores)" not in loss.index
    md = (tmp_path / "res" / "summary.md").read_text()
    assert "val_loss (validation loss" in md and "| prior (image-blind) |" in md


def test_command_line_errors_are_reasons_not_tracebacks(tmp_path, capsys):
    with pytest.raises(SystemExit):
        ablate.main(["--grid", "fast", "--seeds", "x"])
    assert "--seeds expects comma-separated integers" in capsys.readouterr().err
    assert ablate.main(["--grid", "FAST", "--only", "bogus", "--results-dir", str(tmp_path), "--dry-run"]) == 2
    assert "unknown studies ['bogus']" in capsys.readouterr().err
    from sca_lib import report

    assert report.main([str(tmp_path / "nothing")]) == 2 and "no results in" in capsys.readouterr().err


def test_detection_grid_end_to_end(tmp_path):
    """The runner trains Faster R-CNNs through the same engine; the report labels FPN attention and
    gives mAP with its chance and prior-box lines, and no top-1 (a detector has none)."""
    rows = ablate.run_grid("detection_fast", tmp_path / "res", tmp_path / "runs", progress=False)
    assert len(rows) == 6 and all(r["task"] == "detection" and r["top1"] is None for r in rows)
    assert all(0.0 <= r["mAP"] <= 1.0 and 0.0 <= r["mAP_voc2007"] <= 1.0 for r in rows)
    from sca_lib import report

    tables = report.write_report(tmp_path / "res", figures=True, quiet=True)
    assert set(tables) == {"variants/mAP"}
    t = tables["variants/mAP"].set_index("setting")
    # a detector's reference lines are random boxes and the prior-box detector, printed to two digits
    assert {"none", "dual", "fpn dual", "chance (random boxes)", "prior-box detector (image-blind)"} <= set(t.index)
    assert "chance (random scores)" not in t.index
    md = (tmp_path / "res" / "summary.md").read_text()
    chance = t.loc["chance (random boxes)", "mAP mean"]
    assert f"| chance (random boxes) |  | {report._reference_value(chance, 1)} |" in md
    assert t.loc["fpn dual", "vs"] == "none" and t.loc["fpn dual", "n seeds"] == 2
    assert t.loc["fpn dual", "family"] == "secondary" and t.loc["fpn dual", "p (Holm)"] != ""  # no primaries: one family
    assert (tmp_path / "res" / "fig_forest.png").exists()


def test_submitit_launcher_runs_each_shard_as_a_local_job(tmp_path, capsys):
    """--launcher submitit with submitit's local executor: two jobs (processes), one shard each, the real engine."""
    pytest.importorskip("submitit")
    res, runs = tmp_path / "res", tmp_path / "runs"
    args = ["--grid", "fast", "--only", "variants", "--seeds", "0", "--results-dir", str(res), "--runs-dir", str(runs),
            "--no-report", "--launcher", "submitit", "--cluster", "local", "--shards", "2", "--timeout-min", "10"]
    assert ablate.main(args) == 0
    out = capsys.readouterr().out
    assert "submitted 2 job(s) for grid 'fast' (local)" in out and "grid finished: 2 runs" in out
    assert sorted(p.name for p in res.glob("*.jsonl")) == ["runs.shard-0-of-2.jsonl", "runs.shard-1-of-2.jsonl"]
    rows = load_results(res)
    assert {r["config"]["attention"] for r in rows} == {None, "dual"} and all(0 <= r["mAP"] <= 1 for r in rows)
    assert len(list((runs / "submitit").rglob("*_log.out"))) == 2  # each job's log
    assert ablate.main(args) == 0  # resubmitting resumes: nothing left to train
    assert "0 to run" in "".join(p.read_text() for p in (runs / "submitit").rglob("*_log.out"))
    with pytest.raises(SystemExit):
        ablate.main(["--grid", "fast", "--launcher", "submitit", "--shard", "0/2"])
    assert "use --shards N" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ablate.main(["--grid", "fast", "--shards", "2"])
    assert "--shards needs --launcher submitit" in capsys.readouterr().err
    with pytest.raises(ValueError, match="`shards` to be a positive int, got 0"):
        ablate.launch_submitit("fast", 0, res, runs, cluster="local")
