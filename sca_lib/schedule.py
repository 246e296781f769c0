"""Training schedules as data: :class:`Stage` and the article's staged recipe (claim C6).

A schedule is a list of stages; each trains the named parameter groups for some epochs at one
learning rate. :func:`staged_schedule` is the article's three stages (attention + head, then the
late backbone, then everything); :func:`single_stage_schedule` trains one set of groups throughout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Sequence, Tuple, Union

__all__ = ["Stage", "STAGE_GROUPS", "STAGE_NAMES", "staged_schedule", "single_stage_schedule",
           "schedule_from_dicts", "expand_schedule"]


@dataclass(frozen=True)
class Stage:
    """One stage of a training schedule.

    Args:
        name: a label for logs and plots (e.g. ``"attention+head"``).
        epochs: how many epochs the stage lasts (>= 1).
        lr: the learning rate of every trained parameter during the stage.
        groups: names of the parameter groups that train (the others are frozen), e.g.
            ``("attention", "head")``.
    """

    name: str
    epochs: int
    lr: float
    groups: Tuple[str, ...]

    def __post_init__(self) -> None:
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"Stage {self.name!r}: epochs must be a positive int, got {self.epochs!r}")
        if not isinstance(self.lr, (int, float)) or not self.lr > 0 or not math.isfinite(self.lr):
            raise ValueError(f"Stage {self.name!r}: lr must be a positive number, got {self.lr!r}")
        groups = (self.groups,) if isinstance(self.groups, str) else tuple(self.groups)
        if not groups or not all(isinstance(g, str) for g in groups):
            raise ValueError(
                f"Stage {self.name!r}: groups must be a non-empty sequence of group names, got {self.groups!r}"
            )
        object.__setattr__(self, "groups", groups)
        object.__setattr__(self, "lr", float(self.lr))

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "epochs": self.epochs, "lr": self.lr, "groups": list(self.groups)}


#: The article's three stages (C6): what trains in each.
STAGE_GROUPS = (("attention", "head"), ("attention", "head", "late"), ("attention", "head", "late", "early"))
STAGE_NAMES = ("attention+head", "+late backbone", "whole network")


def staged_schedule(
    epochs: Sequence[int] = (5, 10, 10),
    lrs: Sequence[float] = (0.01, 0.001, 0.0001),
    groups: Sequence[Sequence[str]] = STAGE_GROUPS,
    names: Sequence[str] = STAGE_NAMES,
) -> List[Stage]:
    """The article's staged recipe (claim C6) with adjustable stage lengths.

    Stage 1 (epochs 1-5 in the article, LR 0.01) trains the attention modules *and the new
    classification head*: the head replaces the backbone's 1000-class layer, starts random, and the
    attention cannot learn anything useful through a random head. Stage 2 (epochs 6-15, LR 0.001)
    adds the late backbone layers, stage 3 (epochs 16+, LR 0.0001) the whole network.
    """
    if not (len(epochs) == len(lrs) == len(groups) == len(names)):
        raise ValueError(
            f"staged_schedule: epochs, lrs, groups and names need one entry per stage, got "
            f"{len(epochs)}, {len(lrs)}, {len(groups)}, {len(names)}"
        )
    return [Stage(n, int(e), float(lr), tuple(g)) for e, lr, g, n in zip(epochs, lrs, groups, names)]


def single_stage_schedule(
    epochs: int, lr: float, groups: Sequence[str] = STAGE_GROUPS[-1], name: str = "single"
) -> List[Stage]:
    """One stage: the given groups (default: the whole network) at one learning rate."""
    return [Stage(name, int(epochs), float(lr), tuple(groups))]


def schedule_from_dicts(stages: Iterable[Union[Stage, Mapping[str, Any]]]) -> List[Stage]:
    """Stages from dicts (``{"name", "epochs", "lr", "groups"}``, e.g. from JSON) or Stage objects."""
    out = []
    for i, s in enumerate(stages):
        if isinstance(s, Stage):
            out.append(s)
            continue
        missing = {"epochs", "lr", "groups"} - set(s)
        if missing:
            raise ValueError(f"stage {i} {dict(s)!r} lacks {sorted(missing)}; a stage needs epochs, lr and groups")
        out.append(Stage(str(s.get("name", f"stage{i + 1}")), int(s["epochs"]), float(s["lr"]), tuple(s["groups"])))
    if not out:
        raise ValueError("a schedule needs at least one stage")
    return out


def expand_schedule(stages: Sequence[Stage]) -> List[Dict[str, Any]]:
    """One row per epoch: ``{"epoch" (1-based), "stage" (0-based), "stage_name", "lr", "groups"}``."""
    rows = []
    epoch = 0
    for i, s in enumerate(stages):
        for _ in range(s.epochs):
            epoch += 1
            rows.append({"epoch": epoch, "stage": i, "stage_name": s.name, "lr": s.lr, "groups": list(s.groups)})
    return rows
