"""The report: statistics, tables from hand-made and committed results, bad and failed rows."""

import ast
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sca_lib import report, studies
from sca_lib.results import append_row

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "results" / "cpu-v1-superseded"


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
            cfg = studies.normalise({"mode": "cpu", "backbone": "resnet18", "seed": seed, "attention": attention})
            rows.append({"run_id": f"{attention}-{seed}", "study": "variants", "studies": ["variants"], "config": cfg,
                         "mAP": v, "top1": v, "params_total": 10, "wall_time_s": 1.0, "git_commit": "abc"})
    return rows


def _write(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def test_study_table_marks_significance_on_a_hand_made_results_file():
    rows = _rows({None: [0.50, 0.52, 0.54], "dual": [0.60, 0.62, 0.64], "channel": [0.49, 0.55, 0.52]})
    table = report.study_table(report.results_frame(rows), "variants", "mAP").set_index("setting")
    assert table.loc["dual", "diff"] == pytest.approx(10.0)          # +10 points on every seed
    assert table.loc["dual", "significant"] == "yes"
    assert table.loc["channel", "significant"] == "no"               # diffs -1, +3, -2: CI contains 0
    assert table.loc["none", "significant"] == "" and math.isnan(table.loc["none", "diff"])
    assert table.loc["dual", "mAP mean"] == pytest.approx(62.0)


def test_write_report_files(tmp_path):
    _write(tmp_path / "runs.jsonl", _rows({None: [0.50, 0.52, 0.54], "dual": [0.60, 0.62, 0.64]}))
    tables = report.write_report(tmp_path, quiet=True)
    assert (tmp_path / "summary.md").read_text().count("| resnet18 |") == 4  # 2 settings x (mAP, top1)
    assert (tmp_path / "fig_variants.png").stat().st_size > 1000
    assert set(pd.read_csv(tmp_path / "summary.csv")["metric"]) == {"mAP", "top1"}
    assert "variants/mAP" in tables
    with pytest.raises(FileNotFoundError, match="no results in"):
        report.write_report(tmp_path / "empty")


def test_the_committed_results_regenerate_the_same_tables(tmp_path, monkeypatch):
    """Byte for byte, from the committed (older-format) rows, with the command the header names."""
    (tmp_path / "results" / COMMITTED.name).mkdir(parents=True)
    for f in COMMITTED.glob("*.jsonl"):
        shutil.copy(f, tmp_path / "results" / COMMITTED.name / f.name)
    monkeypatch.chdir(tmp_path)
    report.write_report(Path("results") / COMMITTED.name, figures=False, quiet=True)
    for name in ("summary.md", "summary.csv"):
        assert (tmp_path / "results" / COMMITTED.name / name).read_bytes() == (COMMITTED / name).read_bytes(), name


def test_rows_of_the_wrong_shape_do_not_crash_the_report(tmp_path, capsys):
    rows = _rows({None: [0.50, 0.52, 0.54], "dual": [0.60, 0.62, 0.64]})
    _write(tmp_path / "runs.jsonl", rows)
    with open(tmp_path / "runs.jsonl", "a") as f:
        f.write("{}\nnull\n" + json.dumps({k: v for k, v in rows[0].items() if k != "mAP"} | {"run_id": "x"}) + "\n")
    tables = report.write_report(tmp_path, figures=False, quiet=True)
    assert tables["variants/mAP"]["n seeds"].tolist() == [3, 3]
    err = capsys.readouterr().err
    assert all(f"runs.jsonl:{n}:" in err for n in (7, 8, 9))


def test_failed_runs_are_left_out_of_the_statistics_and_listed(tmp_path):
    rows = _rows({None: [0.50, 0.52, 0.54], "dual": [0.60, 0.62, 0.64]})
    for r in rows:
        r["grid"] = "fast"
    _write(tmp_path / "runs.jsonl", rows)
    cfg = studies.normalise({"mode": "cpu", "backbone": "resnet18", "seed": 3, "attention": "dual"})
    append_row(tmp_path / "runs.jsonl", {"run_id": "dual-3", "study": "variants", "grid": "fast", "config": cfg,
                                         "status": "failed", "reason": "loss is nan at step 7 | epoch 1"})
    tables = report.write_report(tmp_path, figures=False, quiet=True)
    assert tables["variants/mAP"]["n seeds"].tolist() == [3, 3]
    md = (tmp_path / "summary.md").read_text()
    assert "6 runs (1 more failed, listed at the end)" in md
    assert "## Failed runs" in md and "| dual-3 | variants | resnet18 | dual | 3 | loss is nan at step 7 \\| epoch 1 |" in md
    assert "--grid fast --retry-failed" in md
    assert "dual-3" not in (tmp_path / "summary.csv").read_text()


def _imports(module):
    tree = ast.parse((ROOT / "sca_lib" / f"{module}.py").read_text())
    return {(n.module or "").lstrip(".") for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | \
           {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module is None for a in n.names}


def test_only_the_runner_imports_the_report():
    for module in ("report", "results", "studies"):
        assert "ablate" not in _imports(module), module
    for module in ("results", "studies"):
        assert "report" not in _imports(module), module
    assert "report" in _imports("ablate")


# --- declared primary comparisons, Holm, reference lines ------------------------------------------

def _tiny_grid(monkeypatch, seeds=(0, 1, 2, 3, 4)):
    variants = studies.Study("variants", "which path?", "attention",
                             ({"attention": None}, {"attention": "dual"}, {"attention": "channel"},
                              {"attention": "spatial"}, {"attention": "lite"}), ("mobilenet_v3_small",),
                             baseline="plain")
    grid = studies.Grid("tiny", "fast", seeds, (variants,), primary=(("variants", "dual"),))
    monkeypatch.setitem(studies.GRIDS, "tiny", grid)
    return grid


def test_a_grid_with_primary_comparisons_needs_five_seeds_and_known_studies():
    v = studies.Study("variants", "q", "attention", ({"attention": None},), ("resnet18",), baseline="plain")
    with pytest.raises(ValueError, match="at least 5"):
        studies.Grid("g", "fast", (0, 1, 2), (v,), primary=(("variants", "dual"),))
    with pytest.raises(ValueError, match="studies it does not have"):
        studies.Grid("g", "fast", (0, 1, 2, 3, 4), (v,), primary=(("placement", "dual"),))


def test_holm_decides_significance_and_an_uncorrected_secondary_p_is_not_enough(tmp_path, monkeypatch):
    _tiny_grid(monkeypatch)
    base = [0.50, 0.52, 0.54, 0.51, 0.53]
    plus = lambda ds: [b + d for b, d in zip(base, ds)]  # noqa: E731
    values = {None: base, "dual": plus([0.10] * 5),                       # primary, large and steady
              "channel": plus([0.010, 0.014, 0.006, 0.0, 0.020]),         # secondary, p = 0.043 alone
              "spatial": plus([0.0, 0.001, -0.001, 0.0, 0.0]), "lite": plus([0.0, 0.002, -0.002, 0.001, -0.001])}
    rows = []
    for attention, maps in values.items():
        for seed, v in enumerate(maps):
            cfg = studies.normalise({"mode": "fast", "backbone": "mobilenet_v3_small", "seed": seed, "attention": attention})
            rows.append({"run_id": studies.config_hash(cfg), "study": "variants", "studies": ["variants"], "grid": "tiny",
                         "config": cfg, "mAP": v, "top1": v, "git_commit": "abc", "status": "ok",
                         "reference": {"chance_mAP": 0.10, "chance_mAP_sd": 0.005, "chance_top1": 0.08,
                                       "prior_mAP": 0.11, "prior_top1": 0.12, "prior_val_loss": 5.5}})
    _write(tmp_path / "runs.jsonl", rows)
    tables = report.write_report(tmp_path, quiet=True)
    t = tables["variants/mAP"].set_index("setting")
    channel_p = float(t.loc["channel", "p"])
    assert channel_p < 0.05 and float(t.loc["channel", "p (Holm)"]) >= 0.05   # 3 secondaries: Holm x3
    assert t.loc["channel", "family"] == "secondary" and t.loc["channel", "significant"] == "no"
    assert t.loc["dual", "family"] == "primary" and t.loc["dual", "significant"] == "yes"
    # the chance and prior lines are rows of every table (and in percent)
    assert t.loc["chance (random scores)", "mAP mean"] == pytest.approx(10.0)
    assert t.loc["prior (image-blind)", "mAP mean"] == pytest.approx(11.0)
    assert tables["variants/top1"].set_index("setting").loc["prior (image-blind)", "top1 mean"] == pytest.approx(12.0)
    md = (tmp_path / "summary.md").read_text()
    assert "Primary comparisons, declared in the grid before running: variants dual" in md
    assert "chance (random scores)" in md and "p (Holm)" in md
    assert (tmp_path / "fig_forest.png").exists() and (tmp_path / "fig_variants.png").exists()
    csv = pd.read_csv(tmp_path / "summary.csv")
    assert "p (Holm)" in csv.columns and not any(c.startswith("_") for c in csv.columns)


def test_a_grid_without_primaries_is_still_holm_corrected(tmp_path):
    """No declared primaries (e.g. the quick grid): every comparison is one family, never an uncorrected 'yes'."""
    values = {None: [0.50, 0.52, 0.54]}
    # three settings; one has a small consistent gain: uncorrected p < 0.05, Holm over 3 comparisons not
    values.update({"dual": [0.52, 0.53, 0.56], "channel": [0.49, 0.53, 0.53], "spatial": [0.51, 0.50, 0.55]})
    _write(tmp_path / "runs.jsonl", _rows(values))
    t = report.write_report(tmp_path, figures=False, quiet=True)["variants/mAP"].set_index("setting")
    p, adj = float(t.loc["dual", "p"]), float(t.loc["dual", "p (Holm)"])
    assert p < 0.05 <= adj and t.loc["dual", "significant"] == "no" and t.loc["dual", "family"] == "secondary"
    assert "No primary comparisons declared" in (tmp_path / "summary.md").read_text()


def test_reference_values_keep_two_significant_digits_below_one():
    assert report._reference_value(0.01234, 1) == "0.012" and report._reference_value(43.04, 1) == "43.0"
    assert report._reference_value(0.0, 1) == "0.0" and report.is_reference_row("chance (random boxes)")
    assert report.is_reference_row("prior-box detector (image-blind)") and not report.is_reference_row("fpn dual")


def test_figures_colour_a_significant_loss_red_and_leave_the_global_style_alone():
    import matplotlib as mpl
    import matplotlib.colors as mcolors

    rows = _rows({None: [0.60, 0.62, 0.64], "dual": [0.70, 0.72, 0.74], "channel": [0.50, 0.52, 0.54]})
    frame = report.results_frame(rows)
    table = report.study_table(frame, "variants", "mAP")
    style = dict(mpl.rcParams)
    fig = report.plot_study(frame, table, "variants", "mAP")
    assert dict(mpl.rcParams) == style  # no global seaborn theme
    bars = {round(p.get_height()): mcolors.to_hex(p.get_facecolor()) for p in fig.axes[1].patches}
    assert bars == {10: mcolors.to_hex("tab:green"), -10: mcolors.to_hex("tab:red")}
    assert all(t.get_fontsize() >= report.TICK_PT for t in fig.axes[1].get_xticklabels())
    forest = report.plot_forest([table], "mAP")
    colours = {mcolors.to_hex(line.get_color()) for line in forest.axes[0].lines if line.get_marker() == "o"}
    assert colours == {mcolors.to_hex("tab:green"), mcolors.to_hex("tab:red")}
    assert "resnet18" in forest.axes[0].get_title()  # one backbone: in the title, not on every row
    assert not any("resnet18" in t.get_text() for t in forest.axes[0].get_yticklabels())
    # lower is better for the loss: a significant increase is a loss
    assert report._effect_colour(True, 0.3, "val_loss") == "tab:red" and report._effect_colour(False, -9, "mAP") == "0.55"


def test_a_placement_study_shows_its_plain_baseline_first_and_its_places_from_shallow_to_deep(monkeypatch):
    places = ("after_features.3", "after_features.8", "after_features.12")
    plain = studies.Study("variants", "q", "attention", ({"attention": None}, {"attention": "dual"}),
                          ("mobilenet_v3_small",), baseline="plain")
    placement = studies.Study("placement", "where?", "placement",
                              tuple({"attention": "dual", "placement": p} for p in places), ("mobilenet_v3_small",),
                              baseline="plain")
    capacity = studies.Study("vs_params", "q", "attention", ({"attention": "matched_params"}, {"attention": "dual"}),
                             ("mobilenet_v3_small",))
    monkeypatch.setitem(studies.GRIDS, "tiny", studies.Grid("tiny", "fast", (0, 1, 2), (plain, placement, capacity)))
    rows = []

    def add(study, seed, value, **knobs):
        cfg = studies.normalise({"mode": "fast", "backbone": "mobilenet_v3_small", "seed": seed, **knobs})
        rows.append({"run_id": f"{study}-{len(rows)}", "study": study, "studies": [study], "grid": "tiny",
                     "config": cfg, "mAP": value, "top1": value, "params_total": 10, "wall_time_s": 1.0})

    for seed in range(3):  # the runs finish deepest first, and the plain runs belong to another study
        for k, p in enumerate(reversed(places)):
            add("placement", seed, 0.50 + 0.01 * k + 0.001 * seed, attention="dual", placement=p)
        add("variants", seed, 0.40 + 0.001 * seed, attention=None)
        add("vs_params", seed, 0.60, attention="dual")          # the declared baseline's runs come second
        add("vs_params", seed, 0.55 + 0.001 * seed, attention="matched_params")
    df = report.results_frame(rows)
    table = report.study_table(df, "placement", "mAP")
    assert table["setting"].tolist() == ["none"] + [f"dual @ {p}" for p in places]
    assert table.set_index("setting").loc["dual @ after_features.12", "diff"] == pytest.approx(10.0)
    capacity_table = report.study_table(df, "vs_params", "mAP").set_index("setting")
    assert capacity_table.loc["dual", "vs"] == "matched_params" and capacity_table.loc["dual", "diff"] > 0
    fig = report.plot_study(df, table, "placement")
    assert [t.get_text().replace("\n", " ") for t in fig.axes[0].get_xticklabels()][0] == "none"
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_median_ci_is_scipys_quantile_test_interval():
    from scipy import stats as st

    from sca_lib.stats import median_ci

    if not hasattr(st, "quantile_test"):  # scipy < 1.10
        pytest.skip("scipy.stats.quantile_test needs scipy 1.10")
    rng = np.random.default_rng(0)
    for n in (6, 7, 10, 41, 201):
        x = rng.standard_normal(n)
        ci = st.quantile_test(x, q=0, p=0.5).confidence_interval(0.95)
        assert median_ci(x) == (ci.low, ci.high), n
    assert all(math.isnan(v) for v in median_ci([1.0, 2.0, 3.0, 4.0, 5.0]))  # 5 values cannot give 95 %
    with pytest.raises(ValueError, match="level must be in"):
        median_ci([1.0] * 10, level=95)
