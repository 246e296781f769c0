"""The training engine: :class:`Trainer` runs a schedule of stages, resumable and DDP-ready.

It knows nothing about VOC or backbones (:mod:`sca_lib.train` wires it to them):

- **Stages** (:mod:`sca_lib.schedule`): each named parameter group enters the optimizer as its own
  param group the first time a stage unfreezes it; the optimizer is never rebuilt, so momentum
  survives stage transitions. Frozen parameters have ``requires_grad=False`` and get no update.
- **Gradient clipping** (C7): ``clip_grad_norm_`` every step; the pre-clip norm, whether the step
  was clipped and the effective step size (LR x clipped norm) are logged per step, summaries per epoch.
- **Checkpoints** every epoch, atomic, with model, optimizer, scaler, history and every RNG state
  per rank: ``fit()`` again in the same folder resumes after the last finished epoch, and on CPU
  reaches exactly the metrics of an uninterrupted run.
- **Logs**: ``log.jsonl`` / ``log.csv`` (one row per epoch) and ``steps.csv`` (one per step),
  rewritten from the checkpoint's history, so they never disagree with it after a kill.
- **Divergence guard**: a non-finite loss or gradient norm during training, or non-finite scores
  at evaluation, raise :class:`DivergenceError` naming where; the last good checkpoint is kept.
- **Devices**: fp16 autocast + ``GradScaler`` and ``channels_last`` on CUDA, fp32 on CPU; under
  ``torchrun`` DDP (NCCL on GPU, gloo on CPU), a ``DistributedSampler``, sharded evaluation, and
  only rank 0 writes files.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.data.distributed import DistributedSampler

from ._io import atomic_write_csv, atomic_write_text, clean_stale_temp, jsonable
from .batchnorm import freeze_frozen_bn
from .checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from .distributed import DistInfo, gather_in_order, init_distributed, seed_everything, seed_worker
from .losses import masked_bce_with_logits
from .metrics import classification_metrics
from .schedule import Stage, expand_schedule, schedule_from_dicts

__all__ = ["Trainer", "DivergenceError", "CHECKPOINT_NAME"]



class DivergenceError(RuntimeError):
    """Training produced non-finite numbers; the message names where and the checkpoint kept."""


def _split_batch(batch: Any) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    if isinstance(batch, (list, tuple)) and len(batch) in (2, 3):
        return batch[0], batch[1], (batch[2] if len(batch) == 3 else None)
    raise ValueError(
        f"the engine expects batches (images, targets) or (images, targets, ignore), got "
        f"{type(batch).__name__} of length {len(batch) if hasattr(batch, '__len__') else '?'}; "
        f"make the data set's items (image, target) or (image, target, ignore)"
    )


class ClassificationTask:
    """What the engine does with a classification batch: ``(images, targets[, ignore])`` tensors,
    the trainer's ``loss_fn`` on the logits, and VOC classification metrics at evaluation."""

    name = "classification"
    collate_fn = None
    channels_last = True

    def train_loss(self, trainer: "Trainer", batch: Any) -> Tuple[torch.Tensor, int, Dict[str, torch.Tensor]]:
        x, y, ig = (None if v is None else v.to(trainer.device, non_blocking=True) for v in _split_batch(batch))
        if trainer.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.float16, enabled=trainer.amp):
            logits = trainer.ddp_model(x)
        return trainer.loss_fn(logits, y, ig), x.shape[0], {}

    @torch.no_grad()
    def evaluate(self, trainer: "Trainer", dataset: Dataset) -> Dict[str, Any]:
        idx = list(range(trainer.dist.rank, len(dataset), trainer.dist.world_size))  # type: ignore[arg-type]
        parts = []
        for batch in DataLoader(Subset(dataset, idx), batch_size=trainer.batch_size * 2, num_workers=trainer.num_workers):
            x, y, ig = _split_batch(batch)
            x = x.to(trainer.device, non_blocking=True)
            if trainer.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.float16, enabled=trainer.amp):
                logits = trainer.model(x)
            parts.append((logits.float().cpu(), y.float(), torch.zeros_like(y, dtype=torch.bool) if ig is None else ig.bool()))
        s, t, ig = gather_in_order(idx, [torch.cat(t) for t in zip(*parts)] if parts else None, trainer.dist)
        if not bool(torch.isfinite(s).all()):
            bad = int((~torch.isfinite(s)).any(dim=1).sum())
            raise DivergenceError(f"evaluation produced non-finite scores for {bad} of {len(s)} images "
                                  f"({trainer._where()}); {trainer._kept()}. Lower the learning rate, then rerun.")
        metrics = dict(classification_metrics(s, t, ig))
        metrics["loss"] = float(trainer.loss_fn(s, t, ig))
        trainer.last_eval = {"scores": s, "targets": t, "ignore": ig}
        return metrics


class Trainer:
    """Staged multi-label training with resumable checkpoints; see the module docstring.

    Args:
        model: the network, (N, 3, H, W) -> (N, C) logits.
        param_groups: named parameter groups, e.g. ``{"attention", "head", "late", "early"}``;
            a group may be empty (a plain model has no attention).
        stages: the schedule (list of :class:`~sca_lib.schedule.Stage` or stage dicts).
        train_set / val_set: map-style data sets of ``(image (3, H, W), target (C,), ignore (C,) bool)``
            (or ``(image, target)``); ``val_set`` may be None.
        out_dir: where checkpoint and logs go (only rank 0 writes).
        batch_size: per process.
        set_trainable: ``f(model, group_names)`` that freezes everything but the named groups
            (default: ``requires_grad`` from ``param_groups``). BatchNorm layers whose parameters
            are frozen are kept in eval mode.
        loss_fn: ``f(logits, targets, ignore) -> scalar`` (default masked BCE).
        momentum, weight_decay, optimizer: ``"sgd"`` (the recipe) or ``"adamw"`` (stand-in pre-training).
        max_grad_norm: clipping threshold (C7: 2.0); None disables clipping (norms still logged).
        seed: seeds Python, NumPy, torch and the loader (each rank adds its rank).
        device: default ``cuda:LOCAL_RANK`` when available, else CPU.
        num_workers: DataLoader workers. eval_every: evaluate every k epochs (and the last).
        progress: tqdm bars (rank 0). config: a JSON-able dict stored in the checkpoint; resuming
            with another one is refused. callbacks: objects with optional
            ``on_epoch_start(trainer, epoch)`` / ``on_epoch_end(trainer, record)``.
        dist_info: from :func:`~sca_lib.distributed.init_distributed` (default: the environment).
        task: what a batch is, its loss and the evaluation: :class:`ClassificationTask` (default) or
            :class:`sca_lib.train_detection.DetectionTask` (images and box targets, the detector's
            loss dict, VOC detection AP). Its ``train_loss(trainer, batch) -> (loss, images, parts)``
            and ``evaluate(trainer, dataset) -> metrics`` are all the engine asks of it.
    """

    def __init__(
        self, model: nn.Module, param_groups: Mapping[str, Sequence[nn.Parameter]], stages: Sequence[Stage],
        train_set: Dataset, val_set: Optional[Dataset], *, out_dir: Union[str, Path], batch_size: int = 32,
        set_trainable: Optional[Callable[[nn.Module, Sequence[str]], None]] = None,
        loss_fn: Callable[..., torch.Tensor] = masked_bce_with_logits, momentum: float = 0.9,
        weight_decay: float = 1e-4, optimizer: str = "sgd", max_grad_norm: Optional[float] = 2.0, seed: int = 0,
        device: Optional[Union[str, torch.device]] = None, num_workers: int = 0, eval_every: int = 1,
        progress: bool = True, config: Optional[Dict[str, Any]] = None, callbacks: Sequence[Any] = (),
        dist_info: Optional[DistInfo] = None, task: Optional[Any] = None,
    ) -> None:
        self.task = task if task is not None else ClassificationTask()
        self.stages = schedule_from_dicts(stages)
        self.rows = expand_schedule(self.stages)
        self.total_epochs = len(self.rows)
        for s in self.stages:
            unknown = [g for g in s.groups if g not in param_groups]
            if unknown:
                raise ValueError(f"stage {s.name!r} trains groups {unknown} that the model does not have; "
                                 f"its parameter groups are {sorted(param_groups)}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' (the article's recipe) or 'adamw', got {optimizer!r}")
        if len(train_set) == 0:  # type: ignore[arg-type]
            raise ValueError("the training set is empty; check the data root and split (or --train-images)")
        self.dist = dist_info or init_distributed()
        self.device = torch.device(device or (f"cuda:{self.dist.local_rank}" if torch.cuda.is_available() else "cpu"))
        on_cuda = self.device.type == "cuda"
        self.amp = on_cuda
        self.channels_last = on_cuda and getattr(self.task, "channels_last", True)
        self.model = model.to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.param_groups = {k: list(v) for k, v in param_groups.items()}
        self.set_trainable = set_trainable or self._requires_grad_from_groups
        self.loss_fn = loss_fn
        self.momentum, self.weight_decay, self.optimizer_name = float(momentum), float(weight_decay), optimizer
        self.max_grad_norm = float("inf") if max_grad_norm is None else float(max_grad_norm)
        self.seed, self.batch_size, self.num_workers = int(seed), batch_size, int(num_workers)
        self.eval_every = max(1, int(eval_every))
        self.progress = bool(progress) and self.dist.is_main
        self.config = dict(config or {})
        self.callbacks = list(callbacks)
        self.check_every = 20 if on_cuda else 1  # the guard syncs with the host every k steps
        self.out_dir = Path(out_dir)
        self.train_set, self.val_set = train_set, val_set
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            clean_stale_temp(self.out_dir)  # temp files of a killed run
        seed_everything(self.seed + self.dist.rank)
        self.loader_gen = torch.Generator().manual_seed(self.seed)
        self.sampler = None
        if self.dist.distributed:
            self.sampler = DistributedSampler(train_set, num_replicas=self.dist.world_size, rank=self.dist.rank,
                                              shuffle=True, seed=self.seed, drop_last=False)
        per_rank = len(train_set) // self.dist.world_size  # type: ignore[arg-type]
        self.train_loader = DataLoader(
            train_set, batch_size=batch_size, shuffle=self.sampler is None, sampler=self.sampler,
            num_workers=self.num_workers, generator=self.loader_gen, worker_init_fn=seed_worker,
            drop_last=per_rank > batch_size,  # no batch of 1 reaches a training BatchNorm
            pin_memory=on_cuda, collate_fn=getattr(self.task, "collate_fn", None),
        )
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self.opt_groups: List[str] = []
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.history: List[Dict[str, Any]] = []
        self.step_log: List[Dict[str, Any]] = []
        self.global_step = self.start_epoch = self.start_epoch_done = 0
        self.current_stage = -1

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    # -- stages and the optimizer --------------------------------------------------------------
    def _requires_grad_from_groups(self, model: nn.Module, groups: Sequence[str]) -> None:
        for p in model.parameters():
            p.requires_grad_(False)
        for g in groups:
            for p in self.param_groups.get(g, ()):
                p.requires_grad_(True)

    def _add_groups(self, names: Sequence[str], lr: float) -> None:
        taken = {id(p) for pg in (self.optimizer.param_groups if self.optimizer else []) for p in pg["params"]}
        for g in names:
            if g in self.opt_groups:
                continue
            params = [p for p in self.param_groups.get(g, []) if id(p) not in taken]
            taken.update(id(p) for p in params)
            group = {"params": params, "lr": lr, "name": g}
            if self.optimizer is None:
                self.optimizer = (torch.optim.SGD([group], lr=lr, momentum=self.momentum, weight_decay=self.weight_decay)
                                  if self.optimizer_name == "sgd" else
                                  torch.optim.AdamW([group], lr=lr, weight_decay=self.weight_decay))
            else:
                self.optimizer.add_param_group(group)
            self.opt_groups.append(g)

    def _enter_stage(self, idx: int) -> None:
        stage = self.stages[idx]
        self.set_trainable(self.model, stage.groups)
        self._add_groups(list(dict.fromkeys(g for s in self.stages[: idx + 1] for g in s.groups)), stage.lr)
        for pg in self.optimizer.param_groups:
            pg["lr"] = stage.lr
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        if not self.trainable:
            sizes = {k: sum(p.numel() for p in v) for k, v in self.param_groups.items()}
            raise ValueError(f"stage {stage.name!r} trains groups {list(stage.groups)} but they hold no "
                             f"parameter; check the model's parameter groups (sizes: {sizes})")
        self.ddp_model = self.model
        if self.dist.distributed:  # DDP hooks the parameters that require grad *now*: re-wrap per stage
            self.ddp_model = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.current_stage = idx

    # -- checkpoints and logs ------------------------------------------------------------------
    def _save(self, epoch: int) -> float:
        t0 = time.perf_counter()
        save_checkpoint(self, epoch)
        return time.perf_counter() - t0

    def _load(self) -> bool:
        return load_checkpoint(self)

    def _write_logs(self) -> None:
        if self.dist.is_main:
            atomic_write_text(self.out_dir / "log.jsonl", "".join(json.dumps(jsonable(r)) + "\n" for r in self.history))
            atomic_write_csv(self.out_dir / "log.csv", self.history)
            atomic_write_csv(self.out_dir / "steps.csv", self.step_log)

    # -- evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, dataset: Optional[Dataset] = None) -> Dict[str, Any]:
        """Scores the whole ``dataset`` (default: the val set), sharded over ranks and gathered.

        Returns the task's metrics: for classification :func:`~sca_lib.metrics.classification_metrics`
        plus ``loss`` (the training loss over the set). Non-finite scores raise
        :class:`DivergenceError` (metrics of NaN are meaningless).
        """
        dataset = self.val_set if dataset is None else dataset
        if dataset is None:
            return {}
        was_training = self.model.training
        self.model.eval()
        try:
            return self.task.evaluate(self, dataset)
        finally:
            self.model.train(was_training)

    def _where(self) -> str:
        if not self.history and self.current_stage < 0:
            return "before training"
        row = self.rows[min(self.start_epoch_done, self.total_epochs - 1)]
        return f"epoch {row['epoch']}, stage {row['stage'] + 1} {row['stage_name']!r}, lr {row['lr']}"

    def _kept(self) -> str:
        if self.checkpoint_path.exists():
            return f"the last good checkpoint {self.checkpoint_path} (after epoch {self.start_epoch_done}) is kept"
        return "no checkpoint had been written yet"

    # -- training ------------------------------------------------------------------------------
    def _train_epoch(self, epoch: int) -> Dict[str, Any]:
        row = self.rows[epoch - 1]
        self.ddp_model.train()
        freeze_frozen_bn(self.model)
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        it = self.train_loader
        if self.progress:
            from tqdm.auto import tqdm

            it = tqdm(self.train_loader, desc=f"epoch {epoch}/{self.total_epochs} [{row['stage_name']}]",
                      leave=False, dynamic_ncols=True)
        done: List[Tuple[int, torch.Tensor, torch.Tensor]] = []
        pending: List[Tuple[int, torch.Tensor, torch.Tensor]] = []
        n_images, t0 = 0, time.perf_counter()
        part_sums: Dict[str, float] = {}
        for batch in it:
            self.global_step += 1
            loss, n_batch, parts = self.task.train_loss(self, batch)
            for k, v in parts.items():
                part_sums[k] = part_sums.get(k, 0.0) + float(v)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(self.trainable, self.max_grad_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            n_images += n_batch
            pending.append((self.global_step, loss.detach(), norm.detach()))
            if len(pending) >= self.check_every:
                self._check(pending, epoch, row)
                if it is not self.train_loader:
                    it.set_postfix(loss=f"{pending[-1][1].item():.4f}", lr=f"{row['lr']:.0e}")
                done += pending
                pending = []
        self._check(pending, epoch, row)
        done += pending
        train_time = time.perf_counter() - t0
        losses = [float(v) for _, v, _ in done]
        norms = [float(v) for _, _, v in done]
        for (step, _, _), lv, n in zip(done, losses, norms):
            self.step_log.append({"step": step, "epoch": epoch, "stage": row["stage"], "lr": row["lr"], "loss": lv,
                                  "grad_norm": n, "grad_norm_clipped": min(n, self.max_grad_norm) if math.isfinite(n) else n,
                                  "clipped": int(math.isfinite(n) and n > self.max_grad_norm),
                                  "step_size": row["lr"] * min(n, self.max_grad_norm)})  # lr x clipped gradient norm
        sum_loss, count = sum(losses), len(losses)
        if self.dist.distributed:
            t = torch.tensor([sum_loss, float(count), float(n_images)], dtype=torch.float64)
            dist.all_reduce(t)
            sum_loss, count, n_images = float(t[0]), int(t[1]), int(t[2])
        fn = [n for n in norms if math.isfinite(n)]
        extra = {f"train_{k}": v / max(len(losses), 1) for k, v in part_sums.items()}  # e.g. a detector's loss parts
        return {**extra,
            "train_loss": sum_loss / max(count, 1),
            "grad_norm_mean": float(np.mean(fn)) if fn else float("nan"),
            "grad_norm_max": max(fn) if fn else float("nan"),
            "clip_fraction": float(np.mean([n > self.max_grad_norm for n in fn])) if fn else 0.0,
            "step_size_mean": float(np.mean([row["lr"] * min(n, self.max_grad_norm) for n in fn])) if fn else 0.0,
            "steps": len(losses), "train_images": n_images, "train_time_s": train_time,
            "images_per_s": n_images / max(train_time, 1e-9),
        }

    def _check(self, pending, epoch: int, row: Dict[str, Any]) -> None:
        if not pending:
            return
        bad = ~torch.isfinite(torch.stack([p[1] for p in pending]))
        if not self.amp:  # with AMP an inf gradient is a skipped step, not a divergence
            bad = bad | ~torch.isfinite(torch.stack([p[2] for p in pending]))
        if bool(bad.any()):
            step, lv, nv = pending[int(torch.nonzero(bad)[0])]
            lv, nv = float(lv), float(nv)
            what = f"loss {lv}" if not math.isfinite(lv) else f"gradient norm {nv} (loss {lv})"
            raise DivergenceError(
                f"training diverged: non-finite {what} at global step {step} (epoch {epoch}, stage "
                f"{row['stage'] + 1} {row['stage_name']!r}, lr {row['lr']}); {self._kept()}. Lower the learning "
                f"rate or check the data and model for NaN/inf, then rerun.")

    def fit(self, resume: bool = True) -> Dict[str, Any]:
        """Train through the schedule (resuming from ``out_dir/checkpoint.pt`` when ``resume``).

        Returns the summary: the last evaluation's metrics (``mAP``, ``top1``, ``per_class_ap``, ...,
        ``val_loss``), ``history`` (one record per epoch), ``wall_time_s`` (train + eval + checkpoint
        time over all sessions), ``images_per_s``, ``clip_fraction``, ``epochs``, ``steps``, ``out_dir``.
        """
        resumed = self._load() if resume else False
        if not resume and self.dist.is_main:
            self.checkpoint_path.unlink(missing_ok=True)
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
                getattr(cb, "on_epoch_start", lambda *a: None)(self, epoch)
            record: Dict[str, Any] = {"epoch": epoch, "stage": row["stage"] + 1, "stage_name": row["stage_name"],
                                      "lr": row["lr"], "trainable_params": self.trainable_parameters()}
            record.update(self._train_epoch(epoch))
            t_eval = time.perf_counter()
            if self.val_set is not None and (epoch % self.eval_every == 0 or epoch == self.total_epochs):
                m = self.evaluate()
                record.update({"val_loss": m.pop("loss", None), "mAP": m.get("mAP"), "top1": m.get("top1"),
                               "metrics": jsonable(m)})
            record["eval_time_s"] = time.perf_counter() - t_eval
            record["checkpoint_time_s"] = 0.0  # the checkpoint holds 0; the log gets the real time
            record["epoch_time_s"] = time.perf_counter() - t_epoch
            self.history.append(record)
            record["checkpoint_time_s"] = self._save(epoch)
            record["epoch_time_s"] = time.perf_counter() - t_epoch
            self.start_epoch_done = epoch
            self._write_logs()
            for cb in self.callbacks:
                getattr(cb, "on_epoch_end", lambda *a: None)(self, record)
        return self._summary(resumed)

    def _summary(self, resumed: bool) -> Dict[str, Any]:
        last = next((r for r in reversed(self.history) if "metrics" in r), {})
        steps = sum(r["steps"] for r in self.history)
        train_time = sum(r["train_time_s"] for r in self.history)
        return {
            **last.get("metrics", {}),
            "mAP": last.get("mAP", float("nan")), "top1": last.get("top1", float("nan")),
            "val_loss": last.get("val_loss", float("nan")), "epochs": self.total_epochs, "steps": steps,
            "clip_fraction": sum(r["clip_fraction"] * r["steps"] for r in self.history) / max(steps, 1),
            "wall_time_s": sum(r["epoch_time_s"] for r in self.history), "train_time_s": train_time,
            "images_per_s": sum(r["train_images"] for r in self.history) / max(train_time, 1e-9),
            "resumed": resumed, "world_size": self.dist.world_size, "device": str(self.device), "amp": self.amp,
            "out_dir": str(self.out_dir), "checkpoint": str(self.checkpoint_path), "history": self.history,
        }
