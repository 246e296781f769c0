"""Private file helpers: atomic writes, stale temp-file cleanup, an inter-process lock, JSON hashing.

Every file the library writes for later (checkpoints, logs, summaries, caches) goes through
:func:`atomic_write_text` or :func:`atomic_save`: the bytes go to ``.<name>.tmp<PID>`` in the same
folder, then ``os.replace`` puts them in place, so a kill leaves the old file or the new one, never a
truncated one. A kill between the two steps leaves the temp file behind; :func:`clean_stale_temp`
removes those whose process is gone.
"""

from __future__ import annotations

import contextlib
import csv
import io
import errno
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator, List, Optional, Union

import numpy as np
import torch

from .config import repo_root

PathLike = Union[str, Path]

_TMP_RE = re.compile(r"^\..+\.tmp(\d+)$")


def temp_name(path: Path, tag: str = "tmp") -> Path:
    """``.<name>.<tag><PID>`` beside ``path``: the temp-file name :func:`clean_stale_temp` knows."""
    return path.with_name(f".{path.name}.{tag}{os.getpid()}")


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save(obj: Any, path: PathLike) -> None:
    """``torch.save`` to ``path`` atomically: a kill at any moment leaves the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_csv(path: PathLike, rows: List[dict]) -> None:
    """Dict rows as a CSV file, atomically; the columns are every key with scalar values, in first-seen
    order (list and dict values are left out). No rows: an empty file."""
    cols = list(dict.fromkeys(k for r in rows for k, v in r.items() if not isinstance(v, (list, dict))))
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def pid_alive(pid: int) -> bool:
    """True when a process with this id exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except OSError as e:
        return e.errno == errno.EPERM
    return True


def clean_stale_temp(folder: PathLike) -> List[Path]:
    """Remove ``.<name>.tmp<PID>`` files and folders in ``folder`` whose process has ended.

    Temp files of live processes (a concurrent writer) are left alone. Returns what was removed.
    """
    folder = Path(folder)
    removed: List[Path] = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _TMP_RE.match(p.name)
        if not m or pid_alive(int(m.group(1))):
            continue
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
        except FileNotFoundError:
            pass
    return removed


@contextlib.contextmanager
def file_lock(path: PathLike, timeout: Optional[float] = None, what: str = "") -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block.

    Processes that build the same thing (a synthetic devkit, a stand-in) take the same lock, so one
    builds while the others wait and then find it complete. The lock dies with its process, so a
    killed builder never blocks the next one. ``timeout`` (seconds) raises TimeoutError.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(path, "a+") as f:
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if timeout is not None and time.monotonic() - start > timeout:
                    raise TimeoutError(
                        f"waited {timeout:.0f} s for the lock {path} ({what or 'another process builds the same thing'}); "
                        f"if no other sca_lib process is running, delete the lock file and retry"
                    ) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def jsonable(x: Any) -> Any:
    """``x`` with NumPy scalars made Python numbers, tuples made lists and non-finite floats made
    JSON-safe (NaN -> None, +-inf -> +-1e308)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else (1e308 if x > 0 else -1e308)
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return jsonable(x.item())
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def json_hash(obj: Any, length: int = 12) -> str:
    """A short, stable SHA-256 of a JSON-serialisable object (keys sorted; unknown types via str)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def git_commit(cwd: Optional[PathLike] = None) -> str:
    """The current commit of the checkout at ``cwd`` (``+dirty`` when it has uncommitted changes),
    or ``"unknown"`` outside a git checkout."""
    where = cwd or repo_root()
    if where is None:
        return "unknown"
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=where, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
