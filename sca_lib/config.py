"""Run modes shared by the notebooks and command-line entry points.

One environment variable, ``SCA_MODE``, picks how much work a notebook or command does:

- ``fast``: a plumbing check for CI and laptops (seconds to a minute per notebook, CPU).
- ``cpu``: a small but real experiment that a 2-core machine finishes in minutes.
- ``full``: the article's protocol (real VOC2012, ImageNet weights) for a GPU, e.g. on Colab.
"""

from __future__ import annotations

import os

import torch

__all__ = ["RUN_MODES", "get_mode", "default_device"]

RUN_MODES = ("fast", "cpu", "full")


def get_mode(default: str = "fast") -> str:
    """The run mode from ``$SCA_MODE`` (``fast`` when unset). Raises ValueError for unknown modes."""
    mode = os.environ.get("SCA_MODE", default).strip().lower()
    if mode not in RUN_MODES:
        raise ValueError(
            f"SCA_MODE={mode!r} is not a run mode; expected one of {', '.join(RUN_MODES)} "
            f"(e.g. `SCA_MODE=full jupyter lab` on a GPU)"
        )
    return mode


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
