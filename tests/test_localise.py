"""The localisation study command: which models it scores, its rows, resumption and report."""

import json

import pytest

from sca_lib import localise
from sca_lib.config import repo_root
from sca_lib.results import load_results
from sca_lib.train import train_from_config


def test_the_declared_studies_score_the_committed_runs():
    cpu = localise.study_points("cpu")
    assert len(cpu) == 15 and sorted({p["setting"] for p in cpu}) == ["dual", "none", "spatial"]
    committed = {r["run_id"]: r for r in load_results(repo_root() / "results" / "cpu")}
    assert all(p["run_id"] in committed and committed[p["run_id"]]["study"] == "variants" for p in cpu)
    det = localise.study_points("detection_cpu")
    committed = {r["run_id"] for r in load_results(repo_root() / "results" / "detection_cpu")}
    assert len(det) == 10 and {p["run_id"] for p in det} <= committed
    assert sorted({p["setting"] for p in det}) == ["dual", "fpn dual"]
    for st in localise.LOCALISATION_STUDIES.values():  # every declared comparison names scored methods
        labels = {f"{s}/{m}" for s in st.settings for m in ("attention", "gradcam", "attention[0]", "attention[1]",
                                                              "attention[pool]")} | {"centre"}
        assert all(a in labels and b in labels for a, b in st.primary + st.secondary), st.name
    with pytest.raises(ValueError, match="unknown localisation study 'nope'"):
        localise.study_points("nope")


def test_a_setting_the_grid_lacks_is_an_error(monkeypatch):
    bad = localise.LocalisationStudy("bad", "fast", "variants", ("none", "lite"), "?")
    monkeypatch.setitem(localise.LOCALISATION_STUDIES, "bad", bad)
    with pytest.raises(ValueError, match=r"has no setting \['lite'\]"):
        localise.study_points("bad")


def _small(cfg, run_dir):
    return train_from_config({**cfg, "train_images": 16, "val_images": 8}, run_dir)


def test_fast_study_end_to_end(tmp_path, capsys):
    res, runs = tmp_path / "res", tmp_path / "runs"
    rows = localise.run_study("fast", res, runs, seeds=[0, 1], train_fn=_small, progress=False, limit=6)
    by = {}
    for r in rows:
        by.setdefault(r["setting"], set()).add(r["method"])
    assert by == {"centre": {"centre"}, "none": {"gradcam"}, "dual": {"attention", "gradcam"}}
    models = [r for r in rows if r["method"] != "centre"]
    assert len(models) == 6 and all(r["eval_images"] == 6 and r["committed_mAP"] is None for r in models)
    assert all(0 <= r["pointing"] <= 100 and 0 <= r["energy"] <= 100 and r["pairs"] > 0 for r in rows)
    assert len({r["pointing_chance"] for r in rows}) == 1  # chance needs no model
    assert all(r["model_mAP"] == json.loads((runs / r["run_id"] / "summary.json").read_text())["mAP"] for r in models)
    calls = []
    again = localise.run_study("fast", res, runs, seeds=[0, 1], progress=False, limit=6,
                               train_fn=lambda cfg, d: calls.append(d))
    assert calls == [] and len(again) == len(rows)  # every model scored already: nothing trained or scored
    # a kill in the middle of a model's rows: the complete lines stay, the partial one is skipped and
    # that model is scored again (from its finished run, not retrained)
    f = res / "rows.jsonl"
    lines = f.read_text().splitlines(keepends=True)
    f.write_text("".join(lines[:-1]) + lines[-1][:40])
    assert len(localise.load_rows(res)) == len(rows) - 1
    capsys.readouterr()
    healed = localise.run_study("fast", res, runs, seeds=[0, 1], progress=False, limit=6, train_fn=_small)
    assert "not a localisation row" in capsys.readouterr().err
    assert sorted((r["run_id"], r["method"], r["pointing"]) for r in healed) == \
        sorted((r["run_id"], r["method"], r["pointing"]) for r in rows)
    levels, comps = localise.write_report("fast", res, quiet=True)
    assert {"centre (baseline)", "dual/attention", "none/gradcam"} <= set(levels["method"]) and \
        levels["method"].str.startswith("chance").any()
    prim = comps[comps["family"] == "primary"]
    assert len(prim) == 2 and set(prim["metric"]) == {"pointing"} and prim["p (Holm)"].notna().all()
    md = (res / "summary.md").read_text()
    assert "| primary | pointing | dual/attention | centre | 2 |" in md and (res / "fig_pointing.png").exists()
    ch = localise.channel_study("fast", res, runs, seeds=[0, 1], shuffles=3, quiet=True)  # only the dual models have a channel gate
    assert set(ch["setting"]) == {"dual"} and len(ch) == 2 and ch["r2"].between(0, 1).all()
    assert (res / "channels.md").exists() and (res / "fig_channels.png").exists()
    fig = localise.maps_figure("fast", runs, seed=0, n_images=2)
    assert len(fig.axes) == 2 * 4  # image, plain Grad-CAM, dual attention, dual Grad-CAM
    assert localise.main(["--study", "fast", "--seeds", "0,1,2", "--results-dir", str(res), "--list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("scored") for line in out) == 4 and sum(line.startswith("todo") for line in out) == 2
    assert localise.main(["--study", "fast", "--results-dir", str(tmp_path / "empty"), "--report-only"]) == 2
    assert "no localisation rows" in capsys.readouterr().err


def test_detector_study_scores_each_pyramid_level(tmp_path):
    rows = localise.run_study("detection_fast", tmp_path / "res", tmp_path / "runs", seeds=[0], progress=False,
                              limit=4, train_fn=_small)
    methods = {(r["setting"], r["method"]) for r in rows}
    assert ("dual", "attention") in methods and ("centre", "centre") in methods
    levels = {m for s, m in methods if s == "fpn dual"}
    assert {"attention[0]", "attention[1]"} <= levels and all(m.startswith("attention[") for m in levels)


def test_a_model_that_is_not_the_committed_one_is_refused(tmp_path, monkeypatch):
    """A rebuilt model whose mAP differs from the grid's committed row is an error unless allowed;
    rows scored on another image set cannot join a results folder."""
    monkeypatch.setattr(localise, "_committed_row", lambda grid, run_id: {"mAP": 0.123456})
    kw = dict(seeds=[0], progress=False, limit=4, train_fn=_small)
    with pytest.raises(RuntimeError, match="not the model the study measured"):
        localise.run_study("fast", tmp_path / "res", tmp_path / "runs", **kw)
    assert not [r for r in localise.load_rows(tmp_path / "res") if r["method"] != "centre"]  # nothing scored
    rows = localise.run_study("fast", tmp_path / "res", tmp_path / "runs", allow_mismatch=True, **kw)
    models = [r for r in rows if r["method"] != "centre"]
    assert models and all(r["reproduced"] is False and r["committed_mAP"] == 0.123456 for r in models)
    with pytest.raises(ValueError, match="cannot share one report"):
        localise.run_study("fast", tmp_path / "res", tmp_path / "runs", **{**kw, "limit": 5})


def test_report_rows_belong_to_the_study_and_one_run_per_seed(tmp_path, capsys):
    st = localise.LOCALISATION_STUDIES["fast"]
    pts = localise.study_points("fast", [0, 1])
    base = {"eval_images": 4, "scaled_tolerance": 1.0, "pairs": 5, "pairs_difficult": 1, "skipped_difficult": 0,
            **{m: 50.0 for m in localise.METRICS}, "pointing_chance": 10.0, "pointing_scaled_chance": 5.0,
            "pointing_difficult_chance": 10.0, "area": 5.0, "flat_maps": 0}
    rows = [{**base, "run_id": "centre", "method": "centre", "setting": "centre", "seed": None}]
    for p in pts:
        rows.append({**base, "run_id": p["run_id"], "method": "gradcam", "setting": p["setting"],
                     "seed": p["config"]["seed"]})
    rows.append({**base, "run_id": "elsewhere", "method": "gradcam", "setting": "none", "seed": 0, "pointing": 0.0})
    levels, comps = localise.summary_tables(rows, st)
    assert "left out" in capsys.readouterr().err  # the stray run's row is not averaged in
    assert levels.set_index("method").loc["none/gradcam", "pointing"] == 50.0
    missing = comps[comps["family"] == "not scored"]  # no dual/attention rows: listed, outside every family
    assert set(missing["a"]) == {"dual/attention"} and missing["p (Holm)"].isna().all()
    twin = next(p for p in localise.study_points("fast", [0, 1, 2]) if p["config"]["seed"] == 2)
    bad = rows[:-1] + [{**rows[1], "run_id": twin["run_id"]}]  # a second run claims none seed 0
    with pytest.raises(ValueError, match="claim setting 'none' seed 0"):
        localise.summary_tables(bad, st)


def test_explained_variance_is_one_for_class_driven_weights_and_small_for_noise():
    import torch

    g = torch.Generator().manual_seed(0)
    y = (torch.rand(200, 5, generator=g) < 0.3).float()
    w = y @ torch.randn(5, 8, generator=g) + 0.5  # every channel a linear function of the classes
    assert localise.explained_variance(w, y) == pytest.approx(1.0)
    noise = torch.randn(200, 8, generator=g)
    assert localise.explained_variance(noise, y) < 0.1  # 5 regressors on 200 images explain little of noise
