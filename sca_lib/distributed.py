"""Processes and randomness: joining a ``torchrun`` process group, seeding, and the RNG states a
checkpoint carries so that a resumed run continues exactly where it stopped."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "gather_in_order", "seed_everything", "rng_state", "set_rng_state", "seed_worker"]


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(loader_gen: Optional[torch.Generator]) -> Dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "loader": loader_gen.get_state() if loader_gen is not None else None,
    }
    return state


def set_rng_state(state: Mapping[str, Any], loader_gen: Optional[torch.Generator]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if loader_gen is not None and state.get("loader") is not None:
        loader_gen.set_state(state["loader"])


@dataclass
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size`` processes, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``).

    NCCL on CUDA, gloo on CPU. Without ``torchrun`` (``WORLD_SIZE`` unset or 1) nothing happens and a
    single-process :class:`DistInfo` comes back.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def seed_worker(worker_id: int) -> None:  # DataLoader workers: derive numpy/random from torch's seed
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)




def gather_in_order(index: Sequence[int], tensors: Optional[List[torch.Tensor]], info: DistInfo) -> List[torch.Tensor]:
    """Every rank's rows of ``tensors`` (rows numbered by ``index``), gathered and sorted by index.

    Ranks that scored nothing pass ``tensors=None``. Single process: the tensors, sorted by index.
    """
    parts: List[Any] = [(list(index), tensors)]
    if info.distributed:
        parts = [None] * info.world_size
        dist.all_gather_object(parts, (list(index), tensors))
    parts = [p for p in parts if p[1] is not None]
    order = np.argsort(np.concatenate([p[0] for p in parts]), kind="stable")
    return [torch.cat([p[1][k] for p in parts])[order] for k in range(len(parts[0][1]))]
