"""The ablation results store: JSONL files of one row per run, appended, loaded and merged here.

A row holds the run id (:func:`sca_lib.studies.config_hash` of its config), study, grid, config,
git commit, ``status`` (``"ok"``, or ``"failed"`` with a ``reason``) and a finished run's summary.
One loader (:func:`read_results`) serves the runner, ``merge`` and the report: a line that is not
JSON or not a row is named (file and line) and skipped, and :func:`append_row` starts every row on
a fresh line, so a partial line is never glued to the next. Rows in the format before the grid/mode
rename are upgraded in memory (:func:`upgrade_row`); files are never rewritten.
"""

from __future__ import annotations

import json
import numbers
import os
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

from ._io import atomic_write_text, file_lock, git_commit
from .spec import SPEC_KEYS, AttentionSpec
from .studies import V1_PROTOCOL, config_hash

__all__ = ["append_row", "read_results", "load_results", "merge_results", "upgrade_row", "check_row",
           "is_finished", "config_hash", "git_commit", "STATUSES"]

#: A row's ``status``: a finished run, or one that failed (a ``reason`` says why).
STATUSES = ("ok", "failed")

_SPEC_DEFAULTS = AttentionSpec().to_flat()
_LEGACY_GRIDS = {"cpu": "cpu_v1"}  # rows written before the grid/mode rename were all made on data version 1


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def upgrade_row(row: Dict[str, Any]) -> Dict[str, Any]:
    """A row in the current format (a copy when it changes; the stored row is left alone).

    Rows written before the rename name the training mode ``config["preset"]`` and the grid
    ``row["preset"]``, and lack the newer spec keys. The upgrade renames them (``"mode"``,
    ``"grid"``; the grid ``"cpu"`` of those rows is today's ``"cpu_v1"``), fills missing spec keys
    with their defaults and the cpu mode's protocol of the time (:data:`~sca_lib.studies.V1_PROTOCOL`:
    data version 1, 96 px, ...), and recomputes the run id from the upgraded config (so skipping, de-duplication and study membership work the same for old and
    new rows); the id the file holds is kept as ``"stored_run_id"``.
    """
    cfg = row.get("config")
    legacy_cfg = isinstance(cfg, dict) and ("preset" in cfg or any(k not in cfg for k in SPEC_KEYS))
    if not legacy_cfg and "preset" not in row:
        return row
    row = dict(row)
    if "preset" in row:
        grid = row.pop("preset")
        row.setdefault("grid", _LEGACY_GRIDS.get(grid, grid))
    if legacy_cfg:
        cfg = dict(cfg)
        if "preset" in cfg:
            cfg.setdefault("mode", cfg.pop("preset"))
        for key in SPEC_KEYS:
            cfg.setdefault(key, _SPEC_DEFAULTS[key])
        if cfg.get("mode") == "cpu":
            for key, value in V1_PROTOCOL.items():
                cfg.setdefault(key, value)
        row["config"] = cfg
        row.setdefault("stored_run_id", row.get("run_id"))
        row["run_id"] = config_hash(cfg)
    return row


def is_finished(row: Dict[str, Any]) -> bool:
    """True for a finished run's row, False for a failed one."""
    return row.get("status", "ok") == "ok"


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def check_row(row: Any) -> Optional[str]:
    """Why ``row`` is not a results row, or None when it is one."""
    if not isinstance(row, dict):
        return f"expected a JSON object (one run), got {type(row).__name__}"
    if not isinstance(row.get("run_id"), str) or not row["run_id"]:
        return "no 'run_id'"
    if not isinstance(row.get("config"), dict):
        return "no 'config' object"
    status = row.get("status", "ok")
    if status not in STATUSES:
        return f"'status' must be one of {', '.join(STATUSES)}, got {status!r}"
    if status == "ok":
        needed = ("mAP",) if row["config"].get("task") == "detection" else ("mAP", "top1")  # a detector has no top-1
        missing = [k for k in needed if not _is_number(row.get(k))]
        if missing:
            return f"a finished run needs numbers for {' and '.join(missing)}"
    return None


def read_results(path: Union[str, Path]) -> List[Dict[str, Any]]:
    """Every valid row of one results file, upgraded, in file order (duplicates kept).

    Bad lines (not JSON, or not a row: see :func:`check_row`) are skipped with a warning naming
    the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file not found: {path} (expected a .jsonl file written by sca_lib.ablate)")
    rows = []
    text = path.read_text(encoding="utf-8", errors="replace")  # a kill can cut a character in half
    lines = text.split("\n")  # the last item is "" unless the file ends in a partial line
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            partial = n == len(lines)
            why = "a partial line (a write cut short by a kill?)" if partial else f"not valid JSON ({e.msg})"
            _warn(f"{path}:{n}: {why}; skipped")
            continue
        problem = check_row(row)
        if problem:
            _warn(f"{path}:{n}: not a results row: {problem}; skipped")
            continue
        rows.append(upgrade_row(row))
    return rows


def _dedupe(rows: Iterable[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One row per run id: the first finished row, else the first failed one (in the first's place)."""
    out: List[Dict[str, Any]] = []
    where: Dict[str, int] = {}
    for row in rows:
        rid = row["run_id"]
        if rid not in where:
            where[rid] = len(out)
            out.append(row)
        elif not is_finished(out[where[rid]]) and is_finished(row):
            out[where[rid]] = row
    return out


def load_results(folder: Union[str, Path]) -> List[Dict[str, Any]]:
    """Every run in ``folder/*.jsonl`` (finished and failed), one row per run id, upgraded.

    A missing folder gives no rows; :func:`is_finished` tells finished runs from failed ones.
    """
    folder = Path(folder)
    return _dedupe(row for path in sorted(folder.glob("*.jsonl")) for row in read_results(path))


def merge_results(paths: Iterable[Union[str, Path]], out: Union[str, Path]) -> int:
    """Merge results files into ``out`` (one row per run id, bad lines skipped with a warning);
    returns the number of runs written. Rows are written in the current format."""
    paths = [Path(p) for p in paths]
    rows = _dedupe(row for path in paths for row in read_results(path))
    atomic_write_text(out, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    return len(rows)


def _tail(path: Path) -> Tuple[int, bool]:
    """(number of lines, whether the file ends in a partial line) for an existing file."""
    with open(path, "rb") as f:
        data = f.read()
    return data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1), bool(data) and not data.endswith(b"\n")


def append_row(path: Union[str, Path], row: Dict[str, Any]) -> None:
    """Append one row to a results file, on a line of its own.

    When the file ends in a partial line (a write cut short by a kill), that line is left where it
    is (the loader reports and skips it) and the new row starts on the next line, so it is never
    glued onto it. Appends by concurrent processes are serialised by a lock on the file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    problem = check_row(row)
    if problem:
        raise ValueError(f"refusing to append a bad row to {path}: {problem}")
    line = json.dumps(row, sort_keys=True) + "\n"  # NaN stays NaN (json reads it back)
    with file_lock(path, what=f"appending to {path}"):
        prefix = ""
        if path.stat().st_size:
            n, partial = _tail(path)
            if partial:
                _warn(f"{path}:{n}: ends in a partial line (a write cut short by a kill?); it is left as it is "
                      f"and skipped when loading, the new row goes on line {n + 1}")
                prefix = "\n"
        with open(path, "a", encoding="utf-8") as f:
            f.write(prefix + line)
            f.flush()
            os.fsync(f.fileno())
