"""Turn ablation results files into tables with confidence intervals and seaborn figures.

``python -m sca_lib.report results/cpu`` rewrites ``results/cpu/summary.md``, ``summary.csv`` and
``fig_<study>.png`` from the ``*.jsonl`` files in that folder (written by :mod:`sca_lib.ablate`,
read by :mod:`sca_lib.results`).

Statistics (:mod:`sca_lib.stats`): for each setting the mean over seeds with a two-sided 95 %
t-interval; for each setting the difference against its study's reference (``Study.baseline``:
the same backbone without attention, or the study's first setting), **paired by seed**, with its
own t-interval. A grid that declares primary comparisons (``Grid.primary``) gets them Holm-corrected
as one family and every other comparison as a second family; ``significant`` then means a Holm-
adjusted p below 0.05. Grids without declared primaries (the earlier studies) keep the uncorrected
rule: a difference whose 95 % interval excludes zero. Runs that recorded their split's reference
lines (``row["reference"]``) add chance and prior rows to every table and lines to every figure,
and a forest plot of every paired difference (``fig_forest.png``). Failed runs (diverged) are left
out of every statistic and listed at the end of ``summary.md``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from ._io import atomic_write_text
from .results import is_finished, load_results, upgrade_row
from .spec import SPEC_KEYS
from .stats import holm, mean_ci, paired_difference, paired_p_value, t_quantile
from .studies import GRIDS, Study, build_grid, find_study

__all__ = [
    "correct",
    "plot_forest",
    "is_reference_row",
    "t_quantile",
    "mean_ci",
    "paired_difference",
    "results_frame",
    "study_table",
    "plot_study",
    "write_report",
    "ARTICLE_C11",
]

#: The article's claimed classification table (C11, Pascal VOC2012).
ARTICLE_C11 = pd.DataFrame(
    [("vgg16", None, 78.2, 138, 15.5), ("vgg16", "dual", 82.1, 139, 15.7),
     ("resnet50", None, 81.3, 25.5, 4.1), ("resnet50", "dual", 84.7, 26.1, 4.3)],
    columns=["backbone", "attention", "article top-1 (%)", "article params (M)", "article FLOPs (G)"],
)


def _grid_studies(grid: Optional[str]) -> Dict[str, List[str]]:
    """run id -> studies in the grid's *current* definition (a run made for one study can serve a later one)."""
    if grid not in GRIDS:
        return {}
    return {p["run_id"]: p["studies"] for p in build_grid(grid)}


#: Reference lines a run's row may carry (``row["reference"]``, see :mod:`sca_lib.baselines`).
_REFERENCE_KEYS = ("chance_mAP", "chance_mAP_sd", "chance_top1", "prior_mAP", "prior_top1")
#: Table rows drawn from them, per metric: (setting label, column).
_REFERENCE_ROWS = (("chance (random scores)", "chance_{metric}"), ("prior (image-blind)", "prior_{metric}"))
#: A detector's reference lines (:func:`sca_lib.train_detection.detection_reference_lines`): random
#: boxes of the training boxes' sizes, and the prior-box detector (each class's mean box, image-blind).
_DETECTION_REFERENCE_ROWS = (("chance (random boxes)", "chance_{metric}"),
                             ("prior-box detector (image-blind)", "prior_{metric}"))


def _reference_value(v: float, digits: int) -> str:
    """A reference line's value: the metric's decimals, or two significant digits below 1 (a
    detector's chance mAP is hundredths of a point, which one decimal would print as 0.0)."""
    return f"{v:.{digits}f}" if not np.isfinite(v) or abs(v) >= 1 or v == 0 else f"{v:.2g}"


def _digits(metric: str) -> int:
    """Decimals a metric is printed with: percentages 1, a loss 3."""
    return 3 if metric.endswith("loss") else 1


#: The columns of :func:`results_frame` taken from a run's config.
CONFIG_COLUMNS = ("backbone",) + SPEC_KEYS + ("schedule", "seed")


def _attention_label(trunk: Optional[str], cfg: Dict[str, Any]) -> str:
    """The ``attention`` column: the module's name or "none"; a detector's C13 attention on the FPN
    joins it as ``"fpn <name>"`` (``"dual + fpn dual"`` with both)."""
    trunk = trunk or "none"
    fpn = cfg.get("fpn_attention") if cfg.get("task") == "detection" else None
    if not fpn:
        return trunk
    return f"fpn {fpn}" if trunk == "none" else f"{trunk} + fpn {fpn}"


def results_frame(rows: List[Dict[str, Any]]) -> pd.DataFrame:
    """One row per (finished run, study it belongs to), config flattened, metrics in percent.

    Failed runs are left out. A run belongs to the studies its row names and to every study of
    its grid's current definition that has the same run id.
    """
    records = []
    grids: Dict[Optional[str], Dict[str, List[str]]] = {}
    for r in map(upgrade_row, rows):
        if not is_finished(r):
            continue
        grid = r.get("grid")
        if grid not in grids:
            grids[grid] = _grid_studies(grid)
        studies = list(dict.fromkeys(list(r.get("studies", [r.get("study")])) + grids[grid].get(r["run_id"], [])))
        cfg = r["config"]
        base = {k: cfg.get(k) for k in CONFIG_COLUMNS}
        base["attention"] = _attention_label(base["attention"], cfg)
        base["task"] = cfg.get("task") or "classification"
        top1 = r.get("top1")  # a detector has no top-1
        base.update(run_id=r["run_id"], grid=grid, mAP=100 * float(r["mAP"]),
                    top1=np.nan if top1 is None else 100 * float(top1),
                    params=r.get("params_total"), flops=r.get("flops"), wall_time_s=r.get("wall_time_s"),
                    images_per_s=r.get("images_per_s"), git_commit=r.get("git_commit"))
        if r.get("val_loss") is not None:
            base["val_loss"] = float(r["val_loss"])
        ref = r.get("reference")
        if isinstance(ref, dict):  # chance and prior lines of the run's split (in percent; the prior's loss as it is)
            base.update({k: 100 * float(ref[k]) for k in _REFERENCE_KEYS if ref.get(k) is not None})
            if ref.get("prior_val_loss") is not None:
                base["prior_val_loss"] = float(ref["prior_val_loss"])
        for study in studies:
            records.append({"study": study, **base})
    return pd.DataFrame(records)


def _study(df: pd.DataFrame, name: str) -> Optional[Study]:
    """The :class:`Study` called ``name``, preferring the grid its runs were made for."""
    grids = df.loc[df.study == name, "grid"].dropna() if "grid" in df else []
    return find_study(name, grids.iloc[0] if len(grids) else None)


def _label(study: Optional[Study], row: pd.Series) -> str:
    knob = study.knob if study else "attention"
    value = row[knob]
    if isinstance(value, float) and value.is_integer() and knob == "reduction":
        value = int(value)  # pandas turns an int column with None into floats
    if knob == "attention":
        return str(value)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        value = "none (alpha=beta=1)" if knob == "strength" else "default"
    if knob == "placement":
        return f"{row['attention']} @ {value or 'default'}" if row["attention"] != "none" else "none"
    return f"{knob}={value}"


def _setting_order(study: Optional[Study], backbone: str):
    """A sort key for a study's setting labels: the plain baseline first, then the order the study
    declares its settings in, placements from shallow to deep (the backbone's placement table) when
    the study no longer declares them (a superseded grid), whatever order the runs finished in."""
    rank: Dict[str, int] = {}
    for i, variant in enumerate(study.variants if study else ()):
        row = pd.Series({"attention": variant.get("attention") or "none", study.knob: variant.get(study.knob)})
        if study.knob == "attention":
            row[study.knob] = row["attention"]
        rank.setdefault(_label(study, row), i)
    depth: List[str] = []
    if study is not None and study.knob == "placement":
        from .backbones import list_placements

        try:
            depth = list(list_placements(backbone))
        except ValueError:  # a backbone this version does not know: keep the runs' order
            depth = []

    def key(label: str) -> Tuple[int, int]:
        if label == "none":
            return (-1, 0)
        if label in rank:
            return (0, rank[label])
        place = label.split(" @ ", 1)[-1]
        return (1, depth.index(place)) if place in depth else (2, 0)

    return key


def _with_baseline(df: pd.DataFrame, sub: pd.DataFrame, st: Optional[Study]) -> pd.DataFrame:
    """``sub`` (one study's rows) with the runs of its plain baseline added first when the study
    compares with a plain baseline it does not train itself (a placement study: every setting has
    attention), so tables and figures show the baseline next to the settings."""
    if st is None or st.baseline != "plain" or (sub["attention"] == "none").any():
        return sub
    plain = df[(df.attention == "none") & (df.schedule == st.schedule) & df.backbone.isin(sub.backbone.unique())]
    plain = plain.drop_duplicates(["backbone", "seed"])
    return pd.concat([plain.assign(study=sub["study"].iloc[0]), sub], ignore_index=True) if len(plain) else sub


def study_table(df: pd.DataFrame, study: str, metric: str = "mAP") -> pd.DataFrame:
    """Mean, 95 % CI and the paired difference against the study's reference, per backbone and setting."""
    sub = df[df.study == study].copy() if len(df) else df
    if sub.empty:
        return pd.DataFrame()
    st = _study(df, study)
    refs = None
    if st is not None and st.baseline == "plain":  # reference: same backbone and schedule, no attention
        refs = df[(df.attention == "none") & (df.schedule == st.schedule)]
    sub = _with_baseline(df, sub, st)
    sub["setting"] = sub.apply(lambda r: _label(st, r), axis=1)
    dg = _digits(metric)
    out = []
    for backbone, grp in sub.groupby("backbone", sort=False):
        order = sorted(dict.fromkeys(grp["setting"]), key=_setting_order(st, backbone))
        if refs is not None:
            ref = refs[refs.backbone == backbone].drop_duplicates("seed").set_index("seed")[metric].to_dict()
            ref_name = "none"
        else:
            ref = grp[grp.setting == order[0]].set_index("seed")[metric].to_dict()
            ref_name = order[0]
        if ref_name in order:  # the reference first
            order = [ref_name] + [o for o in order if o != ref_name]
        for setting in order:
            g = grp[grp.setting == setting]
            m, lo, hi, n = mean_ci(g[metric].tolist())
            mine = g.set_index("seed")[metric].to_dict()
            d, dlo, dhi, dn = paired_difference(mine, ref) if ref else (np.nan,) * 3 + (0,)
            is_ref = setting == ref_name
            out.append({
                "study": study, "backbone": backbone, "setting": setting, "n seeds": n,
                f"{metric} mean": m, f"{metric} 95% CI": f"[{lo:.{dg}f}, {hi:.{dg}f}]",
                "vs": ref_name, "diff": np.nan if is_ref else d,
                "diff 95% CI": "" if is_ref or dn < 2 else f"[{dlo:.{dg}f}, {dhi:.{dg}f}]",
                "significant": "" if is_ref or dn < 2 else ("yes" if (dlo > 0 or dhi < 0) else "no"),
                "params (M)": g["params"].iloc[0] / 1e6 if g["params"].notna().any() else np.nan,
                "wall s/run": g["wall_time_s"].mean(),
                "_ci": (lo, hi), "_dci": (dlo, dhi) if not is_ref and dn >= 2 else (np.nan, np.nan),
                "_p": paired_p_value(mine, ref) if ref and not is_ref else np.nan,
                "_diffs": {k: mine[k] - ref[k] for k in mine if k in ref} if ref and not is_ref else {},
            })
        detection = "task" in grp and (grp["task"] == "detection").all()
        for label, col in (_DETECTION_REFERENCE_ROWS if detection else _REFERENCE_ROWS):  # when the runs recorded them
            col = col.format(metric=metric)
            if col in grp and grp[col].notna().any():
                v = grp[col].dropna()
                sd = grp["chance_mAP_sd"].dropna().mean() if col == "chance_mAP" and "chance_mAP_sd" in grp else np.nan
                out.append({"study": study, "backbone": backbone, "setting": label, "n seeds": "",
                            f"{metric} mean": float(v.mean()),
                            f"{metric} 95% CI": f"sd {_reference_value(sd, 1)}" if np.isfinite(sd) else "",
                            "vs": "", "diff": np.nan,
                            "diff 95% CI": "", "significant": "", "params (M)": np.nan, "wall s/run": np.nan,
                            "_ci": (np.nan, np.nan), "_dci": (np.nan, np.nan), "_p": np.nan, "_diffs": {}})
    table = pd.DataFrame(out)
    table.attrs["metric"] = metric  # correct() prints the family's intervals in the metric's decimals
    return table


_HIDDEN = ["_ci", "_dci", "_p", "_diffs"]
_CORRECTED = ["family", "p", "p (Holm)", "diff CI (Bonferroni)"]


def is_reference_row(setting: str) -> bool:
    """True for the chance and prior rows of a table (lines to compare with, not settings)."""
    return any(setting == label for label, _ in _REFERENCE_ROWS + _DETECTION_REFERENCE_ROWS)


def correct(tables: Sequence[pd.DataFrame], primary: Sequence[Tuple[str, str]]) -> None:
    """Holm-correct the comparisons of ``tables`` (one metric) in place, in two families.

    The declared ``primary`` ``(study, setting)`` pairs form one family, every other comparison the
    other. Each comparison gets ``family``, ``p`` (paired t-test), ``p (Holm)`` and the Bonferroni
    interval of its family (level ``1 - 0.05 / m``); ``significant`` becomes ``p (Holm) < 0.05``.
    """
    primary = {tuple(p) for p in primary}
    for t in tables:
        for col in _CORRECTED:
            t[col] = ""
    cells = [(t, i) for t in tables for i in t.index if np.isfinite(t.at[i, "_p"])]
    for family in ("primary", "secondary"):
        members = [(t, i) for t, i in cells if ((t.at[i, "study"], t.at[i, "setting"]) in primary) == (family == "primary")]
        adjusted = holm([t.at[i, "_p"] for t, i in members])
        for (t, i), adj in zip(members, adjusted):
            d = t.at[i, "_diffs"]
            _, lo, hi, _ = paired_difference(d, {k: 0.0 for k in d}, level=1 - 0.05 / len(members))
            dg = _digits(t.attrs.get("metric", "mAP"))
            t.loc[i, _CORRECTED] = [family, f"{t.at[i, '_p']:.3f}", f"{adj:.3f}", f"[{lo:.{dg}f}, {hi:.{dg}f}]"]
            t.at[i, "significant"] = "yes" if adj < 0.05 else "no"


#: Metrics where lower is better (a positive difference is a loss); every other metric: higher is better.
LOWER_IS_BETTER = ("val_loss",)

#: Figure text sizes (points): readable at the size the notebooks and the README show the figures.
TICK_PT, LABEL_PT = 10, 11


def _effect_colour(significant: bool, diff: float, metric: str) -> str:
    """Green for a significant gain, red for a significant loss, grey when not significant."""
    if not significant:
        return "0.55"
    better = diff < 0 if metric in LOWER_IS_BETTER else diff > 0
    return "tab:green" if better else "tab:red"


def _wrap(label: str, width: int = 16) -> str:
    import textwrap

    return "\n".join(textwrap.fill(part, width) for part in str(label).split("\n"))


def plot_study(df: pd.DataFrame, table: pd.DataFrame, study: str, metric: str = "mAP", title: str = ""):
    """Per-seed points with mean and 95 % CI (left), paired differences with 95 % CI (right); returns the figure.

    The settings keep the study's order (placements from shallow to deep), the reference lines
    (chance, prior, the study's baseline) are drawn across the left panel, and a difference is
    green when it is a significant gain, red when a significant loss, grey otherwise. The styling
    stays inside this figure (no global seaborn theme).
    """
    with sns.axes_style("whitegrid"):
        return _plot_study(df, table, study, metric, title)


def _plot_study(df, table, study, metric, title):
    st = _study(df, study)
    sub = _with_baseline(df, df[df.study == study].copy(), st)
    sub["setting"] = sub.apply(lambda r: _label(st, r), axis=1)
    one = table["backbone"].nunique() == 1  # one backbone: name it in the title, label the settings alone
    sub["label"] = sub["setting"] if one else sub["backbone"] + "\n" + sub["setting"]
    lines = table[table["setting"].map(is_reference_row)]
    table = table[~table["setting"].map(is_reference_row)]
    table = table.assign(label=table["setting"] if one else table["backbone"] + "\n" + table["setting"])
    if one and not title:
        title = f"{study} ({table['backbone'].iloc[0]})"
    order = table["label"].tolist()
    fig, axes = plt.subplots(1, 2, figsize=(max(9, 1.9 * len(order) + 4), 4.6))
    sns.stripplot(data=sub, x="label", y=metric, order=order, ax=axes[0], color="0.4", size=5, jitter=0.1)
    lo = np.array([c[0] for c in table["_ci"]]); hi = np.array([c[1] for c in table["_ci"]])
    means = table[f"{metric} mean"].to_numpy()
    axes[0].errorbar(range(len(order)), means, yerr=[means - lo, hi - means], fmt="o", color="tab:blue",
                     capsize=5, label="mean, 95% CI")
    for (_, row), style in zip(lines.drop_duplicates("setting").iterrows(), (":", "--")):
        axes[0].axhline(row[f"{metric} mean"], color="0.3", ls=style, lw=1, label=row["setting"])
    axes[0].set_ylabel(f"{metric} (%)", fontsize=LABEL_PT); axes[0].set_xlabel("")
    axes[0].set_title(f"{metric} per seed", fontsize=LABEL_PT)
    axes[0].legend(loc="best", fontsize=TICK_PT - 1)
    axes[0].set_xticks(range(len(order)), [_wrap(v) for v in order])
    rows = table[table["diff"].notna()]
    if not rows.empty:
        dlo = np.array([c[0] for c in rows["_dci"]]); dhi = np.array([c[1] for c in rows["_dci"]])
        d = rows["diff"].to_numpy()
        yerr = np.nan_to_num([d - dlo, dhi - d], nan=0.0)
        colors = [_effect_colour(s == "yes", v, metric) for s, v in zip(rows["significant"], d)]
        axes[1].bar(range(len(rows)), d, yerr=yerr, color=colors, capsize=5)
        axes[1].set_xticks(range(len(rows)), [_wrap(v) for v in rows["label"]])
        axes[1].axhline(0, color="k", lw=1)
        axes[1].set_ylabel(f"difference in {metric} (points)", fontsize=LABEL_PT)
        axes[1].set_title(f"vs {rows['vs'].iloc[0]}, 95% CI\ngreen / red: significant gain / loss", fontsize=LABEL_PT)
    else:
        axes[1].set_axis_off()
    for ax in axes:
        ax.tick_params(labelsize=TICK_PT)
    fig.suptitle(title or study, fontsize=LABEL_PT + 1)
    fig.tight_layout()
    return fig


def plot_forest(tables: Sequence[pd.DataFrame], metric: str = "mAP", title: str = ""):
    """Every paired difference of ``tables`` on one axis: point and interval (the family's Bonferroni
    interval when corrected, else 95 %), green for a significant gain and red for a significant
    loss, a zero line, and a grey band of +-2 sd of chance mAP (how much a random ranking alone
    moves mAP) when the runs recorded it. With one backbone it is named in the title, not on every row."""
    rows, chance_sd = [], []
    frames = [t for t in tables if len(t)]
    backbones = {b for t in frames for b in t["backbone"]}
    one = len(backbones) == 1
    for t in frames:
        for _, r in t.iterrows():
            if r["setting"].startswith("chance (") and r[f"{metric} 95% CI"].startswith("sd "):
                chance_sd.append(float(r[f"{metric} 95% CI"][3:]))
            if pd.isna(r["diff"]):
                continue
            ci = r.get("diff CI (Bonferroni)") or ""
            lo, hi = (float(v) for v in ci.strip("[]").split(", ")) if ci else r["_dci"]
            who = r["study"] if one or r["backbone"] in r["study"] else f"{r['study']} · {r['backbone']}"
            rows.append((f"{who} · {r['setting']} vs {r['vs']}", r["diff"], lo, hi,
                         r["significant"] == "yes", r.get("family", "")))
    fig, ax = plt.subplots(figsize=(11, 0.42 * len(rows) + 2.2))
    if chance_sd and metric == "mAP":
        band = 2 * float(np.mean(chance_sd))
        ax.axvspan(-band, band, color="0.9", label=f"+-2 sd of chance mAP ({band:.1f} points)")
    for y, (label, d, lo, hi, sig, family) in enumerate(reversed(rows)):
        ax.errorbar([d], [y], xerr=[[d - lo], [hi - d]] if np.isfinite(lo) else None, fmt="o",
                    color=_effect_colour(sig, d, metric), mfc="white" if family == "secondary" else None, capsize=3)
    ax.axvline(0, color="k", lw=1)
    ax.set_yticks(range(len(rows)), [r[0] for r in reversed(rows)], fontsize=TICK_PT)
    ax.tick_params(axis="x", labelsize=TICK_PT)
    ax.set_xlabel(f"difference in {metric} (points)\nfilled: primary, open: secondary; "
                  "green / red: significant gain / loss after Holm", fontsize=LABEL_PT)
    default = f"paired differences in {metric}" + (f" ({next(iter(backbones))})" if one and backbones else "")
    ax.set_title(title or default, fontsize=LABEL_PT + 1)
    if chance_sd and metric == "mAP":
        ax.legend(fontsize=TICK_PT - 1, loc="best")
    fig.tight_layout()
    return fig


def _md(table: pd.DataFrame, metric: str) -> str:
    cols = ["backbone", "setting", "n seeds", f"{metric} mean", f"{metric} 95% CI", "vs", "diff", "diff 95% CI", "significant"]
    if "family" in table:  # Holm-corrected: the family, p-values and the family's Bonferroni interval
        cols = cols[:-1] + _CORRECTED + ["significant"]
    t = table[cols].copy()
    dg = _digits(metric)
    ref = t["setting"].map(is_reference_row)
    t[f"{metric} mean"] = [_reference_value(v, dg) if r else f"{v:.{dg}f}" for v, r in zip(t[f"{metric} mean"], ref)]
    t["diff"] = t["diff"].map(lambda v: "" if pd.isna(v) else f"{v:+.{dg}f}")
    header = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    return header + "".join("| " + " | ".join(str(v) for v in row) + " |\n" for row in t.itertuples(index=False))


def _failed_md(failed: List[Dict[str, Any]], grids: Sequence[str]) -> str:
    cmd = " or ".join(f"`python -m sca_lib.ablate --grid {g} --retry-failed`" for g in grids) or "`--retry-failed`"
    lines = [f"\n## Failed runs\n\n{len(failed)} run(s) failed and are left out of every table above; {cmd} "
             f"trains them again.\n\n| run_id | study | backbone | attention | seed | reason |\n|---|---|---|---|---|---|\n"]
    for r in failed:
        c = r["config"]
        reason = " ".join(str(r.get("reason", "")).split()).replace("|", "\\|")
        lines.append(f"| {r['run_id']} | {r.get('study', '')} | {c.get('backbone')} | {c.get('attention') or 'none'} "
                     f"| {c.get('seed')} | {reason} |\n")
    return "".join(lines)


def write_report(results_dir: Path, metrics: Optional[Sequence[str]] = None, figures: bool = True,
                 quiet: bool = False) -> Dict[str, pd.DataFrame]:
    """Write summary.md, summary.csv and one figure per study into ``results_dir``; returns the tables.

    ``metrics`` default: mAP and top-1, and the validation loss when the runs recorded the prior's
    loss to hold it against. Failed runs are left out of the tables and listed at the end of summary.md.
    """
    results_dir = Path(results_dir)
    rows = load_results(results_dir)
    if not rows:
        raise FileNotFoundError(
            f"no results in {results_dir} (expected *.jsonl files written by `python -m sca_lib.ablate`); "
            f"run e.g. `python -m sca_lib.ablate --grid quick` first"
        )
    finished = [r for r in rows if is_finished(r)]
    failed = [r for r in rows if not is_finished(r)]
    df = results_frame(finished)
    if metrics is None:
        has_loss = all(c in df and df[c].notna().all() for c in ("val_loss", "prior_val_loss"))
        has_top1 = "top1" in df and df["top1"].notna().any()  # detectors report mAP only
        metrics = ("mAP",) + (("top1",) if has_top1 else ()) + (("val_loss",) if has_loss else ())
    studies = list(dict.fromkeys(df["study"])) if len(df) else []
    commits = sorted(set(df["git_commit"].dropna())) if len(df) else []
    tables: Dict[str, pd.DataFrame] = {}
    lines = [f"# Ablation results: `{results_dir.name}`\n",
             f"{len(finished)} runs"
             + (f" ({len(failed)} more failed, listed at the end)" if failed else "")
             + f"; commits {', '.join(commits)}. "
             f"Mean over seeds with a 95 % t-interval; `diff` is the paired-by-seed difference against `vs`. "
             f"Regenerate: `python -m sca_lib.report {results_dir.as_posix()}`.\n"]
    primary = [p for g in sorted({r.get("grid") for r in finished if r.get("grid") in GRIDS}) for p in GRIDS[g].primary]
    for study in studies:
        for metric in metrics:
            tables[f"{study}/{metric}"] = study_table(df, study, metric)
    for metric in metrics:  # never an uncorrected "significant": without declared primaries, one family
        correct([t for k, t in tables.items() if k.endswith("/" + metric) and len(t)], primary)
    if primary:
        lines.append(f"Primary comparisons, declared in the grid before running: "
                     f"{', '.join(f'{a} {b}' for a, b in primary)}. Each family (primary; all others) is "
                     f"Holm-corrected per metric; `significant` means `p (Holm)` < 0.05, and "
                     f"`diff CI (Bonferroni)` is the family's simultaneous interval.\n")
    else:
        lines.append("No primary comparisons declared for this grid: all its comparisons form one family, "
                     "Holm-corrected per metric; `significant` means `p (Holm)` < 0.05, and `diff CI (Bonferroni)` "
                     "is the family's simultaneous interval.\n")
    for study in studies:
        st = _study(df, study)
        question = st.question if st else ""
        for metric in metrics:
            t = tables[f"{study}/{metric}"]
            if metric == metrics[0]:
                lines.append(f"\n## {study}: {question}\n\n")
            unit = "validation loss, masked BCE in the runs' reduction" if metric == "val_loss" else "%"
            lines.append(f"\n{metric} ({unit}):\n\n" + _md(t, metric))
        if figures:
            fig = plot_study(df, tables[f"{study}/{metrics[0]}"], study, metrics[0],
                             f"{study}: {question} ({results_dir.name} grid)")
            fig.savefig(results_dir / f"fig_{study}.png", dpi=110)
            plt.close(fig)
    if figures:
        fig = plot_forest([t for k, t in tables.items() if k.endswith("/" + metrics[0])], metrics[0],
                          f"every paired difference ({results_dir.name} grid)")
        fig.savefig(results_dir / "fig_forest.png", dpi=110)
        plt.close(fig)
    if failed:
        lines.append(_failed_md(failed, sorted({r.get("grid") for r in failed if r.get("grid") in GRIDS})))
    atomic_write_text(results_dir / "summary.md", "".join(lines))
    if tables:
        flat = pd.concat([t.drop(columns=_HIDDEN).assign(metric=k.split("/")[1]) for k, t in tables.items()],
                         ignore_index=True)
    else:
        flat = pd.DataFrame(columns=["study", "backbone", "setting", "metric"])
    atomic_write_text(results_dir / "summary.csv", flat.to_csv(index=False))
    if not quiet:
        for key, t in tables.items():
            if key.endswith("/" + metrics[0]):
                print(f"\n{key}:")
                print(t.drop(columns=_HIDDEN + ["study"]).to_string(index=False, float_format=lambda v: f"{v:.2f}"))
        for r in failed:
            print(f"failed: {r['run_id']} ({r.get('study')}, seed {r['config'].get('seed')}): {r.get('reason')}")
        print(f"\nwrote {results_dir / 'summary.md'}, summary.csv and {len(studies) if figures else 0} figure(s)")
    return tables


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sca_lib.report", description="tables and figures from ablation results")
    ap.add_argument("results_dir", type=Path, help="a folder with *.jsonl results, e.g. results/cpu")
    ap.add_argument("--no-figures", action="store_true")
    a = ap.parse_args(argv)
    try:
        write_report(a.results_dir, figures=not a.no_figures)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
