"""The training checkpoint: what :class:`~sca_lib.engine.Trainer` saves after every epoch and how a
run resumes from it (model, optimizer, scaler, history and every RNG state, per rank)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from ._io import atomic_save, jsonable
from .distributed import rng_state, set_rng_state

__all__ = ["CHECKPOINT_NAME", "save_checkpoint", "load_checkpoint"]

CHECKPOINT_NAME = "checkpoint.pt"
_CKPT_FORMAT = 1


def save_checkpoint(trainer: Any, epoch: int) -> None:
    """Write the trainer's state after ``epoch`` to ``trainer.checkpoint_path`` (rank 0; atomic)."""
    rng = [rng_state(trainer.loader_gen)]
    if trainer.dist.distributed:
        rng = [None] * trainer.dist.world_size
        dist.all_gather_object(rng, rng_state(trainer.loader_gen))
    if trainer.dist.is_main:
        atomic_save({
            "format": _CKPT_FORMAT, "epoch": epoch, "stage": trainer.current_stage, "global_step": trainer.global_step,
            "model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict(),
            "optimizer_groups": list(trainer.opt_groups), "scaler": trainer.scaler.state_dict(), "rng": rng,
            "history": trainer.history, "steps": trainer.step_log, "schedule": [s.to_dict() for s in trainer.stages],
            "config": trainer.config, "world_size": trainer.dist.world_size,
        }, trainer.checkpoint_path)
    if trainer.dist.distributed:
        dist.barrier()


def load_checkpoint(trainer: Any) -> bool:
    """Restore the trainer from its checkpoint; False when there is none. Refuses another config or schedule."""
    path = trainer.checkpoint_path
    if not path.exists():
        return False
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # atomic_save never leaves a torn file; say what to do anyway
        raise RuntimeError(f"cannot read checkpoint {path}: {e}. Delete it (or pass resume=False / "
                           f"another out_dir) to start over") from e
    if ckpt.get("format") != _CKPT_FORMAT:
        raise RuntimeError(f"{path} has checkpoint format {ckpt.get('format')!r}, expected {_CKPT_FORMAT}")
    saved, mine = jsonable(ckpt.get("config", {})), jsonable(trainer.config)
    if saved != mine:
        diff = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
        raise RuntimeError(f"{path} belongs to a run with a different configuration (differs in {diff}); "
                           f"use another out_dir, or resume=False to overwrite it")
    if [s.to_dict() for s in trainer.stages] != ckpt["schedule"]:
        raise RuntimeError(f"{path} was written with another schedule; use another out_dir or resume=False")
    trainer.model.load_state_dict(ckpt["model"])
    trainer._add_groups(ckpt["optimizer_groups"], trainer.stages[ckpt["stage"]].lr)
    trainer.optimizer.load_state_dict(ckpt["optimizer"])
    trainer.scaler.load_state_dict(ckpt["scaler"])
    trainer.history, trainer.step_log = list(ckpt["history"]), list(ckpt.get("steps", []))
    trainer.global_step, trainer.start_epoch = int(ckpt["global_step"]), int(ckpt["epoch"])
    rng = ckpt["rng"]
    set_rng_state(rng[trainer.dist.rank] if trainer.dist.rank < len(rng) else rng[0], trainer.loader_gen)
    return True
