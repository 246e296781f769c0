"""The ablation runner: trains the points of a grid (:mod:`sca_lib.studies`) that are not done yet.

Command line::

    python -m sca_lib.ablate --grid quick             # the README's main job
    python -m sca_lib.ablate --grid cpu               # the committed study (results/cpu/)
    python -m sca_lib.ablate --grid full              # real VOC2012 + ImageNet weights, for a GPU
    python -m sca_lib.ablate --grid cpu --only variants,placement --shard 0/4
    python -m sca_lib.ablate merge results/cpu/*.jsonl --out results/cpu/runs.jsonl
    python -m sca_lib.ablate --grid cpu --dry-run     # list the grid and what is already done

Every grid point is one call of the training side (``sca_lib.train.train_from_config``). A
finished run appends one row to ``results/<grid>/runs[.shard-i-of-n].jsonl`` (see
:mod:`sca_lib.results`); a run that diverges is recorded as a failed row with its reason and the
grid goes on. Runs already in any results file of that folder, finished or failed, are skipped
(``--retry-failed`` tries failed ones again), so rerunning the same command after an interruption
finishes the grid without duplicates; an interrupted run resumes from its last epoch checkpoint
under ``runs/ablate/<grid>/<run id>/``. Default folders come from :mod:`sca_lib.config`.

Several machines or GPUs: give each a shard (``--shard i/n``, runs are dealt round-robin in a fixed
order); each shard writes its own file, and the report reads every ``*.jsonl`` in the folder (or
``merge`` them into one). One shard per GPU on one machine:
``for i in 0 1 2 3; do CUDA_VISIBLE_DEVICES=$i python -m sca_lib.ablate --grid full --shard $i/4 & done``;
on a cluster, a job array with ``--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT``, or let submitit
write and submit it: ``python -m sca_lib.ablate --grid full --launcher submitit --shards 8
--slurm-partition gpu --gpus-per-node 1`` (:func:`launch_submitit`; ``--cluster local`` runs the jobs
as processes on this machine).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from . import config as _config
from ._checks import positive_int
from . import report
from . import train as _training
from .engine import DivergenceError
from .results import append_row, git_commit, is_finished, load_results, merge_results
from .spec import SPEC_KEYS
from .studies import GRIDS, build_grid

__all__ = ["run_grid", "parse_shard", "launch_submitit", "main"]

TrainFn = Callable[[Dict[str, Any], Path], Dict[str, Any]]


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


def _default_train_fn(config: Dict[str, Any], out_dir: Path) -> Dict[str, Any]:
    return _training.train_from_config(config, out_dir)


def _shard_points(grid: str, only: Optional[Iterable[str]], seeds: Optional[Sequence[int]],
                  shard: Tuple[int, int]) -> List[Dict[str, Any]]:
    i, n = shard
    return [pt for k, pt in enumerate(build_grid(grid, only, seeds)) if k % n == i]


def _done_ids(rows: List[Dict[str, Any]], retry_failed: bool) -> set:
    return {r["run_id"] for r in rows if is_finished(r) or not retry_failed}


def run_grid(
    grid: str,
    results_dir: Optional[Path] = None,
    runs_dir: Optional[Path] = None,
    only: Optional[Iterable[str]] = None,
    shard: Tuple[int, int] = (0, 1),
    seeds: Optional[Sequence[int]] = None,
    train_fn: Optional[TrainFn] = None,
    progress: bool = True,
    retry_failed: bool = False,
) -> List[Dict[str, Any]]:
    """Run this shard's grid points that are not done yet; returns every row in ``results_dir``
    (finished and failed runs; :func:`sca_lib.results.is_finished` tells them apart).

    A run that raises :class:`sca_lib.engine.DivergenceError` is recorded as a failed row
    (``"status": "failed"`` with the ``"reason"``) and the grid goes on; later calls skip it unless
    ``retry_failed``. Any other exception stops the grid (the rows written so far stay).
    """
    from tqdm.auto import tqdm  # imported here: in a notebook without ipywidgets, importing it warns

    train_fn = train_fn or _default_train_fn
    results_dir = Path(results_dir) if results_dir else _config.results_dir(grid)
    runs_dir = Path(runs_dir) if runs_dir else _config.runs_dir(f"ablate/{grid}")
    i, n = shard
    points = _shard_points(grid, only, seeds, shard)
    out_file = results_dir / ("runs.jsonl" if n == 1 else f"runs.shard-{i}-of-{n}.jsonl")
    done = _done_ids(load_results(results_dir), retry_failed)
    todo = [pt for pt in points if pt["run_id"] not in done]
    commit = git_commit()
    print(f"ablation grid {grid!r}: {len(points)} runs in this shard ({i}/{n}), {len(points) - len(todo)} already "
          f"in {results_dir}, {len(todo)} to run; checkpoints under {runs_dir}", flush=True)
    bar = tqdm(total=len(points), initial=len(points) - len(todo), desc=f"ablate[{grid}]", unit="run",
               disable=not progress, dynamic_ncols=True)
    for pt in todo:
        cfg = pt["config"]
        bar.set_postfix_str(f"{cfg['backbone']} {cfg['attention'] or 'none'} seed={cfg['seed']}")
        start = time.time()
        try:
            summary = train_fn(dict(cfg), runs_dir / pt["run_id"])
            outcome: Dict[str, Any] = {k: v for k, v in summary.items() if k != "config"}
            outcome["status"] = "ok"
        except DivergenceError as e:
            print(f"run {pt['run_id']} ({cfg['backbone']} {cfg['attention'] or 'none'} seed={cfg['seed']}) diverged: "
                  f"{e}; recorded as failed, going on", file=sys.stderr, flush=True)
            outcome = {"status": "failed", "reason": str(e), "error": type(e).__name__}
        outcome.setdefault("wall_time_s", time.time() - start)
        row = {
            **outcome,
            "run_id": pt["run_id"],
            "study": pt["study"],
            "studies": pt["studies"],
            "grid": grid,
            "config": cfg,
            "git_commit": commit,
            "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "host": {"cpus": os.cpu_count(), "platform": sys.platform},
        }
        append_row(out_file, row)
        bar.update(1)
    bar.close()
    return load_results(results_dir)


def launch_submitit(
    grid: str,
    shards: int,
    results_dir: Optional[Path] = None,
    runs_dir: Optional[Path] = None,
    only: Optional[Iterable[str]] = None,
    seeds: Optional[Sequence[int]] = None,
    retry_failed: bool = False,
    cluster: Optional[str] = None,
    folder: Optional[Path] = None,
    wait: bool = True,
    **parameters: Any,
) -> List[Any]:
    """Run a grid as ``shards`` jobs with submitit: a SLURM job array on a cluster, processes on this
    machine with ``cluster="local"``.

    Job i runs :func:`run_grid` on shard ``i/shards`` (its own results file, so jobs never write the
    same file; finished runs are skipped, so resubmitting resumes). ``cluster``: None (submitit
    picks SLURM when ``sbatch`` is available, else local), ``"slurm"``, ``"local"`` or ``"debug"``
    (in this process, for debugging). ``folder``: submitit's logs and pickles (default
    ``runs/ablate/<grid>/submitit``). ``parameters`` go to ``executor.update_parameters`` (e.g.
    ``timeout_min=240, slurm_partition="gpu", gpus_per_node=1, cpus_per_task=8``). Returns the jobs;
    with ``wait`` it waits for them and raises the first job's error, if any.
    """
    try:
        import submitit
    except ImportError as e:
        raise ImportError("the submitit launcher needs the submitit package: pip install submitit "
                          "(or install sca_lib's [dev] extra)") from e
    shards = positive_int("launch_submitit", "shards", shards)
    results_dir = Path(results_dir) if results_dir else _config.results_dir(grid)
    runs_dir = Path(runs_dir) if runs_dir else _config.runs_dir(f"ablate/{grid}")
    folder = Path(folder) if folder else runs_dir / "submitit"
    build_grid(grid, only, seeds)  # a bad grid, study or seed fails here, before anything is submitted
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster=cluster)
    executor.update_parameters(name=f"ablate-{grid}", **parameters)
    with executor.batch():  # one SLURM job array
        jobs = [executor.submit(run_grid, grid, results_dir, runs_dir, only, (i, shards), seeds, None, False,
                                retry_failed) for i in range(shards)]
    print(f"submitted {shards} job(s) for grid {grid!r} ({executor.cluster}): "
          f"{', '.join(str(j.job_id) for j in jobs)}; logs in {folder}", flush=True)
    if wait:
        for job in jobs:
            job.result()
    return jobs


def _dry_run(grid: str, results_dir: Path, only, seeds, shard) -> None:
    rows = load_results(results_dir)
    status = {r["run_id"]: ("done" if is_finished(r) else "FAILED") for r in rows}
    knob_keys = [k for k in SPEC_KEYS if k != "attention"] + ["schedule"]
    for pt in _shard_points(grid, only, seeds, shard):
        c = pt["config"]
        knobs = {key: c.get(key) for key in knob_keys}
        print(f"{status.get(pt['run_id'], 'todo'):6s} {pt['run_id']} {pt['study']:9s} {c['backbone']} "
              f"{c['attention'] or 'none'} seed={c['seed']} {knobs}")


def _merge_main(argv: List[str]) -> int:
    mp = argparse.ArgumentParser(prog="python -m sca_lib.ablate merge",
                                 description="merge results files into one (one row per run; bad lines skipped)")
    mp.add_argument("paths", nargs="+", type=Path)
    mp.add_argument("--out", type=Path, required=True)
    a = mp.parse_args(argv)
    print(f"merged {merge_results(a.paths, a.out)} runs into {a.out}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "merge":
        return _merge_main(argv[1:])
    ap = argparse.ArgumentParser(prog="python -m sca_lib.ablate", description="Train the points of an ablation grid "
                                 "that are not done yet (rerun to resume; --shard to split; `merge` to join files).")
    ap.add_argument("--grid", default="quick", type=str.lower, choices=list(GRIDS),
                    help="(default quick) " + "; ".join(f"{g.name}: {g.description.rstrip('.')}" for g in GRIDS.values()))
    ap.add_argument("--only", default=None, help="comma-separated studies, e.g. variants,placement")
    ap.add_argument("--shard", default=None, help="i/n: run every n-th grid point starting at i")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (default: the grid's)")
    ap.add_argument("--results-dir", type=Path, default=None, help="default results/<grid>/")
    ap.add_argument("--runs-dir", type=Path, default=None, help="checkpoints, default runs/ablate/<grid>/")
    ap.add_argument("--retry-failed", action="store_true", help="train runs recorded as failed again")
    ap.add_argument("--dry-run", action="store_true", help="list the grid and what is done; train nothing")
    ap.add_argument("--no-report", action="store_true", help="skip the summary table and figures")
    sub = ap.add_argument_group("submitit launcher (a SLURM job array, or processes on this machine)")
    sub.add_argument("--launcher", choices=["none", "submitit"], default="none",
                     help="none (default): this process runs its shard; submitit: --shards jobs")
    sub.add_argument("--shards", type=int, default=1, help="with --launcher submitit: how many jobs (shards)")
    sub.add_argument("--cluster", choices=["auto", "slurm", "local", "debug"], default="auto",
                     help="auto: SLURM when sbatch is available, else local processes")
    sub.add_argument("--timeout-min", type=int, default=24 * 60, help="per job")
    sub.add_argument("--slurm-partition", default=None)
    sub.add_argument("--gpus-per-node", type=int, default=None)
    sub.add_argument("--cpus-per-task", type=int, default=None)
    sub.add_argument("--no-wait", action="store_true", help="submit and return (the jobs run on)")
    a = ap.parse_args(argv)
    if a.launcher == "submitit" and a.shard:
        ap.error("--shard picks one shard for this process; with --launcher submitit use --shards N (one job each)")
    if a.launcher == "none" and a.shards != 1:
        ap.error("--shards needs --launcher submitit (without it, give each process --shard i/n)")
    only = a.only.split(",") if a.only else None
    try:
        seeds = [int(s) for s in a.seeds.split(",")] if a.seeds else None
    except ValueError:
        ap.error(f"--seeds expects comma-separated integers, e.g. 0,1,2; got {a.seeds!r}")
    try:
        shard = parse_shard(a.shard)
    except ValueError as e:
        ap.error(str(e))
    results_dir = a.results_dir or _config.results_dir(a.grid)
    try:
        if a.dry_run:
            _dry_run(a.grid, results_dir, only, seeds, shard)
            return 0
        start = time.time()
        if a.launcher == "submitit":
            params = {k: v for k, v in (("timeout_min", a.timeout_min), ("slurm_partition", a.slurm_partition),
                                        ("gpus_per_node", a.gpus_per_node), ("cpus_per_task", a.cpus_per_task))
                      if v is not None}
            launch_submitit(a.grid, a.shards, results_dir, a.runs_dir, only, seeds, a.retry_failed,
                            cluster=None if a.cluster == "auto" else a.cluster, wait=not a.no_wait, **params)
            if a.no_wait:
                return 0
            rows = load_results(results_dir)
        else:
            rows = run_grid(a.grid, results_dir, a.runs_dir, only, shard, seeds, retry_failed=a.retry_failed)
    except ValueError as e:  # a bad --only or setting: the reason, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed = [r for r in rows if not is_finished(r)]
    print(f"grid finished: {len(rows) - len(failed)} runs in {results_dir}"
          + (f", {len(failed)} failed (listed by the report; --retry-failed tries them again)" if failed else "")
          + f" ({time.time() - start:.0f} s this call)")
    if not a.no_report:
        report.write_report(results_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
