"""Where things go and how much work to do: the run mode and every default path.

The run mode (``$SCA_MODE``, read by :func:`get_mode`) sizes every budget in the library:

- ``fast``: a plumbing check for CI and laptops (seconds to a minute per notebook, CPU).
- ``cpu``: a small but real experiment that a 2-core machine finishes in minutes.
- ``full``: the article's protocol (real VOC2012, ImageNet weights) for a GPU, e.g. on Colab.

Default paths resolve one way, here and nowhere else:

- :func:`output_root`: ``$SCA_HOME`` when set; else the repository when ``sca_lib`` runs from a
  clone of it (``pip install -e .`` or the source tree on ``sys.path``); else the current directory
  (a regular ``pip install``, e.g. on Colab: results never land inside ``site-packages``).
- :func:`data_dir`: ``$SCA_DATA_DIR`` when set, else ``output_root()/data``.
- :func:`results_dir` / :func:`runs_dir`: ``output_root()/results/...`` and ``output_root()/runs/...``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch

__all__ = ["MODES", "get_mode", "check_mode", "default_device", "repo_root", "output_root", "data_dir",
           "results_dir", "runs_dir", "display_path"]

MODES = ("fast", "cpu", "full")

_PACKAGE_PARENT = Path(__file__).resolve().parent.parent


def check_mode(mode: object, source: str = "mode") -> str:
    """``mode`` lower-cased and stripped if it names a run mode; else a ValueError listing them."""
    text = str(mode).strip().lower()
    if text not in MODES:
        raise ValueError(
            f"{source}={mode!r} is not a run mode; expected one of {', '.join(MODES)} "
            f"(e.g. `SCA_MODE=cpu jupyter lab`, or SCA_MODE=full on a GPU)"
        )
    return text


def get_mode(default: str = "fast") -> str:
    """The run mode from ``$SCA_MODE`` (``default`` when unset), case-insensitive.

    Raises ValueError naming the valid modes for anything else.
    """
    return check_mode(os.environ.get("SCA_MODE", default), "SCA_MODE")


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def repo_root() -> Optional[Path]:
    """The source checkout that holds this ``sca_lib``, or None when it runs as an installed package."""
    pyproject = _PACKAGE_PARENT / "pyproject.toml"
    if pyproject.is_file() and 'name = "sca_lib"' in pyproject.read_text(encoding="utf-8", errors="ignore"):
        return _PACKAGE_PARENT
    return None


def output_root() -> Path:
    """The folder that default ``data/``, ``results/`` and ``runs/`` live in (see the module docstring)."""
    env = os.environ.get("SCA_HOME")
    if env:
        return Path(env).expanduser()
    return repo_root() or Path.cwd()


def data_dir() -> Path:
    """Where data sets and cached weights live: ``$SCA_DATA_DIR``, else ``output_root()/data``."""
    env = os.environ.get("SCA_DATA_DIR")
    return Path(env).expanduser() if env else output_root() / "data"


def results_dir(name: str = "") -> Path:
    """``output_root()/results/<name>``: committed-style result tables (e.g. an ablation grid's)."""
    return output_root() / "results" / name if name else output_root() / "results"


def runs_dir(name: str = "") -> Path:
    """``output_root()/runs/<name>``: checkpoints and logs of training runs (never committed)."""
    return output_root() / "runs" / name if name else output_root() / "runs"


def display_path(path: Optional[str]) -> Optional[str]:
    """``path`` relative to the repository when it lies inside it (for files that get committed), else as given."""
    root = repo_root()
    if path is None or root is None or not Path(path).is_absolute():
        return path
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:
        return str(path)
