"""A small, resumable, DDP-ready training engine for staged fine-tuning (claims C6-C9).

The engine knows nothing about VOC or backbones; :mod:`sca_lib.train` wires it to them. What it
does, and where each piece lives:

- **Schedule as data** (:class:`Stage`, :func:`staged_schedule`, :func:`expand_schedule`): a list of
  stages, each with a number of epochs, one learning rate and the names of the parameter groups that
  train. The article's recipe (C6) is three stages: attention (+ the new head) at 0.01, then part of
  the backbone at 0.001, then everything at 0.0001.
- **Optimizer across stage transitions**: SGD (momentum 0.9, weight decay). Each named group enters
  the optimizer as its own param group the first time a stage unfreezes it
  (``optimizer.add_param_group``); the optimizer object is never rebuilt, so the momentum buffers of
  parameters that were already training survive the transition. Frozen parameters have
  ``requires_grad=False`` and ``grad=None``, so SGD skips them: no update, no weight decay.
- **Gradient clipping** (C7): ``clip_grad_norm_(trainable, max_norm=2.0)`` every step; the pre-clip
  norm and whether the step was clipped are logged per step, their summaries per epoch.
- **Checkpoints** every epoch, atomic (``torch.save`` to a temp file, then ``os.replace``), with
  model, optimizer, AMP scaler, stage, epoch, global step, history and the RNG states of Python,
  NumPy, torch (CPU and CUDA) and the data loader's generator, per rank. Running ``fit()`` again in
  the same folder resumes after the last finished epoch; on CPU the result equals an uninterrupted
  run exactly.
- **Logs**: ``log.jsonl`` and ``log.csv`` (one row per epoch), ``steps.csv`` (one row per step),
  ``summary.json`` at the end. All are rewritten from the checkpoint's history, so they never
  disagree with it after a kill.
- **Divergence guard**: a non-finite loss (or, in fp32, a non-finite gradient norm) raises
  :class:`DivergenceError` naming the global step; the last good checkpoint is left untouched.
- **Devices**: mixed precision (fp16 autocast + ``GradScaler``) and ``channels_last`` on CUDA, plain
  fp32 on CPU. Under ``torchrun`` the model is wrapped in ``DistributedDataParallel`` (NCCL on GPU,
  gloo on CPU), training data go through a ``DistributedSampler``, evaluation is sharded and
  gathered, and only rank 0 writes files.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

__all__ = [
    "Stage",
    "staged_schedule",
    "single_stage_schedule",
    "expand_schedule",
    "schedule_from_dicts",
    "Trainer",
    "DivergenceError",
    "masked_bce_with_logits",
    "recalibrate_batchnorm",
    "seed_everything",
    "atomic_save",
    "init_distributed",
    "DistInfo",
    "CHECKPOINT_NAME",
]

CHECKPOINT_NAME = "checkpoint.pt"
_CKPT_FORMAT = 1


# ------------------------------------------------------------------------------------------------
# the schedule
# ------------------------------------------------------------------------------------------------

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


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------

class DivergenceError(RuntimeError):
    """Training produced a non-finite loss; the message names the step and the checkpoint kept."""


def masked_bce_with_logits(
    logits: torch.Tensor, targets: torch.Tensor, ignore: Optional[torch.Tensor] = None,
    reduction: str = "sum_per_image",
) -> torch.Tensor:
    """Multi-label BCE-with-logits over the labels that are not ignored.

    Args:
        logits: (N, C) raw scores.
        targets: (N, C) 1 = positive, 0 = negative.
        ignore: (N, C) bool, True for difficult-only labels (they add nothing to the loss).
        reduction: ``"sum_per_image"`` (default): summed over an image's labels, averaged over
            images, i.e. C times the element mean. With the element mean (``"mean"``) each class
            logit gets 1/C of the gradient, and at the article's LR 0.01 a new 20-class head needs
            dozens of epochs just to learn the class frequencies; summing over labels is the usual
            multi-label convention and makes C6's learning rates meaningful.

    Returns:
        scalar loss (fp32).
    """
    if reduction not in ("sum_per_image", "mean"):
        raise ValueError(f"reduction must be 'sum_per_image' or 'mean', got {reduction!r}")
    if logits.shape != targets.shape:
        raise ValueError(
            f"masked_bce_with_logits: logits {tuple(logits.shape)} and targets {tuple(targets.shape)} "
            f"differ; the model's head must output one logit per class"
        )
    loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
    keep = torch.ones_like(loss) if ignore is None else (~ignore.bool()).float()
    if reduction == "mean":
        return (loss * keep).sum() / keep.sum().clamp_min(1.0)
    return (loss * keep).sum() / max(loss.shape[0], 1)


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state(loader_gen: Optional[torch.Generator]) -> Dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "loader": loader_gen.get_state() if loader_gen is not None else None,
    }
    return state


def _set_rng_state(state: Mapping[str, Any], loader_gen: Optional[torch.Generator]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if loader_gen is not None and state.get("loader") is not None:
        loader_gen.set_state(state["loader"])


def atomic_save(obj: Any, path: Union[str, Path]) -> None:
    """``torch.save`` to ``path`` atomically: write a temp file in the same folder, then rename.

    A kill at any moment leaves either the old file or the new one, never a truncated file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _jsonable(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else (1e308 if x > 0 else -1e308)
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return _jsonable(x.item())
    return x


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


def _default_set_trainable(param_groups: Mapping[str, Sequence[nn.Parameter]]) -> Callable:
    def set_trainable(model: nn.Module, groups: Sequence[str]) -> None:
        for p in model.parameters():
            p.requires_grad_(False)
        for g in groups:
            for p in param_groups.get(g, ()):
                p.requires_grad_(True)

    return set_trainable


def _freeze_frozen_bn(model: nn.Module) -> None:
    """Put BatchNorm layers whose affine parameters are frozen in eval mode (running stats fixed)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = [p for p in m.parameters(recurse=False)]
            if params and not any(p.requires_grad for p in params):
                m.eval()


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, dataset: Dataset, batch_size: int = 64,
                          max_batches: Optional[int] = None, device: Optional[torch.device] = None) -> int:
    """Recompute every BatchNorm's running mean/var as the exact average over ``dataset``.

    torchvision's MobileNetV3 uses BatchNorm momentum 0.01, so after a short training from scratch
    the running statistics still lag far behind the weights and eval-mode predictions collapse
    (measured: source-val top-1 at chance in eval mode, 0.29 with batch statistics). One pass with
    ``momentum=None`` (cumulative average) over the training images fixes that. Returns the number
    of batches used. Items are ``(image, ...)``; only images are used.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    device = device or next(model.parameters()).device
    saved = [(m, m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    was = model.training
    model.train()
    n = 0
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            x = batch[0] if isinstance(batch, (list, tuple)) else batch
            model(x.to(device))
            n += 1
            if max_batches is not None and n >= max_batches:
                break
    finally:
        for m, mom, tr in saved:
            m.momentum = mom
        model.train(was)
    return n


def _split_batch(batch: Any) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    if isinstance(batch, (list, tuple)) and len(batch) == 3:
        return batch[0], batch[1], batch[2]
    if isinstance(batch, (list, tuple)) and len(batch) == 2:
        return batch[0], batch[1], None
    raise ValueError(
        f"the engine expects batches (images, targets) or (images, targets, ignore), got "
        f"{type(batch).__name__} of length {len(batch) if hasattr(batch, '__len__') else '?'}; "
        f"pass batch_fn= to convert your data set's batches"
    )


def _seed_worker(worker_id: int) -> None:  # DataLoader workers: derive numpy/random from torch's seed
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


# ------------------------------------------------------------------------------------------------
# the trainer
# ------------------------------------------------------------------------------------------------

class Trainer:
    """Staged multi-label training with resumable checkpoints; see the module docstring.

    Args:
        model: the network, (N, 3, H, W) -> (N, C) logits.
        param_groups: named groups of parameters, e.g. ``{"attention": [...], "head": [...],
            "late": [...], "early": [...]}``. Groups may be empty (a plain model has no attention);
            a parameter should be in one group (if in several, the first group to train takes it).
        stages: the schedule (list of :class:`Stage`).
        train_set / val_set: map-style data sets whose items are ``(image (3, H, W), target (C,),
            ignore (C,) bool)`` (or ``(image, target)``).
        out_dir: where checkpoint and logs go (created; only rank 0 writes).
        batch_size: per process.
        set_trainable: ``f(model, group_names)`` that freezes everything but the named groups
            (default: ``requires_grad`` from ``param_groups``). BatchNorm layers whose parameters
            are frozen are kept in eval mode after every ``model.train()``.
        loss_fn: ``f(logits, targets, ignore) -> scalar`` (default :func:`masked_bce_with_logits`).
        metrics_fn: ``f(scores, targets, ignore) -> dict`` with at least ``mAP`` (default
            :func:`sca_lib.metrics.classification_metrics`).
        momentum, weight_decay: SGD settings.
        optimizer: ``"sgd"`` (the recipe: momentum SGD) or ``"adamw"`` (used to pre-train the
            stand-in backbone from scratch quickly).
        max_grad_norm: clipping threshold (C7: 2.0); ``None`` disables clipping (norms still logged).
        seed: seeds Python, NumPy, torch and the loader (each rank adds its rank).
        device: default CUDA (``cuda:LOCAL_RANK``) when available, else CPU.
        amp / channels_last: default on for CUDA, off on CPU.
        num_workers: DataLoader workers (0 is fastest for small images on 2 cores).
        eval_every: evaluate every k epochs (the last epoch always).
        progress: tqdm bars (rank 0 only).
        config: a JSON-able dict stored in the checkpoint; resuming with a different one is refused.
        callbacks: objects with optional ``on_epoch_start(trainer, epoch)`` /
            ``on_epoch_end(trainer, record)`` methods (tests and notebooks use them).
        nan_at_step: debug hook, multiplies the loss of that global step (1-based) by NaN to test
            the divergence guard.
        check_every: the divergence guard checks the accumulated step losses every k steps
            (default 1 on CPU, 20 on CUDA, to avoid a host sync each step); the failing step is
            named exactly either way.
        save_checkpoints: write ``checkpoint.pt`` every epoch (default True).
        dist_info: from :func:`init_distributed` (default: read the environment).
    """

    def __init__(
        self,
        model: nn.Module,
        param_groups: Mapping[str, Sequence[nn.Parameter]],
        stages: Sequence[Stage],
        train_set: Dataset,
        val_set: Optional[Dataset],
        *,
        out_dir: Union[str, Path],
        batch_size: int = 32,
        eval_batch_size: Optional[int] = None,
        set_trainable: Optional[Callable[[nn.Module, Sequence[str]], None]] = None,
        loss_fn: Callable[..., torch.Tensor] = masked_bce_with_logits,
        metrics_fn: Optional[Callable[..., Dict[str, Any]]] = None,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        optimizer: str = "sgd",
        max_grad_norm: Optional[float] = 2.0,
        seed: int = 0,
        device: Optional[Union[str, torch.device]] = None,
        amp: Optional[bool] = None,
        channels_last: Optional[bool] = None,
        num_workers: int = 0,
        eval_every: int = 1,
        progress: bool = True,
        config: Optional[Dict[str, Any]] = None,
        callbacks: Sequence[Any] = (),
        nan_at_step: Optional[int] = None,
        check_every: Optional[int] = None,
        save_checkpoints: bool = True,
        dist_info: Optional[DistInfo] = None,
    ) -> None:
        self.stages = list(schedule_from_dicts(stages))
        self.rows = expand_schedule(self.stages)
        self.total_epochs = len(self.rows)
        known = set(param_groups)
        for s in self.stages:
            unknown = [g for g in s.groups if g not in known]
            if unknown:
                raise ValueError(
                    f"stage {s.name!r} trains groups {unknown} that the model does not have; "
                    f"its parameter groups are {sorted(known)}"
                )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.dist = dist_info or (init_distributed() if int(os.environ.get("WORLD_SIZE", "1")) > 1 else DistInfo())
        if device is None:
            device = f"cuda:{self.dist.local_rank}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        on_cuda = self.device.type == "cuda"
        self.amp = on_cuda if amp is None else bool(amp and on_cuda)
        self.channels_last = on_cuda if channels_last is None else bool(channels_last)
        self.model = model.to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.param_groups = {k: list(v) for k, v in param_groups.items()}
        self.set_trainable = set_trainable or _default_set_trainable(self.param_groups)
        self.loss_fn = loss_fn
        if metrics_fn is None:
            from .metrics import classification_metrics

            metrics_fn = classification_metrics
        self.metrics_fn = metrics_fn
        self.momentum, self.weight_decay = float(momentum), float(weight_decay)
        if optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' (the article's recipe) or 'adamw', got {optimizer!r}")
        self.optimizer_name = optimizer
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        self.seed = int(seed)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size * 2
        self.num_workers = int(num_workers)
        self.eval_every = max(1, int(eval_every))
        self.progress = bool(progress) and self.dist.is_main
        self.config = dict(config or {})
        self.callbacks = list(callbacks)
        self.nan_at_step = nan_at_step
        self.check_every = int(check_every or (20 if on_cuda else 1))
        self.save_checkpoints = save_checkpoints
        self.out_dir = Path(out_dir)
        self.train_set, self.val_set = train_set, val_set
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)

        seed_everything(self.seed + self.dist.rank)
        self.loader_gen = torch.Generator().manual_seed(self.seed)
        self.sampler = None
        if self.dist.distributed:
            from torch.utils.data.distributed import DistributedSampler

            self.sampler = DistributedSampler(
                train_set, num_replicas=self.dist.world_size, rank=self.dist.rank, shuffle=True,
                seed=self.seed, drop_last=False,
            )
        per_rank = len(train_set) // self.dist.world_size
        self.train_loader = DataLoader(
            train_set, batch_size=batch_size, shuffle=self.sampler is None, sampler=self.sampler,
            num_workers=self.num_workers, generator=self.loader_gen, worker_init_fn=_seed_worker,
            drop_last=per_rank > batch_size,  # no batch of 1 reaches a training BatchNorm
            pin_memory=on_cuda, persistent_workers=False,
        )
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self.opt_groups: List[str] = []
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.ddp_model: Optional[nn.Module] = None
        self.history: List[Dict[str, Any]] = []
        self.step_log: List[Dict[str, Any]] = []
        self.global_step = 0
        self.start_epoch = 0  # completed epochs
        self.current_stage = -1
        self.prior_wall_s = 0.0

    # -- paths ---------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME

    # -- optimizer / stages --------------------------------------------------------------------
    def _group_order(self, through_stage: int) -> List[str]:
        order: List[str] = []
        for s in self.stages[: through_stage + 1]:
            for g in s.groups:
                if g not in order:
                    order.append(g)
        return order

    def _add_groups(self, names: Sequence[str], lr: float) -> None:
        taken = set()
        if self.optimizer is not None:
            for pg in self.optimizer.param_groups:
                taken.update(id(p) for p in pg["params"])
        for g in names:
            if g in self.opt_groups:
                continue
            params = [p for p in self.param_groups.get(g, []) if id(p) not in taken]
            taken.update(id(p) for p in params)
            group = {"params": params, "lr": lr, "name": g}
            if self.optimizer is None:
                if self.optimizer_name == "sgd":
                    self.optimizer = torch.optim.SGD(
                        [group], lr=lr, momentum=self.momentum, weight_decay=self.weight_decay
                    )
                else:
                    self.optimizer = torch.optim.AdamW([group], lr=lr, weight_decay=self.weight_decay)
            else:
                self.optimizer.add_param_group(group)
            self.opt_groups.append(g)

    def _enter_stage(self, idx: int) -> None:
        stage = self.stages[idx]
        self.set_trainable(self._bare_model, stage.groups)
        self._add_groups(self._group_order(idx), stage.lr)
        for pg in self.optimizer.param_groups:
            pg["lr"] = stage.lr
        self.trainable = [p for p in self._bare_model.parameters() if p.requires_grad]
        if not self.trainable:
            raise ValueError(
                f"stage {stage.name!r} trains groups {list(stage.groups)} but they hold no parameter; "
                f"check the model's parameter groups (sizes: "
                f"{ {k: sum(p.numel() for p in v) for k, v in self.param_groups.items()} })"
            )
        if self.dist.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            # DDP registers its hooks for the parameters that require grad *now*: re-wrap per stage
            self.ddp_model = DDP(self._bare_model, device_ids=ids)
        else:
            self.ddp_model = self._bare_model
        self.current_stage = idx

    @property
    def _bare_model(self) -> nn.Module:
        return self.model

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self._bare_model.parameters() if p.requires_grad)

    # -- checkpointing -------------------------------------------------------------------------
    def _gather_rng(self) -> List[Dict[str, Any]]:
        state = _rng_state(self.loader_gen)
        if not self.dist.distributed:
            return [state]
        out: List[Any] = [None] * self.dist.world_size
        dist.all_gather_object(out, state)
        return out

    def _save(self, epoch: int) -> float:
        t0 = time.perf_counter()
        rng = self._gather_rng()
        if self.dist.is_main and self.save_checkpoints:
            ckpt = {
                "format": _CKPT_FORMAT,
                "epoch": epoch,
                "stage": self.current_stage,
                "global_step": self.global_step,
                "model": self._bare_model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "optimizer_groups": list(self.opt_groups),
                "scaler": self.scaler.state_dict(),
                "rng": rng,
                "history": self.history,
                "steps": self.step_log,
                "schedule": [s.to_dict() for s in self.stages],
                "config": self.config,
                "world_size": self.dist.world_size,
            }
            atomic_save(ckpt, self.checkpoint_path)
        if self.dist.distributed:
            dist.barrier()
        return time.perf_counter() - t0

    def _load(self) -> bool:
        path = self.checkpoint_path
        if not path.exists():
            return False
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # a corrupt file cannot come from atomic_save; say what to do
            raise RuntimeError(
                f"cannot read checkpoint {path}: {e}. Delete it (or pass resume=False / another out_dir) "
                f"to start over"
            ) from e
        if ckpt.get("format") != _CKPT_FORMAT:
            raise RuntimeError(f"{path} has checkpoint format {ckpt.get('format')!r}, expected {_CKPT_FORMAT}")
        saved = _jsonable(ckpt.get("config", {}))
        if saved != _jsonable(self.config):
            diff = sorted(k for k in set(saved) | set(self.config) if saved.get(k) != _jsonable(self.config).get(k))
            raise RuntimeError(
                f"{path} belongs to a run with a different configuration (differs in {diff}); "
                f"use another out_dir, or resume=False to overwrite it"
            )
        if [s.to_dict() for s in self.stages] != ckpt["schedule"]:
            raise RuntimeError(f"{path} was written with another schedule; use another out_dir or resume=False")
        self._bare_model.load_state_dict(ckpt["model"])
        self.opt_groups = []
        self.optimizer = None
        self._add_groups(ckpt["optimizer_groups"], self.stages[ckpt["stage"]].lr)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.history = list(ckpt["history"])
        self.step_log = list(ckpt.get("steps", []))
        self.global_step = int(ckpt["global_step"])
        self.start_epoch = int(ckpt["epoch"])
        self.prior_wall_s = sum(float(r.get("epoch_time_s", 0.0)) for r in self.history)
        rng = ckpt["rng"]
        _set_rng_state(rng[self.dist.rank] if self.dist.rank < len(rng) else rng[0], self.loader_gen)
        return True

    # -- logs ----------------------------------------------------------------------------------
    def _write_logs(self) -> None:
        if not self.dist.is_main:
            return
        lines = "".join(json.dumps(_jsonable(r)) + "\n" for r in self.history)
        _atomic_write_text(self.out_dir / "log.jsonl", lines)
        cols: List[str] = []
        for r in self.history:
            cols += [k for k, v in r.items() if k not in cols and not isinstance(v, (list, dict))]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in self.history:
            w.writerow(r)
        _atomic_write_text(self.out_dir / "log.csv", buf.getvalue())
        buf = io.StringIO()
        if self.step_log:
            w = csv.DictWriter(buf, fieldnames=list(self.step_log[0]))
            w.writeheader()
            w.writerows(self.step_log)
        _atomic_write_text(self.out_dir / "steps.csv", buf.getvalue())

    # -- evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, dataset: Optional[Dataset] = None) -> Dict[str, Any]:
        """Scores the whole ``dataset`` (default: val set); sharded over ranks and gathered.

        Returns the metrics dict of ``metrics_fn`` plus ``loss`` (masked BCE over the set).
        """
        dataset = self.val_set if dataset is None else dataset
        if dataset is None:
            return {}
        model = self._bare_model
        was_training = model.training
        model.eval()
        idx = list(range(self.dist.rank, len(dataset), self.dist.world_size))
        loader = DataLoader(Subset(dataset, idx), batch_size=self.eval_batch_size, shuffle=False,
                            num_workers=self.num_workers, generator=torch.Generator().manual_seed(0))
        scores, targets, ignores = [], [], []
        for batch in loader:
            x, y, ig = _split_batch(batch)
            x = x.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.float16, enabled=self.amp):
                logits = model(x)
            scores.append(logits.float().cpu())
            targets.append(y.float())
            ignores.append(ig.bool() if ig is not None else torch.zeros_like(y, dtype=torch.bool))
        part = (idx, torch.cat(scores) if scores else None, torch.cat(targets) if targets else None,
                torch.cat(ignores) if ignores else None)
        if self.dist.distributed:
            parts: List[Any] = [None] * self.dist.world_size
            dist.all_gather_object(parts, part)
        else:
            parts = [part]
        parts = [p for p in parts if p[1] is not None]
        order = np.argsort(np.concatenate([p[0] for p in parts]), kind="stable")
        s = torch.cat([p[1] for p in parts])[order]
        t = torch.cat([p[2] for p in parts])[order]
        ig = torch.cat([p[3] for p in parts])[order]
        metrics = dict(self.metrics_fn(s, t, ig))
        metrics["loss"] = float(self.loss_fn(s, t, ig))
        model.train(was_training)
        self.last_eval = {"scores": s, "targets": t, "ignore": ig}
        return metrics

    # -- training ------------------------------------------------------------------------------
    def _train_epoch(self, epoch: int) -> Dict[str, Any]:
        row = self.rows[epoch - 1]
        model = self.ddp_model
        model.train()
        _freeze_frozen_bn(self._bare_model)
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        bar = None
        it: Iterable = self.train_loader
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(self.train_loader, desc=f"epoch {epoch}/{self.total_epochs} [{row['stage_name']}]",
                       leave=False, dynamic_ncols=True)
            it = bar
        losses: List[torch.Tensor] = []
        norms: List[torch.Tensor] = []
        pending: List[Tuple[int, torch.Tensor, torch.Tensor]] = []
        n_images = 0
        t0 = time.perf_counter()
        for b, batch in enumerate(it):
            x, y, ig = _split_batch(batch)
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            ig = ig.to(self.device, non_blocking=True) if ig is not None else None
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            self.global_step += 1
            with torch.autocast("cuda", dtype=torch.float16, enabled=self.amp):
                logits = model(x)
            loss = self.loss_fn(logits, y, ig)
            if self.nan_at_step is not None and self.global_step == self.nan_at_step:
                loss = loss * float("nan")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(
                self.trainable, self.max_grad_norm if self.max_grad_norm is not None else float("inf")
            )
            self.scaler.step(self.optimizer)
            self.scaler.update()
            n_images += x.shape[0]
            pending.append((self.global_step, loss.detach(), norm.detach()))
            if len(pending) >= self.check_every:
                self._check(pending, epoch, row, b)
                if bar is not None:
                    bar.set_postfix(loss=f"{pending[-1][1].item():.4f}", lr=f"{row['lr']:.0e}")
                losses.extend(p[1] for p in pending)
                norms.extend(p[2] for p in pending)
                pending = []
        if pending:
            self._check(pending, epoch, row, None)
            losses.extend(p[1] for p in pending)
            norms.extend(p[2] for p in pending)
        if bar is not None:
            bar.close()
        train_time = time.perf_counter() - t0
        loss_t = torch.stack(losses).float().cpu() if losses else torch.zeros(0)
        norm_t = torch.stack(norms).float().cpu() if norms else torch.zeros(0)
        first = self.global_step - len(losses) + 1
        max_norm = self.max_grad_norm if self.max_grad_norm is not None else float("inf")
        finite = torch.isfinite(norm_t)
        for i in range(len(losses)):
            n = float(norm_t[i])
            self.step_log.append({
                "step": first + i, "epoch": epoch, "stage": row["stage"], "lr": row["lr"],
                "loss": float(loss_t[i]), "grad_norm": n,
                "grad_norm_clipped": min(n, max_norm) if math.isfinite(n) else n,
                "clipped": int(math.isfinite(n) and n > max_norm),
            })
        sum_loss, count = float(loss_t.sum()), len(losses)
        if self.dist.distributed:
            t = torch.tensor([sum_loss, float(count), float(n_images)], dtype=torch.float64)
            dist.all_reduce(t)
            sum_loss, count, n_images = float(t[0]), int(t[1]), int(t[2])
        fn = norm_t[finite]
        return {
            "train_loss": sum_loss / max(count, 1),
            "grad_norm_mean": float(fn.mean()) if fn.numel() else float("nan"),
            "grad_norm_max": float(fn.max()) if fn.numel() else float("nan"),
            "clip_fraction": float((fn > max_norm).float().mean()) if fn.numel() else 0.0,
            "steps": len(losses),
            "train_images": n_images,
            "train_time_s": train_time,
            "images_per_s": n_images / max(train_time, 1e-9),
        }

    def _check(self, pending, epoch: int, row: Dict[str, Any], batch: Optional[int]) -> None:
        losses = torch.stack([p[1] for p in pending])
        bad_loss = ~torch.isfinite(losses)
        bad = bad_loss
        if not self.amp:  # with AMP an inf gradient is a skipped step, not a divergence
            bad = bad | ~torch.isfinite(torch.stack([p[2] for p in pending]))
        if bool(bad.any()):
            i = int(torch.nonzero(bad)[0])
            step, lv, nv = pending[i][0], float(pending[i][1]), float(pending[i][2])
            what = f"loss {lv}" if not math.isfinite(lv) else f"gradient norm {nv} (loss {lv})"
            kept = (f"the last good checkpoint {self.checkpoint_path} (after epoch {self.start_epoch_done}) is kept"
                    if self.checkpoint_path.exists() else "no checkpoint had been written yet")
            raise DivergenceError(
                f"training diverged: non-finite {what} at global step {step} (epoch {epoch}, stage "
                f"{row['stage'] + 1} {row['stage_name']!r}, lr {row['lr']}); {kept}. Lower the learning "
                f"rate or check the data and model for NaN/inf, then rerun."
            )

    def fit(self, resume: bool = True) -> Dict[str, Any]:
        """Train through the schedule (resuming from ``out_dir/checkpoint.pt`` when ``resume``).

        Returns the summary: final metrics of the last evaluation (``mAP``, ``top1``,
        ``per_class_ap``, ...), ``history`` (one record per epoch), ``wall_time_s`` (train + eval +
        checkpoint time over all sessions, excluding model/data set-up), ``images_per_s`` (training
        images over training time), ``clip_fraction``, ``epochs``, ``out_dir``.
        """
        t_session = time.perf_counter()
        resumed = False
        if resume:
            resumed = self._load()
        elif self.dist.is_main and self.checkpoint_path.exists():
            self.checkpoint_path.unlink()
        self.start_epoch_done = self.start_epoch
        if self.start_epoch > 0:
            self._enter_stage(self.rows[self.start_epoch - 1]["stage"])
        if self.dist.is_main and resumed:
            print(f"resuming {self.out_dir} after epoch {self.start_epoch}/{self.total_epochs}", flush=True)
        for epoch in range(self.start_epoch + 1, self.total_epochs + 1):
            t_epoch = time.perf_counter()
            row = self.rows[epoch - 1]
            if row["stage"] != self.current_stage:
                self._enter_stage(row["stage"])
            for cb in self.callbacks:
                if hasattr(cb, "on_epoch_start"):
                    cb.on_epoch_start(self, epoch)
            record: Dict[str, Any] = {
                "epoch": epoch, "stage": row["stage"] + 1, "stage_name": row["stage_name"], "lr": row["lr"],
                "trainable_params": self.trainable_parameters(),
            }
            record.update(self._train_epoch(epoch))
            t_eval = time.perf_counter()
            if self.val_set is not None and (epoch % self.eval_every == 0 or epoch == self.total_epochs):
                m = self.evaluate()
                record.update({"val_loss": m.pop("loss"), "mAP": m.get("mAP"), "top1": m.get("top1")})
                record["metrics"] = _jsonable(m)
            record["eval_time_s"] = time.perf_counter() - t_eval
            record["checkpoint_time_s"] = 0.0  # filled in after the save (the checkpoint holds 0)
            record["epoch_time_s"] = time.perf_counter() - t_epoch  # updated below with the save
            self.history.append(record)
            save_s = self._save(epoch)
            record["checkpoint_time_s"] = save_s
            record["epoch_time_s"] = time.perf_counter() - t_epoch
            self.start_epoch_done = epoch
            self._write_logs()
            for cb in self.callbacks:
                if hasattr(cb, "on_epoch_end"):
                    cb.on_epoch_end(self, record)
        return self._summary(time.perf_counter() - t_session, resumed)

    def _summary(self, session_s: float, resumed: bool) -> Dict[str, Any]:
        last_eval = next((r for r in reversed(self.history) if "metrics" in r), {})
        train_imgs = sum(r["train_images"] for r in self.history)
        train_time = sum(r["train_time_s"] for r in self.history)
        steps = sum(r["steps"] for r in self.history)
        clipped = sum(r["clip_fraction"] * r["steps"] for r in self.history)
        metrics = dict(last_eval.get("metrics", {}))
        summary = {
            **metrics,
            "mAP": last_eval.get("mAP", float("nan")),
            "top1": last_eval.get("top1", float("nan")),
            "val_loss": last_eval.get("val_loss", float("nan")),
            "epochs": self.total_epochs,
            "steps": steps,
            "clip_fraction": clipped / max(steps, 1),
            "wall_time_s": sum(r["epoch_time_s"] for r in self.history),
            "train_time_s": train_time,
            "images_per_s": train_imgs / max(train_time, 1e-9),
            "resumed": resumed,
            "world_size": self.dist.world_size,
            "device": str(self.device),
            "amp": self.amp,
            "out_dir": str(self.out_dir),
            "checkpoint": str(self.checkpoint_path) if self.save_checkpoints else None,
            "history": self.history,
        }
        return summary
