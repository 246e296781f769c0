"""The localisation study: do the trained models' maps point at the objects? One command.

Command line::

    python -m sca_lib.localise                          # the committed study: results/localisation/cpu/
    python -m sca_lib.localise --study detection_cpu    # the detectors' maps: results/localisation/detection_cpu/
    python -m sca_lib.localise --study cpu --shard 0/2  # split the training over two processes
    python -m sca_lib.localise --study cpu --report-only
    python -m sca_lib.localise --list

A *localisation study* (:data:`LOCALISATION_STUDIES`) names grid points of an ablation grid
(:mod:`sca_lib.studies`): the models of some settings of one of its studies, every seed. For each
model the command finds its finished run under ``runs/ablate/<grid>/<run id>/`` (the folder the
ablation runner trains into) or trains it there (the same call as the runner's, so the model is the
one the grid's results row describes), rebuilds it from the run's weights
(:func:`sca_lib.train.load_trained`), checks that its validation mAP equals the grid's committed
row (``results/<grid>/``), and scores its maps on the validation split with
:mod:`sca_lib.localisation`:

* ``attention``: the attention module's spatial map (class-agnostic); a detector's shared FPN module
  gets one method per pyramid level (``attention[0]``, ``attention[pool]``, ...);
* ``gradcam``: Grad-CAM of the ``grad-cam`` package, one map per positive class (classifiers only);
* ``centre``: the trivial baseline, a map peaking at the image centre (one row, no model).

Scores: the pointing game at TorchRay's 15 pixels (all pairs and the *difficult* subset), at the
same tolerance scaled to the split's image size (:func:`sca_lib.localisation.scaled_tolerance`),
the chance level of each (a uniformly random point), and the share of map energy inside the boxes
against their share of the image. One row per (model, method) goes to
``results/localisation/<study>/rows[.shard-i-of-n].jsonl`` as soon as it is measured; a rerun skips
models already scored. The report (``summary.md``, ``summary.csv``, ``fig_pointing.png``,
``fig_maps.png``) gives each method's mean over seeds with a 95 % t-interval, and paired-by-seed
differences for the comparisons the study declares (:class:`LocalisationStudy`): the primary ones
Holm-corrected as one family on the 15-px pointing game, every other comparison and metric as a
second family.
"""

from __future__ import annotations

import argparse
import math
import datetime as _dt
import json
import os
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

from . import config as _config
from ._io import atomic_write_text, file_lock
from .results import git_commit, load_results
from .stats import holm, mean_ci, paired_difference, paired_p_value

__all__ = ["LocalisationStudy", "LOCALISATION_STUDIES", "study_points", "run_study", "load_rows",
           "summary_tables", "write_report", "setting_label", "validation_split", "maps_figure", "plot_levels",
           "explained_variance", "channel_study", "main"]

if TYPE_CHECKING:  # pragma: no cover
    from .train import TrainConfig

TrainFn = Callable[[Dict[str, Any], Path], Dict[str, Any]]


@dataclass(frozen=True)
class LocalisationStudy:
    """Which models a localisation study scores and which comparisons it declares.

    ``grid`` and ``study`` name an ablation grid's study (:data:`sca_lib.studies.GRIDS`);
    ``settings`` the labels of its settings to score (``"none"``, ``"dual"``, ``"fpn dual"``: the
    report's attention labels). ``primary`` and ``secondary`` are comparisons ``(a, b)`` between
    methods, each ``"<setting>/<method>"`` or ``"centre"``, declared before the study runs:
    ``a - b`` paired by seed. Primary ones form one Holm family on the pointing game at 15 px;
    secondary ones on that metric and every comparison on the other metrics form the second family.
    ``seeds``: default the grid's.
    """

    name: str
    grid: str
    study: str
    settings: Tuple[str, ...]
    question: str
    primary: Tuple[Tuple[str, str], ...] = ()
    secondary: Tuple[Tuple[str, str], ...] = ()
    seeds: Optional[Tuple[int, ...]] = None
    limit: Optional[int] = None  # score the first `limit` validation images (None: all)


_CLS_PRIMARY = (("dual/attention", "centre"), ("dual/gradcam", "none/gradcam"), ("dual/attention", "dual/gradcam"))
_CLS_SECONDARY = (("spatial/attention", "centre"), ("spatial/gradcam", "none/gradcam"),
                  ("spatial/attention", "spatial/gradcam"), ("none/gradcam", "centre"),
                  ("dual/attention", "spatial/attention"))

#: The declared localisation studies. ``cpu`` and ``detection_cpu`` are the committed ones (their
#: comparisons were written down here before any of their maps was scored); ``fast`` and
#: ``detection_fast`` are CI's plumbing checks on the fast grids.
LOCALISATION_STUDIES: Dict[str, LocalisationStudy] = {s.name: s for s in (
    LocalisationStudy(
        "cpu", "cpu", "variants", ("none", "spatial", "dual"),
        "Do the classifiers' maps point at the objects? The attention module's spatial map and Grad-CAM of "
        "the CPU study's MobileNetV3-Small models (staged recipe, module after features.8), against the centre",
        primary=_CLS_PRIMARY, secondary=_CLS_SECONDARY),
    LocalisationStudy(
        "detection_cpu", "detection_cpu", "variants", ("dual", "fpn dual"),
        "Do the detectors' attention maps point at the objects? The trunk module (after features.12) and C13's "
        "shared FPN module at each pyramid level, against the centre",
        primary=(("dual/attention", "centre"),),
        secondary=(("fpn dual/attention[0]", "centre"), ("fpn dual/attention[1]", "centre"),
                   ("fpn dual/attention[pool]", "centre"), ("fpn dual/attention[0]", "fpn dual/attention[1]"))),
    LocalisationStudy(
        "cpu_strength", "cpu_strength", "strength", ("dual", "dual (detection strengths)"),
        "Does the classifier's gate move with C10's strengths? The CPU study's dual classifiers (strengths 1, 1) "
        "beside the same model trained with the detection strengths (alpha 0.7, beta 0.5), 5 seeds each",
        primary=(("dual (detection strengths)/attention", "dual/attention"),),
        secondary=(("dual (detection strengths)/attention", "centre"),
                   ("dual (detection strengths)/gradcam", "dual/gradcam"))),
    LocalisationStudy(
        "fast", "fast", "variants", ("none", "dual"), "CI plumbing: the fast grid's models",
        primary=_CLS_PRIMARY[:2], secondary=(("none/gradcam", "centre"),)),
    LocalisationStudy(
        "detection_fast", "detection_fast", "variants", ("dual", "fpn dual"), "CI plumbing: the fast detectors",
        primary=(("dual/attention", "centre"),)),
)}

#: The metrics of every row, in the report's order, with their headings.
METRICS = {
    "pointing": "pointing game, 15 px (%)",
    "pointing_not_flat": "pointing game, 15 px, pairs whose map is not flat (%)",
    "pointing_scaled": "pointing game, tolerance scaled to the image size (%)",
    "pointing_difficult": "pointing game, difficult subset, 15 px (%)",
    "energy": "energy inside the boxes (%)",
}
#: The metrics of the second family's comparisons (as declared with the studies); the pointing game
#: without flat maps is a sensitivity check, reported but not compared.
_COMPARED = ("pointing_scaled", "pointing_difficult", "energy")
_CHANCE = {"pointing": "pointing_chance", "pointing_not_flat": "pointing_chance", "pointing_scaled": "pointing_scaled_chance",
           "pointing_difficult": "pointing_difficult_chance", "energy": "area"}


def setting_label(config: Dict[str, Any]) -> str:
    """A grid point's setting as the report names it: ``"none"``, ``"dual"``, ``"fpn dual"``..."""
    from .report import _attention_label

    label = _attention_label(config.get("attention"), config)
    return f"{label} ({config['strength']} strengths)" if config.get("strength") else label


def _study(name: str) -> LocalisationStudy:
    if name not in LOCALISATION_STUDIES:
        raise ValueError(f"unknown localisation study {name!r}; expected one of {', '.join(LOCALISATION_STUDIES)}")
    return LOCALISATION_STUDIES[name]


def study_points(name: str, seeds: Optional[Sequence[int]] = None) -> List[Dict[str, Any]]:
    """The grid points a localisation study scores, each with its ``"setting"`` label, in grid order."""
    from .studies import build_grid

    st = _study(name)
    seeds = seeds if seeds is not None else st.seeds
    points = [dict(p, setting=setting_label(p["config"])) for p in build_grid(st.grid, [st.study], seeds)]
    points = [p for p in points if p["setting"] in st.settings]
    found = {p["setting"] for p in points}
    missing = [s for s in st.settings if s not in found]
    if missing:
        raise ValueError(f"localisation study {name!r}: grid {st.grid!r} study {st.study!r} has no setting {missing}")
    return points


# ------------------------------------------------------------------------------------------------
# rows
# ------------------------------------------------------------------------------------------------

def _rows_file(results_dir: Path, shard: Tuple[int, int]) -> Path:
    i, n = shard
    return results_dir / ("rows.jsonl" if n == 1 else f"rows.shard-{i}-of-{n}.jsonl")


def load_rows(results_dir: Path) -> List[Dict[str, Any]]:
    """Every row in ``results_dir/rows*.jsonl`` (bad or partial lines skipped with a warning), one
    per ``(run_id, method)``: the first one written."""
    rows: List[Dict[str, Any]] = []
    seen = set()
    for path in sorted(Path(results_dir).glob("rows*.jsonl")):
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").split("\n"), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                key = (row["run_id"], row["method"])
            except (json.JSONDecodeError, KeyError, TypeError):
                print(f"warning: {path}:{n}: not a localisation row (a write cut short?); skipped", file=sys.stderr)
                continue
            if key not in seen:
                seen.add(key)
                rows.append(row)
    return rows


def _scored(rows: List[Dict[str, Any]]) -> set:
    """Run ids with a row for every method their model was scored with (``row["methods"]``)."""
    found: Dict[str, set] = {}
    wanted: Dict[str, set] = {}
    for r in rows:
        found.setdefault(r["run_id"], set()).add(r["method"])
        wanted.setdefault(r["run_id"], set()).update(r.get("methods", [r["method"]]))
    return {rid for rid, methods in found.items() if wanted[rid] <= methods}


def _append(path: Path, rows: List[Dict[str, Any]]) -> None:
    """Append a model's rows in one write (a kill leaves all of them or a partial last line, which
    :func:`load_rows` skips; that model is then scored again)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path, what=f"appending to {path}"):
        data = path.read_bytes() if path.exists() else b""
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
        with open(path, "a", encoding="utf-8") as f:
            f.write(("\n" if data and not data.endswith(b"\n") else "") + text)
            f.flush()
            os.fsync(f.fileno())


def _scores_row(scores: Dict[str, Any], scaled: float) -> Dict[str, Any]:
    """The metrics of one ``localisation_scores`` result, in percent, under the report's names."""
    key = f"pointing@{scaled:g}px"
    return {
        "pointing": 100 * scores["pointing"], "pointing_chance": 100 * scores["pointing_chance"],
        "pointing_scaled": 100 * scores[key], "pointing_scaled_chance": 100 * scores[f"pointing_chance@{scaled:g}px"],
        "pointing_difficult": 100 * scores["pointing_difficult"], "pointing_not_flat": 100 * scores["pointing_not_flat"],
        "pointing_difficult_chance": 100 * scores["pointing_difficult_chance"],
        "energy": 100 * scores["energy"], "area": 100 * scores["area"], "energy_over_area": scores["energy_over_area"],
        "pairs": scores["pairs"], "pairs_difficult": scores["pairs_difficult"],
        "skipped_difficult": scores["skipped_difficult"], "flat_maps": scores["flat_maps"], "pointing_per_class": scores["pointing_per_class"],
    }


def validation_split(config: Union[Dict[str, Any], "TrainConfig"]):
    """The validation split of a training config's data, as the localisation scores read it: a
    :class:`sca_lib.data.VOCDetection` (images at their own size in [0, 1], boxes, labels,
    ``difficult``), the synthetic devkit generated if missing. Returns ``(dataset, TrainConfig)``."""
    from .data import VOCDetection
    from .train import TrainConfig, _devkit_root

    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(dict(config))
    ds = VOCDetection(_devkit_root(cfg, verbose=False), year="2012", split="val", skip_bad=cfg.dataset == "voc")
    return ds, cfg


def _method_name(map_key: str, n_maps: int) -> str:
    """``attention`` for a model's only map; ``attention[<level>]`` for one FPN level of several."""
    if n_maps == 1:
        return "attention"
    return "attention" + map_key[map_key.index("["):] if "[" in map_key else f"attention:{map_key}"


def _score_model(model, config: Dict[str, Any], dataset, limit: Optional[int], scaled: float,
                 progress: bool) -> Dict[str, Dict[str, Any]]:
    """``{method: scores}`` for one trained model (attention maps, and Grad-CAM for a classifier)."""
    import torch

    from .attention import attention_modules
    from .data.transforms import classification_transforms
    from .localisation import evaluate_classifier, evaluate_detector
    from .maps import attention_maps, detector_attention_maps

    extra = (scaled,)
    img = dataset[0][0].as_subclass(torch.Tensor).float()
    if config.get("task") == "detection":
        keys = [k for k, v in detector_attention_maps(model, [img]).items() if v["spatial"] is not None]
        out = {}
        for k in keys:
            res = evaluate_detector(model, dataset, ("attention",), module=k, limit=limit, extra_tolerances=extra,
                                    progress=progress)
            out[_method_name(k, len(keys))] = res["attention"]
        return out
    x = classification_transforms(int(config["image_size"]), normalize=True)(img).as_subclass(torch.Tensor)[None]
    has_map = bool(attention_modules(model)) and any(v["spatial"] is not None for v in attention_maps(model, x).values())
    methods = (("attention",) if has_map else ()) + ("gradcam",)
    return evaluate_classifier(model, dataset, int(config["image_size"]), methods, limit=limit,
                               extra_tolerances=extra, progress=progress)


def _committed_row(grid: str, run_id: str) -> Optional[Dict[str, Any]]:
    folder = Path(__file__).resolve().parent.parent / "results" / grid
    if not folder.is_dir():
        folder = _config.results_dir(grid)
    if not folder.is_dir():
        return None
    return next((r for r in load_results(folder) if r["run_id"] == run_id), None)


def run_study(name: str, results_dir: Optional[Path] = None, runs_dir: Optional[Path] = None,
              shard: Tuple[int, int] = (0, 1), seeds: Optional[Sequence[int]] = None,
              train_fn: Optional[TrainFn] = None, progress: bool = True,
              limit: Optional[int] = None, allow_mismatch: bool = False) -> List[Dict[str, Any]]:
    """Score this shard's models of study ``name`` that are not scored yet (training those not
    trained); returns every row in ``results_dir``. ``train_fn(config, run_dir)`` trains a grid
    point into its folder (default the ablation runner's); ``limit`` overrides the study's number
    of validation images. A rebuilt model whose validation mAP differs from the grid's committed
    row is an error (nothing is scored for it) unless ``allow_mismatch``."""
    from tqdm.auto import tqdm

    from .localisation import LocalisationScorer, centre_map, scaled_tolerance
    from .train import load_trained, train_from_config

    st = _study(name)
    train_fn = train_fn or train_from_config
    results_dir = Path(results_dir) if results_dir else _config.results_dir(f"localisation/{name}")
    runs_dir = Path(runs_dir) if runs_dir else _config.runs_dir(f"ablate/{st.grid}")
    limit = limit if limit is not None else st.limit
    i, n = shard
    points = [p for k, p in enumerate(study_points(name, seeds)) if k % n == i]
    out_file = _rows_file(results_dir, shard)
    done = _scored(load_rows(results_dir))
    todo = [p for p in points if p["run_id"] not in done]
    print(f"localisation study {name!r}: {len(points)} models in this shard ({i}/{n}), {len(points) - len(todo)} "
          f"already scored in {results_dir}, {len(todo)} to score; runs under {runs_dir}", flush=True)
    if not points:
        return load_rows(results_dir)
    dataset, _ = validation_split(points[0]["config"])
    m = len(dataset) if limit is None else min(int(limit), len(dataset))
    sizes = [tuple(dataset[k][0].shape[-2:]) for k in range(m)]
    scaled = round(scaled_tolerance(sizes), 1)
    old_rows = load_rows(results_dir)
    other = sorted({(r["eval_images"], r["scaled_tolerance"]) for r in old_rows} - {(m, scaled)})
    if other:
        raise ValueError(f"{results_dir} holds rows scored on {other[0][0]} images (scaled tolerance {other[0][1]} px), "
                         f"this call scores {m} ({scaled} px); they cannot share one report: pass another "
                         f"--results-dir (or the same --limit as before)")
    commit = git_commit()
    base = {"study": name, "grid": st.grid, "eval_images": m, "tolerance": 15.0, "scaled_tolerance": scaled,
            "git_commit": commit, "host": {"cpus": os.cpu_count(), "platform": sys.platform}}
    if "centre" not in done and i == 0:
        scorer = LocalisationScorer(len(dataset.classes), 15, (scaled,))
        for k in range(m):
            _, t = dataset[k]
            centre = centre_map(sizes[k])
            scorer.add({int(c) - 1: centre for c in t["labels"]}, t)
        scores = scorer.result()
        _append(out_file, [{**base, "run_id": "centre", "method": "centre", "setting": "centre", "seed": None,
                            **_scores_row(scores, scaled),
                            "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}])
    bar = tqdm(total=len(points), initial=len(points) - len(todo), desc=f"localise[{name}]", unit="model",
               disable=not progress, dynamic_ncols=True)
    for p in todo:
        cfg, run_dir = p["config"], runs_dir / p["run_id"]
        bar.set_postfix_str(f"{p['setting']} seed={cfg['seed']}")
        t0 = time.time()
        summary = train_fn(dict(cfg), run_dir)  # trains, or returns at once for a finished run
        train_s = time.time() - t0
        model, saved = load_trained(run_dir)
        committed = _committed_row(st.grid, p["run_id"])
        t1 = time.time()
        results = _score_model(model, saved["config"], dataset, m, scaled, progress=False)
        info = {
            **base, "run_id": p["run_id"], "setting": p["setting"], "seed": cfg["seed"], "config": cfg,
            "model_mAP": saved.get("mAP"), "committed_mAP": committed.get("mAP") if committed else None,
            "reproduced": (abs(saved["mAP"] - committed["mAP"]) < 1e-9) if committed else None,
            "standin_digest": (saved.get("standin") or summary.get("standin") or {}).get("weights_digest"),
            "train_or_load_s": train_s, "score_s": time.time() - t1,
            "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        if committed and not info["reproduced"]:
            msg = (f"run {p['run_id']} ({p['setting']} seed {cfg['seed']}) has validation mAP {saved['mAP']:.6f}, the "
                   f"committed row in results/{st.grid}/ says {committed['mAP']:.6f}: this is not the model the study "
                   f"measured (another stand-in build, thread count or code version)")
            if not allow_mismatch:
                raise RuntimeError(msg + "; nothing was scored for it. Rebuild the stand-in the study used (see "
                                   f"results/{st.grid}/PROVENANCE.md), or pass allow_mismatch=True "
                                   "(--allow-mismatch) to score it anyway, recorded as not reproduced")
            print("warning: " + msg + "; scored anyway (--allow-mismatch), the rows record both", file=sys.stderr,
                  flush=True)
        info["methods"] = sorted(results)
        _append(out_file, [{**info, "method": method, **_scores_row(scores, scaled)} for method, scores in results.items()])
        bar.update(1)
    bar.close()
    return load_rows(results_dir)


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------

def _label(row: Dict[str, Any]) -> str:
    return "centre" if row["method"] == "centre" else f"{row['setting']}/{row['method']}"


def _per_seed(rows: List[Dict[str, Any]], metric: str) -> Dict[str, Dict[int, float]]:
    """label -> {seed: value}; the centre (one value) is repeated under every seed."""
    out: Dict[str, Dict[int, float]] = {}
    seeds = sorted({r["seed"] for r in rows if r["seed"] is not None})
    for r in rows:
        value = r.get(metric, float("nan"))  # rows from before a metric existed have none
        if r["method"] == "centre":
            out["centre"] = {s: value for s in seeds}
        else:
            out.setdefault(_label(r), {})[int(r["seed"])] = value
    return out


def _check_rows(rows: List[Dict[str, Any]], study: LocalisationStudy) -> List[Dict[str, Any]]:
    """The rows of ``study``'s own models (others are left out with a warning), checked to share one
    evaluation set and to hold one model per (setting, seed)."""
    ids = {p["run_id"] for p in study_points(study.name)} | {"centre"}
    stray = sorted({r["run_id"] for r in rows} - ids)
    if stray:
        print(f"warning: rows of {len(stray)} runs that are not models of study {study.name!r} left out: {stray}",
              file=sys.stderr)
    rows = [r for r in rows if r["run_id"] in ids]
    sets = sorted({(r["eval_images"], r["scaled_tolerance"]) for r in rows})
    if len(sets) > 1:
        raise ValueError(f"the rows were scored on different image sets (images, scaled tolerance): {sets}; "
                         f"score them again into one results folder")
    owner: Dict[Tuple[str, Any, str], str] = {}
    for r in rows:
        key = (r["setting"], r["seed"], r["method"])
        if owner.setdefault(key, r["run_id"]) != r["run_id"]:
            raise ValueError(f"two runs ({owner[key]}, {r['run_id']}) claim setting {r['setting']!r} seed {r['seed']}")
    return rows


def summary_tables(rows: List[Dict[str, Any]], study: LocalisationStudy) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """``(levels, comparisons)``: each method's mean and 95 % t-interval per metric (with the chance
    level and the centre baseline), and the declared comparisons with paired differences, p-values
    and Holm's correction (primary family: the primary comparisons on ``pointing``; second family:
    every other comparison and metric). Declared comparisons whose methods have no rows are listed
    with ``n seeds`` 0 and no statistics (they are not part of any family)."""
    rows = _check_rows(rows, study)
    per_metric = {m: _per_seed(rows, m) for m in METRICS}  # label -> {seed: value}, once per metric
    level_rows = []
    chance_row: Dict[str, Any] = {"method": "chance (a random point; for energy: the boxes' area)"}
    for metric in METRICS:
        chance_row[metric] = rows[0][_CHANCE[metric]]  # the same in every row: it needs no model
    labels = list(dict.fromkeys(_label(r) for r in rows if r["method"] != "centre"))
    for lab in labels:
        entry: Dict[str, Any] = {"method": lab}
        for metric in METRICS:
            vals = per_metric[metric].get(lab, {})
            mean, lo, hi, k = mean_ci(list(vals.values()))
            entry.update({metric: mean, f"{metric} lo": lo, f"{metric} hi": hi, "n seeds": k})
        mine = [r for r in rows if _label(r) == lab]
        entry["flat maps (%)"] = 100 * float(np.mean([r.get("flat_maps", 0) / r["pairs"] for r in mine]))
        level_rows.append(entry)
    centre = next((r for r in rows if r["method"] == "centre"), None)
    if centre:
        level_rows.append({"method": "centre (baseline)", **{m: centre[m] for m in METRICS}})
    level_rows.append(chance_row)
    levels = pd.DataFrame(level_rows)
    comps = []
    for family, pairs, metrics in (("primary", study.primary, ("pointing",)),
                                   ("secondary", study.secondary, ("pointing",)),
                                   ("secondary", study.primary + study.secondary, _COMPARED)):
        for metric in metrics:
            per = per_metric[metric]
            for a, b in pairs:
                if a not in per or b not in per:
                    comps.append({"family": "not scored", "metric": metric, "a": a, "b": b, "diff": np.nan,
                                  "lo": np.nan, "hi": np.nan, "n seeds": 0, "p": np.nan})
                    continue
                d, lo, hi, k = paired_difference(per[a], per[b])
                comps.append({"family": family, "metric": metric, "a": a, "b": b, "diff": d, "lo": lo, "hi": hi,
                              "n seeds": k, "p": paired_p_value(per[a], per[b])})
    comparisons = pd.DataFrame(comps, columns=["family", "metric", "a", "b", "diff", "lo", "hi", "n seeds", "p"])
    comparisons["p (Holm)"] = np.nan
    comparisons["lo (Bonferroni)"] = np.nan
    comparisons["hi (Bonferroni)"] = np.nan
    for fam in ("primary", "secondary"):
        sel = comparisons["family"] == fam
        if sel.any():
            comparisons.loc[sel, "p (Holm)"] = holm(comparisons.loc[sel, "p"].tolist())
            level = 1 - 0.05 / int(comparisons.loc[sel, "p"].notna().sum() or 1)  # the family's simultaneous interval
            for i in comparisons.index[sel]:
                r = comparisons.loc[i]
                per = per_metric[r["metric"]]
                _, lo, hi, _ = paired_difference(per[r["a"]], per[r["b"]], level)
                comparisons.loc[i, ["lo (Bonferroni)", "hi (Bonferroni)"]] = lo, hi
    comparisons["significant"] = np.where(comparisons["p (Holm)"] < 0.05, "yes",
                                          np.where(comparisons["family"] == "not scored", "", "no"))
    return levels, comparisons


def _fmt(v: Any, digits: int = 1, sign: bool = False) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return ""
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def _p(v: float) -> str:
    return "" if not np.isfinite(v) else ("< 0.001" if v < 0.001 else f"{v:.3f}")


def _levels_md(levels: pd.DataFrame) -> str:
    head = ("| method | n seeds | " + " | ".join(METRICS.values()) + " | flat maps (%) |\n|---|---|"
            + "---|" * (len(METRICS) + 1) + "\n")
    body = []
    for _, r in levels.iterrows():
        cells = []
        for m in METRICS:
            lo, hi = r.get(f"{m} lo"), r.get(f"{m} hi")
            ci = f" [{_fmt(lo)}, {_fmt(hi)}]" if isinstance(lo, float) and np.isfinite(lo) else ""
            cells.append(_fmt(r[m]) + ci)
        n = r.get("n seeds")
        cells.append(_fmt(r.get("flat maps (%)")))
        body.append(f"| {r['method']} | {'' if n is None or not np.isfinite(n) else int(n)} | " + " | ".join(cells) + " |")
    return head + "\n".join(body) + "\n"


def _comparisons_md(comps: pd.DataFrame) -> str:
    head = ("| family | metric | a | b | n seeds | a - b (points) | 95% CI | diff CI (Bonferroni) | p | p (Holm) "
            "| significant |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
    return head + "\n".join(
        f"| {r['family']} | {r['metric']} | {r['a']} | {r['b']} | {int(r['n seeds'])} | {_fmt(r['diff'], sign=True)} | "
        f"[{_fmt(r['lo'])}, {_fmt(r['hi'])}] | [{_fmt(r['lo (Bonferroni)'])}, {_fmt(r['hi (Bonferroni)'])}] | "
        f"{_p(r['p'])} | {_p(r['p (Holm)'])} | {r['significant']} |"
        for _, r in comps.iterrows()) + "\n"


def plot_levels(rows: List[Dict[str, Any]], title: str = ""):
    """Per-seed scores of every method, one panel per metric, with the centre and chance lines."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    df = pd.DataFrame([{"method": _label(r), **{m: r[m] for m in METRICS}} for r in rows if r["method"] != "centre"])
    centre = next((r for r in rows if r["method"] == "centre"), None)
    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.6 * len(METRICS), 0.45 * df["method"].nunique() + 2.2),
                             sharey=True, squeeze=False)
    order = list(dict.fromkeys(df["method"]))
    for ax, (m, heading) in zip(axes[0], METRICS.items()):
        sns.stripplot(data=df, x=m, y="method", order=order, ax=ax, color="0.25", size=4, jitter=0.15)
        for k, lab in enumerate(order):  # the tables' t-interval, not seaborn's bootstrap
            mean, lo, hi, _ = mean_ci(df.loc[df["method"] == lab, m].tolist())
            ax.errorbar(mean, k, xerr=[[mean - lo], [hi - mean]] if np.isfinite(lo) else None, fmt="D",
                        color="C0", ms=6, lw=2.5, capsize=0, zorder=3)
        ax.axvline(rows[0][_CHANCE[m]], color="0.5", ls=":", label="chance")
        if centre:
            ax.axvline(centre[m], color="C3", ls="--", label="centre")
        ax.set_xlabel(textwrap.fill(heading.replace(" (%)", " %"), 30), fontsize=11)
        ax.set_ylabel("")
        ax.tick_params(labelsize=10)
    axes[0][0].legend(fontsize=9, loc="lower left")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def maps_figure(name: str, runs_dir: Optional[Path] = None, seed: int = 0, n_images: int = 4):
    """Trained maps beside each other on ``n_images`` validation images with two classes or more:
    each setting's attention map(s) and, for classifiers, each setting's Grad-CAM of the image's
    first class; the boxes drawn (dashed: difficult). Reads the models of ``seed`` from their runs
    (they must be trained: :func:`run_study`). Returns the figure."""
    import matplotlib.pyplot as plt
    import torch

    from .data.transforms import classification_transforms
    from .maps import attention_maps, detector_attention_maps, gradcam_maps, plot_overlays
    from .train import load_trained

    st = _study(name)
    runs_dir = Path(runs_dir) if runs_dir else _config.runs_dir(f"ablate/{st.grid}")
    points = study_points(name, [seed])
    models = {p["setting"]: load_trained(runs_dir / p["run_id"]) for p in points}
    dataset, _ = validation_split(points[0]["config"])
    picks = [k for k in range(len(dataset)) if len(set(dataset[k][1]["labels"].tolist())) >= 2][:n_images]
    rows = []
    for k in picks:
        img, target = dataset[k]
        img = img.as_subclass(torch.Tensor).float()
        size = tuple(img.shape[-2:])
        cls = int(target["labels"][0]) - 1
        panels: Dict[str, torch.Tensor] = {}
        for setting, (model, saved) in models.items():
            cfg = saved["config"]
            if cfg.get("task") == "detection":
                maps = {kk: v for kk, v in detector_attention_maps(model, [img]).items() if v["spatial"] is not None}
                for kk, v in maps.items():
                    panels[f"{setting}: {_method_name(kk, len(maps))}"] = v["spatial"][0]
                continue
            x = classification_transforms(int(cfg["image_size"]), normalize=True)(img).as_subclass(torch.Tensor)[None]
            from .attention import attention_modules

            if attention_modules(model):
                for kk, v in attention_maps(model, x, [size]).items():
                    if v["spatial"] is not None:
                        panels[f"{setting}: attention"] = v["spatial"][0]
            panels[f"{setting}: Grad-CAM ({dataset.classes[cls]})"] = gradcam_maps(model, x, [[cls]], sizes=[size])[0][cls]
        rows.append((img, target, panels))
    if not rows:
        raise ValueError(f"no validation image with two classes or more in {name!r}'s devkit")
    ncol = 1 + len(rows[0][2])
    fig, axes = plt.subplots(len(rows), ncol, figsize=(2.4 * ncol, 2.5 * len(rows)), squeeze=False)
    for r, (img, target, panels) in enumerate(rows):
        plot_overlays(img, panels, target, classes=dataset.classes, axes=axes[r], colorbar=False)
        for ax in axes[r]:
            ax.title.set_fontsize(8)
    fig.suptitle(f"localisation study {name}: seed {seed}'s trained maps on validation images\n(boxes: ground "
                 f"truth, dashed: difficult; each map on its own colour scale, its range printed)", fontsize=9)
    fig.tight_layout()
    return fig


def write_report(name: str, results_dir: Optional[Path] = None, figures: bool = True,
                 quiet: bool = False) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """Write ``summary.md``, ``summary.csv`` and ``fig_pointing.png`` for study ``name`` from its rows."""
    st = _study(name)
    results_dir = Path(results_dir) if results_dir else _config.results_dir(f"localisation/{name}")
    rows = load_rows(results_dir)
    if not [r for r in rows if r["method"] != "centre"]:
        raise FileNotFoundError(f"no localisation rows in {results_dir}; run `python -m sca_lib.localise --study {name}`")
    levels, comps = summary_tables(rows, st)
    rows = _check_rows(rows, st)
    models = [r for r in rows if r["method"] != "centre"]
    by_model = {r["run_id"]: r for r in models}
    repro = [r for r in by_model.values() if r.get("reproduced") is not None]
    commits = sorted({r["git_commit"] for r in rows if r.get("git_commit")})
    any_row = models[0]
    centre = next((r for r in rows if r["method"] == "centre"), None)
    pairs = any_row["pairs"]
    se = (100 * math.sqrt(centre["pointing"] / 100 * (1 - centre["pointing"] / 100) / pairs)) if centre else float("nan")
    lines = [
        f"# Localisation study `{name}`\n\n{st.question}.\n\n",
        f"{len(by_model)} models (grid `{st.grid}`, study `{st.study}`, settings {', '.join(st.settings)}), scored on "
        f"the first {any_row['eval_images']} validation images of their devkit: {pairs} (image, class) pairs, "
        f"{any_row['pairs_difficult']} of them in the difficult subset, {any_row['skipped_difficult']} skipped "
        f"(every box of the class `difficult`). Rows written at commits {', '.join(commits)}. Regenerate: "
        f"`python -m sca_lib.localise --study {name}` (trains what is missing under runs/ablate/{st.grid}/), "
        f"tables only: `--report-only`.\n\n",
        f"Models rebuilt with exactly the validation mAP of their committed row (results/{st.grid}/): "
        f"{sum(bool(r['reproduced']) for r in repro)} of {len(repro)}" + (
            "; **the others differ** (see `committed_mAP` in the rows)" if any(not r["reproduced"] for r in repro)
            else "") + ".\n\n",
        f"Pointing game: a hit when the map's maximum lies strictly within 15 px of a box of the class (TorchRay's "
        f"rule); the scaled tolerance is {any_row['scaled_tolerance']:g} px, the same share of this split's median "
        f"image diagonal as 15 px of VOC's 500 x 375 images. Energy: the share of the map's mass inside the class's "
        f"boxes (chance: the boxes' share of the image). An attention map is class-agnostic (the same map scored "
        f"under every class of its image); Grad-CAM has one map per class. Mean over seeds with a 95 % t-interval; "
        f"the centre baseline and chance need no model (one value).\n\n",
        _levels_md(levels),
        "\n`flat maps`: the share of (image, class) pairs whose map is flat (`sca_lib.localisation.is_flat`: "
        "its range under 1e-6 of its maximum, e.g. a Grad-CAM whose weighted sum is negative everywhere, all zeros "
        "after its ReLU, or a gate saturated at 1 everywhere); a flat map points at the top-left pixel (argmax's "
        "first pixel) and misses unless a box lies within 15 px of it, and its energy is about the boxes' area share. The column *pairs whose map is not "
        "flat* scores the game without them (a sensitivity check, not declared).\n\n"
        "Comparisons declared before the study ran (`a - b`, paired by seed). Primary: Holm over the primary family on "
        "the 15-px pointing game; every other comparison and metric: Holm over the second family. `significant` "
        "means `p (Holm)` < 0.05; `diff CI (Bonferroni)` is the family's simultaneous interval. **What the intervals "
        "cover**: the spread over training seeds, every seed scored on the same images; the images' own sampling "
        f"error is not in them (for scale: a binomial standard error of {se:.1f} points for the centre's "
        f"{centre['pointing'] if centre else float('nan'):.1f} % over {pairs} pairs), so a difference says what the "
        "models do on these images, not on a new sample of images.\n\n",
        _comparisons_md(comps),
    ]
    atomic_write_text(results_dir / "summary.md", "".join(lines))
    flat = pd.concat([levels.assign(table="levels"), comps.assign(table="comparisons")], ignore_index=True)
    atomic_write_text(results_dir / "summary.csv", flat.to_csv(index=False))
    if figures:
        import matplotlib.pyplot as plt

        fig = plot_levels(rows, f"localisation study {name}: per seed (dots), mean and 95 % t-interval (diamonds)")
        fig.savefig(results_dir / "fig_pointing.png", dpi=110)
        plt.close(fig)
    if not quiet:
        print("".join(lines[4:]))
        print(f"wrote {results_dir / 'summary.md'}, summary.csv" + (", fig_pointing.png" if figures else ""))
    return levels, comps


def explained_variance(weights, labels) -> float:
    """Mean over channels of the R^2 of a least-squares fit of each channel's weight ``(N, C)`` on
    the class indicators ``(N, K)`` plus an intercept: how much of a channel gate's variation the
    classes account for (1: entirely, 0: not at all)."""
    import torch

    w = torch.as_tensor(weights).double()
    X = torch.cat([torch.as_tensor(labels).double(), torch.ones(len(w), 1, dtype=torch.float64)], 1)
    resid = w - X @ torch.linalg.lstsq(X, w).solution
    return float((1 - resid.var(0) / w.var(0).clamp_min(1e-12)).mean())


def channel_study(name: str, results_dir: Optional[Path] = None, runs_dir: Optional[Path] = None,
                  seeds: Optional[Sequence[int]] = None, shuffles: int = 20, quiet: bool = False) -> pd.DataFrame:
    """Is the channel gate class-dependent? For every model of study ``name`` with a channel gate,
    :func:`explained_variance` of its channel weights on the validation images' classes, against
    the same with the images' labels shuffled ``shuffles`` times (what the class indicators explain
    by chance). Writes ``channels.csv``, ``channels.md`` and ``fig_channels.png`` (the first
    model's per-class profile, :func:`sca_lib.maps.channel_profiles`); reads the trained runs of
    ``seeds`` (default the grid's; :func:`run_study` trains them)."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    import torch

    from .data.transforms import classification_transforms
    from .maps import attention_maps, channel_profiles
    from .train import load_trained

    st = _study(name)
    results_dir = Path(results_dir) if results_dir else _config.results_dir(f"localisation/{name}")
    runs_dir = Path(runs_dir) if runs_dir else _config.runs_dir(f"ablate/{st.grid}")
    points = study_points(name, seeds)
    dataset, cfg = validation_split(points[0]["config"])
    if cfg.task == "detection":
        raise ValueError(f"channel_study reads classifiers; study {name!r} holds detectors")
    prep = classification_transforms(cfg.image_size, normalize=True)
    xs = torch.stack([prep(dataset[k][0].as_subclass(torch.Tensor).float()).as_subclass(torch.Tensor)
                      for k in range(len(dataset))])
    labels = torch.zeros(len(dataset), len(dataset.classes))
    for k in range(len(dataset)):
        labels[k, dataset[k][1]["labels"] - 1] = 1
    out, first = [], None
    for p in points:
        model, _ = load_trained(runs_dir / p["run_id"])
        with torch.no_grad():
            maps = [attention_maps(model, xs[i:i + 64]) for i in range(0, len(xs), 64)] if p["setting"] != "none" else []
        names = [k for k, v in (maps[0].items() if maps else []) if v["channel"] is not None]
        if not names:
            continue
        w = torch.cat([m[names[0]]["channel"] for m in maps])
        g = torch.Generator().manual_seed(0)
        shuf = [explained_variance(w, labels[torch.randperm(len(labels), generator=g)]) for _ in range(shuffles)]
        out.append({"setting": p["setting"], "seed": p["config"]["seed"], "run_id": p["run_id"], "module": names[0],
                    "channels": int(w.shape[1]), "r2": explained_variance(w, labels),
                    "r2_shuffled_mean": float(np.mean(shuf)), "r2_shuffled_max": float(np.max(shuf))})
        if first is None:
            first = (p, names[0], w)
    if not out:
        raise ValueError(f"no model of study {name!r} has a channel gate")
    df = pd.DataFrame(out)
    atomic_write_text(results_dir / "channels.csv", df.to_csv(index=False))
    md = (f"# Channel gates of study `{name}`: are they class-dependent?\n\nFor each model with a channel gate: the "
          f"mean over its {df['channels'].iloc[0]} channels of the R^2 of a least-squares fit of the channel's weight "
          f"on the 20 class indicators over the {len(dataset)} validation images, and the same with the images' "
          f"labels shuffled {shuffles} times (mean and max: the chance level of 20 regressors). Regenerate: "
          f"`python -m sca_lib.localise --study {name} --channels`.\n\n| setting | seed | R^2 on the classes | "
          f"shuffled, mean | shuffled, max |\n|---|---|---|---|---|\n" + "".join(
              f"| {r.setting} | {r.seed} | {r.r2:.3f} | {r.r2_shuffled_mean:.3f} | {r.r2_shuffled_max:.3f} |\n"
              for r in df.itertuples()))
    atomic_write_text(results_dir / "channels.md", md)
    p, module, w = first
    profile = channel_profiles(w, labels, dataset.classes)
    fig, ax = plt.subplots(figsize=(min(18, 2 + 0.22 * profile.shape[1]), 5.5))
    sns.heatmap(profile, center=0, cmap="vlag", ax=ax, cbar_kws={"label": "mean weight minus the mean over images"})
    ax.set_xlabel(f"channel of {module} ({w.shape[1]} channels)")
    ax.set_title(f"per-class channel-gate profile: study {name}, {p['setting']} seed {p['config']['seed']}, "
                 f"{len(dataset)} validation images", fontsize=10)
    fig.tight_layout()
    fig.savefig(results_dir / "fig_channels.png", dpi=100)
    plt.close(fig)
    if not quiet:
        print(md)
    return df


def _write_maps_figure(name: str, results_dir: Path, runs_dir: Optional[Path], seeds: Optional[Sequence[int]]) -> None:
    import matplotlib.pyplot as plt

    seed = (seeds or [0])[0]
    try:
        fig = maps_figure(name, runs_dir, seed)
    except FileNotFoundError as e:  # a report from committed rows, without the trained runs
        print(f"fig_maps.png not redrawn: seed {seed}'s runs are not here ({e})", file=sys.stderr)
        return
    fig.savefig(results_dir / "fig_maps.png", dpi=100)
    plt.close(fig)
    print(f"wrote {results_dir / 'fig_maps.png'}")


def main(argv: Optional[List[str]] = None) -> int:
    from .ablate import parse_shard

    ap = argparse.ArgumentParser(prog="python -m sca_lib.localise", description="Score the maps of a study's trained "
                                 "models (training those missing) and write the localisation report.")
    ap.add_argument("--study", default="cpu", type=str.lower, choices=list(LOCALISATION_STUDIES),
                    help="(default cpu) " + "; ".join(f"{s.name}: grid {s.grid}, {', '.join(s.settings)}"
                                                      for s in LOCALISATION_STUDIES.values()))
    ap.add_argument("--shard", default=None, help="i/n: score every n-th model starting at i")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (default: the grid's)")
    ap.add_argument("--limit", type=int, default=None, help="score the first N validation images (default: all)")
    ap.add_argument("--results-dir", type=Path, default=None, help="default results/localisation/<study>/")
    ap.add_argument("--runs-dir", type=Path, default=None, help="trained runs, default runs/ablate/<grid>/")
    ap.add_argument("--report-only", action="store_true", help="write the report from the rows; score nothing")
    ap.add_argument("--no-report", action="store_true", help="score only (e.g. one shard of several)")
    ap.add_argument("--list", action="store_true", help="list the study's models and which are scored")
    ap.add_argument("--channels", action="store_true",
                    help="only the channel-gate analysis of the study's trained classifiers (channels.md, fig_channels.png)")
    ap.add_argument("--allow-mismatch", action="store_true",
                    help="score a rebuilt model whose validation mAP differs from the grid's committed row")
    a = ap.parse_args(argv)
    try:
        shard = parse_shard(a.shard)
        seeds = [int(s) for s in a.seeds.split(",")] if a.seeds else None
    except ValueError as e:
        ap.error(str(e))
    results_dir = a.results_dir or _config.results_dir(f"localisation/{a.study}")
    try:
        if a.list:
            done = _scored(load_rows(results_dir))
            for p in study_points(a.study, seeds):
                print(f"{'scored' if p['run_id'] in done else 'todo':6s} {p['run_id']} {p['setting']} seed={p['config']['seed']}")
            return 0
        if a.channels:
            channel_study(a.study, results_dir, a.runs_dir, seeds)
            return 0
        if not a.report_only:
            run_study(a.study, results_dir, a.runs_dir, shard, seeds, limit=a.limit, allow_mismatch=a.allow_mismatch)
        if not a.no_report:
            write_report(a.study, results_dir)
            _write_maps_figure(a.study, results_dir, a.runs_dir, seeds)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
