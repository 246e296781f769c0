"""The ablation runner: a resumable grid of training runs whose results land in a tidy JSONL file.

Command line::

    python -m sca_lib.ablate --preset quick             # the README's main job (5.5 min measured on 2 CPU cores)
    python -m sca_lib.ablate --preset cpu               # the committed study (results/cpu/)
    python -m sca_lib.ablate --preset full              # real VOC2012 + ImageNet weights, for a GPU
    python -m sca_lib.ablate --preset cpu --only variants,placement --shard 0/4
    python -m sca_lib.ablate merge results/cpu/*.jsonl --out results/cpu/runs.jsonl
    python -m sca_lib.ablate --preset cpu --dry-run     # list the grid and what is already done

Every grid point is one call of the training engine (:func:`sca_lib.train.train_classifier`). A
finished run appends one line to ``results/<preset>/runs[.shard-i-of-n].jsonl`` holding its full
config, a config hash (the run id), the git commit, seed, metrics, params, FLOPs, wall time and
images/s. Runs already in any results file of that folder are skipped, so rerunning the same
command after an interruption finishes the grid without duplicates; an interrupted run resumes
from its last epoch checkpoint under ``runs/ablate/<preset>/<run id>/``.

Several machines or GPUs: give each a shard (``--shard i/n``, runs are dealt round-robin in a fixed
order); each shard writes its own file, and the report reads every ``*.jsonl`` in the folder (or
``merge`` them into one). With torchrun on one multi-GPU machine, run one shard per GPU:
``for i in 0 1 2 3; do CUDA_VISIBLE_DEVICES=$i python -m sca_lib.ablate --preset full --shard $i/4 & done``;
on a cluster, a job array with ``--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

__all__ = [
    "PRESETS",
    "Study",
    "build_grid",
    "run_grid",
    "load_results",
    "merge_results",
    "config_hash",
    "parse_shard",
]

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Study:
    """A named set of grid points: each ``variants`` entry overrides the preset's base config."""

    name: str
    question: str
    variants: Tuple[Dict, ...]
    backbones: Tuple[str, ...]


def _variants_study(backbones: Sequence[str], lite_backbones: Sequence[str] = ("mobilenet_v3_small", "mobilenet_v3_large")) -> Study:
    points = [{"attention": None}, {"attention": "channel"}, {"attention": "spatial"}, {"attention": "dual"}]
    return Study(
        "variants",
        "Does attention help, and which path (C2, C11, C15)?",
        tuple(points) + ({"attention": "lite"},),
        tuple(backbones),
    )


def _knob_studies(backbone: str, placements: Sequence[str]) -> List[Study]:
    return [
        Study("placement", "Where should the module go (C14)?",
              tuple({"attention": "dual", "placement": p} for p in placements), (backbone,)),
        Study("reduction", "Reduction ratio 8 (C1) vs 16 (C5)?",
              ({"attention": "dual", "reduction": 8}, {"attention": "dual", "reduction": 16}), (backbone,)),
        Study("strength", "Do the article's alpha/beta presets (C10) matter?",
              tuple({"attention": "dual", "strength": s} for s in (None, "classification", "detection", "segmentation")),
              (backbone,)),
        Study("dropout", "Attention dropout 0.1 (C9) on or off?",
              ({"attention": "dual", "drop_rate": 0.0}, {"attention": "dual", "drop_rate": 0.1}), (backbone,)),
        Study("schedule", "Staged (C6) or single-stage training?",
              ({"attention": "dual", "schedule": "staged"}, {"attention": "dual", "schedule": "single"}), (backbone,)),
        Study("init", "Identity start or plain start?",
              ({"attention": "dual", "identity_init": False}, {"attention": "dual", "identity_init": True}), (backbone,)),
    ]


@dataclass(frozen=True)
class Preset:
    """An ablation preset: which training preset each run uses, the seeds and the studies."""

    name: str
    train_preset: str
    seeds: Tuple[int, ...]
    studies: Tuple[Study, ...]
    overrides: Dict = field(default_factory=dict)
    description: str = ""


PRESETS: Dict[str, Preset] = {
    "fast": Preset(
        "fast", "fast", (0, 1),
        (Study("variants", "plumbing check", ({"attention": None}, {"attention": "dual"}), ("mobilenet_v3_small",)),),
        description="CI plumbing check: 2 variants x 2 seeds of the fast training preset (seconds).",
    ),
    "quick": Preset(
        "quick", "cpu", (0, 1, 2),
        (Study("variants", "Does attention help, and which path?",
               ({"attention": None}, {"attention": "channel"}, {"attention": "spatial"}, {"attention": "dual"}),
               ("mobilenet_v3_small",)),),
        overrides={"quick": True},
        description="README main job: 4 variants x 3 seeds on the synthetic devkit, 5.5 minutes measured on 2 CPU cores from a fresh clone (data generation and stand-in pre-training included).",
    ),
    "cpu": Preset(
        "cpu", "cpu", (0, 1, 2),
        (_variants_study(("mobilenet_v3_small",)),
         Study("variants_single", "The same variants trained in one stage (whole network, LR 0.01)",
               tuple({**v, "schedule": "single"} for v in _variants_study(("mobilenet_v3_small",)).variants),
               ("mobilenet_v3_small",)),
         *_knob_studies("mobilenet_v3_small", ("after_features.3", "after_features.8", "after_features.12", "replace_se"))),
        description="The committed CPU study (results/cpu/): every study, 3 seeds, synthetic devkit.",
    ),
    "full": Preset(
        "full", "full", (0, 1, 2),
        (_variants_study(("vgg16", "resnet50", "mobilenet_v3_large")),
         *_knob_studies("resnet50", ("layer3.1", "layer4.1", "layer4.1.inside", "after_layer4"))),
        description="The article's protocol on real VOC2012 with ImageNet weights, for a GPU.",
    ),
}


def config_hash(config: Dict) -> str:
    """A short, stable hash of a JSON-serialisable config (the run id)."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def parse_shard(text: Optional[str]) -> Tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n; None -> (0, 1)."""
    if text is None:
        return 0, 1
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard expects i/n with integers, e.g. 0/4, got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"--shard {text!r}: need 0 <= i < n (shards are numbered from 0)")
    return i, n


def build_grid(preset: str, only: Optional[Iterable[str]] = None, seeds: Optional[Sequence[int]] = None) -> List[Dict]:
    """Every grid point of a preset as ``{"study", "run_id", "config"}``, in a fixed order.

    A config identical in two studies (e.g. the default dual model appears in several knob studies)
    is one run, listed once under the first study that names it, and reused by the others.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown ablation preset {preset!r}; expected one of {', '.join(PRESETS)}")
    p = PRESETS[preset]
    names = [s.name for s in p.studies]
    wanted = list(only) if only else names
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise ValueError(f"--only: unknown studies {unknown} for preset {preset!r}; expected from {', '.join(names)}")
    grid, seen = [], {}
    for study in p.studies:
        if study.name not in wanted:
            continue
        for backbone in study.backbones:
            for variant in study.variants:
                if variant.get("attention") == "lite" and not backbone.startswith("mobilenet"):
                    continue
                for seed in (seeds if seeds is not None else p.seeds):
                    config = {"preset": p.train_preset, "backbone": backbone, "seed": int(seed), **p.overrides}
                    config.update({k: v for k, v in variant.items()})
                    config = _normalise(config)
                    rid = config_hash(config)
                    if rid in seen:
                        seen[rid]["studies"].append(study.name)
                        continue
                    point = {"study": study.name, "studies": [study.name], "run_id": rid, "config": config}
                    seen[rid] = point
                    grid.append(point)
    return grid


_DEFAULT_REDUCTION = {"dual": 8, "channel": 8, "spatial": 8, "lite": 16, "lite_channel": 16, "lite_spatial": 16}


def _normalise(config: Dict) -> Dict:
    """Defaults made explicit so that equal models hash equally across studies.

    A plain model carries no attention knobs; an attention model's placement ``None`` becomes the
    backbone's default placement and its reduction ``None`` the module's default (8, or 16 for lite).
    """
    out = {"attention": None, "placement": None, "reduction": None, "strength": None,
           "drop_rate": 0.0, "identity_init": False, "schedule": "staged"}
    out.update(config)
    if out["attention"] is None:
        out.update(placement=None, reduction=None, strength=None, drop_rate=0.0, identity_init=False)
    else:
        if out["placement"] is None:
            from .backbones import default_placement

            out["placement"] = default_placement(out["backbone"])
        if out["reduction"] is None:
            out["reduction"] = _DEFAULT_REDUCTION.get(out["attention"], 8)
    return out


def git_commit() -> str:
    """The current commit (with ``+dirty`` when the tree has uncommitted changes), or 'unknown'."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def load_results(folder: Path) -> List[Dict]:
    """Every finished run in ``folder/*.jsonl``, de-duplicated by run id (first occurrence wins).

    A truncated last line (a kill during a write) is ignored with a warning, never fatal.
    """
    folder = Path(folder)
    rows, seen = [], set()
    for path in sorted(folder.glob("*.jsonl")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                print(f"warning: {path}:{n} is not valid JSON (an interrupted write?); ignored", file=sys.stderr)
                continue
            if row.get("run_id") in seen:
                continue
            seen.add(row.get("run_id"))
            rows.append(row)
    return rows


def merge_results(paths: Sequence[Path], out: Path) -> int:
    """Merge results files into ``out`` (de-duplicated by run id); returns the number of runs."""
    rows, seen = [], set()
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"results file not found: {path}")
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                if row["run_id"] not in seen:
                    seen.add(row["run_id"])
                    rows.append(row)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, out)
    return len(rows)


def _append(path: Path, row: Dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(row, sort_keys=True) + "\n"
    with open(path, "a", encoding="utf-8") as f:  # one write of one line: O_APPEND keeps lines whole
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def _default_train_fn(config: Dict, out_dir: Path) -> Dict:
    from .train import train_from_ablation_config

    return train_from_ablation_config(config, out_dir)


def run_grid(
    preset: str,
    results_dir: Optional[Path] = None,
    runs_dir: Optional[Path] = None,
    only: Optional[Iterable[str]] = None,
    shard: Tuple[int, int] = (0, 1),
    seeds: Optional[Sequence[int]] = None,
    train_fn: Optional[Callable[[Dict, Path], Dict]] = None,
    progress: bool = True,
) -> List[Dict]:
    """Run the grid points of this shard that are not finished yet; returns all finished rows."""
    from tqdm.auto import tqdm

    train_fn = train_fn or _default_train_fn
    results_dir = Path(results_dir) if results_dir else REPO_ROOT / "results" / preset
    runs_dir = Path(runs_dir) if runs_dir else REPO_ROOT / "runs" / "ablate" / preset
    i, n = shard
    grid = [pt for k, pt in enumerate(build_grid(preset, only, seeds)) if k % n == i]
    out_file = results_dir / ("runs.jsonl" if n == 1 else f"runs.shard-{i}-of-{n}.jsonl")
    done = {r["run_id"] for r in load_results(results_dir)}
    todo = [pt for pt in grid if pt["run_id"] not in done]
    commit = git_commit()
    print(f"ablation preset {preset!r}: {len(grid)} runs in this shard ({i}/{n}), {len(grid) - len(todo)} already "
          f"in {results_dir}, {len(todo)} to run; checkpoints under {runs_dir}", flush=True)
    bar = tqdm(total=len(grid), initial=len(grid) - len(todo), desc=f"ablate[{preset}]", unit="run",
               disable=not progress, dynamic_ncols=True)
    for pt in todo:
        cfg = pt["config"]
        bar.set_postfix_str(f"{cfg['backbone']} {cfg['attention'] or 'none'} seed={cfg['seed']}")
        start = time.time()
        summary = train_fn(cfg, runs_dir / pt["run_id"])
        row = {
            "run_id": pt["run_id"],
            "study": pt["study"],
            "studies": pt["studies"],
            "preset": preset,
            "config": cfg,
            "git_commit": commit,
            "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "host": {"cpus": os.cpu_count(), "platform": sys.platform},
            **{k: v for k, v in summary.items() if k != "config"},
        }
        row.setdefault("wall_time_s", time.time() - start)
        _append(out_file, row)
        bar.update(1)
    bar.close()
    return load_results(results_dir)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "merge":
        mp = argparse.ArgumentParser(prog="python -m sca_lib.ablate merge", description="merge results files")
        mp.add_argument("paths", nargs="+", type=Path)
        mp.add_argument("--out", type=Path, required=True)
        a = mp.parse_args(argv[1:])
        print(f"merged {merge_results(a.paths, a.out)} runs into {a.out}")
        return 0
    ap = argparse.ArgumentParser(prog="python -m sca_lib.ablate", description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="quick", choices=sorted(PRESETS))
    ap.add_argument("--only", default=None, help="comma-separated studies, e.g. variants,placement")
    ap.add_argument("--shard", default=None, help="i/n: run every n-th grid point starting at i")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (default: the preset's)")
    ap.add_argument("--results-dir", type=Path, default=None, help="default results/<preset>/")
    ap.add_argument("--runs-dir", type=Path, default=None, help="checkpoints, default runs/ablate/<preset>/")
    ap.add_argument("--dry-run", action="store_true", help="list the grid and what is done; train nothing")
    ap.add_argument("--no-report", action="store_true", help="skip the summary table and figures")
    a = ap.parse_args(argv)
    only = a.only.split(",") if a.only else None
    seeds = [int(s) for s in a.seeds.split(",")] if a.seeds else None
    shard = parse_shard(a.shard)
    results_dir = a.results_dir or REPO_ROOT / "results" / a.preset
    if a.dry_run:
        done = {r["run_id"] for r in load_results(results_dir)}
        for k, pt in enumerate(build_grid(a.preset, only, seeds)):
            if k % shard[1] == shard[0]:
                c = pt["config"]
                knobs = {key: c[key] for key in ("placement", "reduction", "strength", "drop_rate", "identity_init", "schedule")}
                print(f"{'done' if pt['run_id'] in done else 'todo'} {pt['run_id']} {pt['study']:9s} {c['backbone']} "
                      f"{c['attention'] or 'none'} seed={c['seed']} {knobs}")
        return 0
    start = time.time()
    rows = run_grid(a.preset, results_dir, a.runs_dir, only, shard, seeds)
    print(f"grid finished: {len(rows)} runs in {results_dir} ({time.time() - start:.0f} s this call)")
    if not a.no_report:
        from .report import write_report

        write_report(results_dir, preset=a.preset)
    return 0


if __name__ == "__main__":
    sys.exit(main())
