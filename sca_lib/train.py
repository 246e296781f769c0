"""Train one classifier or detector with the article's staged recipe (claims C6-C9): the config and the CLI.

    python -m sca_lib.train --mode cpu --backbone mobilenet_v3_small --attention lite
    python -m sca_lib.train --mode full --backbone resnet50 --attention dual       # a GPU, real VOC
    torchrun --nproc_per_node=2 -m sca_lib.train --mode fast                        # DDP (gloo on CPU)
    python -m sca_lib.train --task detection --mode fast --fpn-attention dual      # a Faster R-CNN

One :class:`TrainConfig` describes a run; :func:`train_classifier` (:func:`train_detector` for
``task="detection"``, :mod:`sca_lib.train_detection`; :func:`train_model` picks) builds data, model
and schedule from it and runs :class:`sca_lib.engine.Trainer`. What each run mode sets (:data:`MODE_DEFAULTS`):

- ``fast``: CI plumbing. The synthetic devkit's fast size at 32 px, stages of 1 epoch each, the
  fast stand-in backbone.
- ``cpu``: small but real on a 2-core CPU (:data:`sca_lib.studies.CPU_PROTOCOL`). The synthetic
  devkit version 2 at its cpu size (1,600 train / 400 val) at 112 px, the module where the map is
  7x7 (:data:`MODE_PLACEMENTS`), stages of 4, 7 and 5 epochs at LR 0.05, 0.005 and 0.0005 (C6's
  shape), the masked BCE averaged over labels (so C7's clip at 2.0 is a guard, not the optimiser),
  BatchNorm re-estimated before the final evaluation, the backbone pre-trained on the synthetic
  source set (:mod:`sca_lib.standin`). On a machine shared with other jobs use ``OMP_NUM_THREADS=1``.
- ``full``: the article's protocol for a GPU. Real VOC2012 train/val, ImageNet weights, 224 px,
  stages of 5, 10 and 15 epochs (C6 gives 1-5, 6-15 and "16+"; we stop stage 3 after 15 epochs),
  AMP and channels_last.
"""

from __future__ import annotations

import argparse
import functools
import json
import dataclasses
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from ._io import atomic_save, atomic_write_text, json_hash, jsonable
from .attention import attention_modules, init_attention_
from .backbones import build_classifier, normalise_spec
from .baselines import labels_of, reference_lines
from .batchnorm import recalibrate_batchnorm
from .groups import parameter_groups, set_trainable
from .config import MODES, check_mode, data_dir, display_path, runs_dir
from .data import VOCClassification, VOCDetection, classification_transforms
from .data import CachedImages
from .distributed import init_distributed
from .engine import DivergenceError, Trainer
from .losses import masked_bce_with_logits
from .profile import count_flops, count_parameters
from .schedule import Stage, schedule_from_dicts, single_stage_schedule, staged_schedule
from .spec import SPEC_KEYS, AttentionSpec
from .standin import pretrain_standin, standin_record, synthetic_devkit
from .studies import CPU_PLACEMENTS, CPU_PROTOCOL, DETECTION_CPU_PROTOCOL

__all__ = ["TrainConfig", "MODE_DEFAULTS", "DETECTION_MODE_DEFAULTS", "TASKS", "SCHEDULES", "QUICK_STAGE_EPOCHS",
           "train_classifier", "train_detector", "train_model", "train_from_config", "build_schedule", "build_model",
           "build_detection_model", "build_datasets", "build_detection_datasets", "FINAL_WEIGHTS", "load_trained",
           "data_workers", "main"]

#: The file, in a run's folder, holding the weights the run's summary was measured with (after the
#: BatchNorm re-estimation when there is one); :func:`load_trained` rebuilds the model from it.
FINAL_WEIGHTS = "final_model.pt"

def data_workers(requested: int) -> int:
    """Data-loader workers for this machine: ``requested`` (the mode's 8 in ``full``), at most the
    CPUs this process may use (a free Colab machine has 2, and more workers than CPUs stalls the
    loader; torch warns about it)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(0, min(int(requested), cpus))


#: What each run mode sets; everything else keeps the :class:`TrainConfig` defaults.
MODE_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "fast": dict(dataset="synthetic", image_size=32, batch_size=16, stage_epochs=(1, 1, 1), weights="standin",
                 backbone="mobilenet_v3_small", cache_images=True, num_workers=0),
    "cpu": dict(dataset="synthetic", batch_size=32, weights="standin",
                backbone="mobilenet_v3_small", cache_images=True, num_workers=0, **CPU_PROTOCOL),
    "full": dict(dataset="voc", image_size=224, batch_size=64, stage_epochs=(5, 10, 15), weights="DEFAULT",
                 backbone="resnet50", cache_images=False, num_workers=8),
}

#: What ``task="detection"`` changes in each mode (on top of :data:`MODE_DEFAULTS`): batches of a
#: few images, the staged learning rates of C6, BatchNorm left alone (a detector's pretrained trunk
#: has frozen BatchNorm, torchvision's choice), and the detector's size (``detector``: keywords of
#: :func:`sca_lib.detection.build_detector`). ``fast`` is CI plumbing; ``cpu`` is small enough for a
#: 2-core CPU (:data:`sca_lib.studies.DETECTION_CPU_PROTOCOL`: the synthetic devkit at 224 px, a
#: narrow box head, a few hundred proposals); ``full`` is torchvision's Faster R-CNN on real VOC (800 px, ImageNet trunk).
DETECTION_MODE_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "fast": dict(batch_size=4, bn_policy="keep", stage_epochs=(1, 1, 1), stage_lrs=(0.01, 0.001, 0.0001),
                 single_lr=0.01, detector=dict(
                     min_size=64, max_size=96, anchor_sizes=[16, 32, 64, 128, 256], box_head_size=128,
                     detector_kwargs=dict(rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100,
                                          rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50,
                                          box_batch_size_per_image=64))),
    "cpu": dict(batch_size=4, bn_policy="keep", **DETECTION_CPU_PROTOCOL),
    "full": dict(batch_size=8, bn_policy="keep", stage_lrs=(0.01, 0.001, 0.0001), single_lr=0.01, detector={},
                 num_workers=8),
}

#: Where each mode puts the module when a spec names no placement (else the backbone's default):
#: the cpu protocol's stride-16 placements, a 7x7 map at 112 px (``sca_lib.studies.CPU_PLACEMENTS``).
MODE_PLACEMENTS: Dict[str, Dict[str, str]] = {"cpu": dict(CPU_PLACEMENTS)}

#: ``weights`` values that name a stand-in pre-trained on the synthetic source set, and its recipe:
#: ``"standin"`` (the mode's), ``"standin-short"`` (the same source set, five times shorter; the quick grid's).
STANDINS: Dict[str, Optional[str]] = {"standin": None, "standin-short": "short"}

#: What a run trains: a multi-label classifier or a Faster R-CNN detector.
TASKS = ("classification", "detection")

#: Fields only a detection run has; a classification config leaves them out of its dict (and hash).
_DETECTION_FIELDS = ("task", "fpn_attention", "detector", "detector_weights")

#: Named schedules: the article's recipe, one stage, and the two controls (see :class:`TrainConfig`).
SCHEDULES = ("staged", "single", "staged_constant", "probe")

#: ``quick=True`` (the README's short ablation): the mode's settings with these stage lengths.
QUICK_STAGE_EPOCHS = (2, 3, 3)

_LEGACY_KEYS = {"preset": "mode"}  # configs written before the run mode had one name
_DROPPED_KEYS = ("data_preset", "nan_at_step")


@dataclass
class TrainConfig:
    """Everything one training run depends on (JSON-serialisable; the ablation runner hashes it).

    Model: ``backbone`` and ``attention`` (a :class:`~sca_lib.spec.AttentionSpec`; a name or None
    is turned into one; :meth:`from_mode` also takes the spec's fields as flat keywords).
    Schedule: ``"staged"`` is C6 (``stage_epochs``, ``stage_lrs``; stage 1 attention + head, stage
    2 + late backbone, stage 3 everything); ``"single"`` trains the whole network at ``single_lr``
    for the same number of epochs; the controls that separate the recipe's causes are
    ``"staged_constant"`` (the same three stages, every one at ``single_lr``: staging without the
    decaying LR) and ``"probe"`` (only the new head trains, at ``single_lr``, for the same number of
    epochs: a linear probe of the frozen pretrained features); a list of stage dicts gives any schedule.
    BatchNorm: ``bn_policy="reestimate"`` recomputes the running statistics of every trainable
    BatchNorm over the training set after the last epoch and evaluates again (the summary keeps the
    metrics before it as ``*_before_bn``); ``"keep"`` evaluates with the statistics training left.
    Data: ``dataset="synthetic"`` (the devkit of the mode's size and version ``data_version`` under
    ``data_root``, default the data dir; version 1 is the first CPU study's data (``results/cpu-v1-superseded``), 2 the data of the committed studies since) or ``"voc"`` (real VOC2012 under ``data_root``); ``train_images`` / ``val_images``
    keep the first N images. Weights: ``"standin"``, ``"DEFAULT"`` (ImageNet), None or a path.
    Loss: ``loss_reduction`` of the masked BCE, ``"sum_per_image"`` (over an image's labels, the
    mean over images) or ``"mean"`` (over every counted label: C times smaller gradients).
    Detection (``task="detection"``, :mod:`sca_lib.train_detection`): ``fpn_attention`` is C13's
    attention on the pyramid (a name or None), ``detector`` the :func:`~sca_lib.detection.build_detector`
    keywords (size, anchors, box head, proposals: the mode's, :data:`DETECTION_MODE_DEFAULTS`,
    updated by the given dict), ``weights`` the trunk's and ``detector_weights`` a whole plain
    detector's (torchvision's COCO weights by name, or a file).
    """

    mode: str = "cpu"
    backbone: str = "mobilenet_v3_small"
    attention: AttentionSpec = field(default_factory=lambda: AttentionSpec("dual"))
    schedule: Union[str, List[Dict[str, Any]]] = "staged"
    bn_policy: str = "keep"
    stage_epochs: Tuple[int, int, int] = (4, 5, 5)
    stage_lrs: Tuple[float, float, float] = (0.01, 0.001, 0.0001)
    single_lr: float = 0.01
    image_size: int = 96
    batch_size: int = 32
    seed: int = 0
    dataset: str = "synthetic"
    data_version: int = 1
    data_root: Optional[str] = None
    train_images: Optional[int] = None
    val_images: Optional[int] = None
    weights: Optional[str] = "standin"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    max_grad_norm: Optional[float] = 2.0
    loss_reduction: str = "sum_per_image"
    num_workers: int = 0
    cache_images: bool = True
    eval_every: int = 1
    quick: bool = False
    task: str = "classification"
    fpn_attention: Optional[str] = None
    detector: Optional[Dict[str, Any]] = None
    detector_weights: Optional[str] = None

    def __post_init__(self) -> None:
        self.mode = check_mode(self.mode, "mode")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.task == "classification" and (self.fpn_attention is not None or self.detector is not None
                                              or self.detector_weights is not None):
            raise ValueError("fpn_attention, detector and detector_weights are detection settings; add "
                             "task='detection' (--task detection) or drop them")
        if self.task == "detection":
            if self.fpn_attention is not None:
                from .attention import list_attentions

                if str(self.fpn_attention).lower() in ("none", ""):
                    self.fpn_attention = None
                elif str(self.fpn_attention).lower() not in list_attentions():
                    raise ValueError(f"unknown fpn_attention {self.fpn_attention!r}; expected none or one of "
                                     f"{', '.join(list_attentions())}")
                else:
                    self.fpn_attention = str(self.fpn_attention).lower()
            self.detector = dict(self.detector or {})
            if self.bn_policy != "keep":
                raise ValueError("a detector's pretrained trunk has frozen BatchNorm (torchvision's choice), so "
                                 "there is nothing to re-estimate: use bn_policy='keep' with task='detection'")
        if not isinstance(self.attention, AttentionSpec):
            self.attention = (AttentionSpec.from_flat(self.attention) if isinstance(self.attention, dict)
                              else AttentionSpec(self.attention))
        self.stage_epochs = tuple(int(e) for e in self.stage_epochs)  # type: ignore[assignment]
        self.stage_lrs = tuple(float(v) for v in self.stage_lrs)  # type: ignore[assignment]
        normalise_spec(self.attention, self.backbone)  # unknown backbone or placement: the error now, not later
        if len(self.stage_epochs) != 3 or len(self.stage_lrs) != 3:
            raise ValueError(f"stage_epochs and stage_lrs need 3 entries (C6's three stages), got "
                             f"{self.stage_epochs} and {self.stage_lrs}")
        if self.loss_reduction not in ("sum_per_image", "mean"):
            raise ValueError(f"loss_reduction must be 'sum_per_image' (BCE summed over an image's labels) or "
                             f"'mean' (over labels too), got {self.loss_reduction!r}")
        if self.data_version not in (1, 2):
            raise ValueError(f"data_version must be 1 or 2 (the synthetic devkit's versions), got {self.data_version!r}")
        if self.dataset not in ("synthetic", "voc"):
            raise ValueError(f"dataset must be 'synthetic' or 'voc', got {self.dataset!r}")
        if self.dataset == "synthetic" and self.mode == "full":
            raise ValueError("the synthetic devkit has fast and cpu sizes only; mode 'full' uses dataset='voc'")
        if isinstance(self.schedule, str) and self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)} or a list of stage dicts, "
                             f"got {self.schedule!r}")
        if self.bn_policy not in ("keep", "reestimate"):
            raise ValueError(f"bn_policy must be 'keep' or 'reestimate', got {self.bn_policy!r}")
        for name in ("train_images", "val_images"):
            n = getattr(self, name)
            if n is not None and (isinstance(n, bool) or int(n) < 1):
                raise ValueError(f"{name} must be a positive number of images or None (all), got {n!r}")

    @classmethod
    def from_mode(cls, mode: str = "cpu", **overrides: Any) -> "TrainConfig":
        """The mode's settings (:data:`MODE_DEFAULTS`) with ``overrides`` on top.

        The attention spec's fields may be given flat (``attention="dual", reduction=16``).
        ``quick=True`` shortens the stages to :data:`QUICK_STAGE_EPOCHS` unless ``stage_epochs`` is
        given. An attention spec without a placement gets the mode's (:data:`MODE_PLACEMENTS`). Unknown keys raise ValueError listing the valid ones.
        """
        mode = check_mode(mode, "mode")
        names = {f.name for f in dataclasses.fields(cls)} | set(SPEC_KEYS)
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"TrainConfig has no field(s) {unknown}; valid fields: {', '.join(sorted(names))}")
        kw: Dict[str, Any] = dict(MODE_DEFAULTS[mode])
        detection = overrides.get("task") == "detection"
        if detection:
            kw.update(DETECTION_MODE_DEFAULTS[mode])
            if isinstance(overrides.get("detector"), dict):  # the mode's detector settings, updated
                overrides["detector"] = _merge(kw["detector"], overrides["detector"])
        if overrides.get("quick"):
            kw["stage_epochs"] = QUICK_STAGE_EPOCHS  # an explicit stage_epochs (below) still wins
        spec = overrides.pop("attention", "dual")
        flat = {k: overrides.pop(k) for k in SPEC_KEYS if k in overrides}
        if isinstance(spec, AttentionSpec):
            spec = dataclasses.replace(spec, **flat)
        else:
            spec = AttentionSpec.from_flat({"attention": spec, **flat})
        kw.update(overrides)
        placement = None if detection else MODE_PLACEMENTS.get(mode, {}).get(kw.get("backbone", ""))
        if spec.kind is not None and spec.placement is None and placement is not None:
            spec = dataclasses.replace(spec, placement=placement)  # the mode's protocol: a 7x7 map on the CPU
        return cls(mode=mode, attention=spec, **{k: v for k, v in kw.items() if k != "mode"})

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        """The inverse of :meth:`to_dict`; also reads configs written by earlier versions."""
        d = {_LEGACY_KEYS.get(k, k): v for k, v in d.items() if k not in _DROPPED_KEYS}
        return cls.from_mode(d.pop("mode", "cpu"), **d)

    def to_dict(self) -> Dict[str, Any]:
        """A flat JSON-ready dict: the attention spec's fields at the top level (tuples as lists).
        A classification config leaves out the detection fields (so its dict is what it always was)."""
        out: Dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "attention":
                out.update(self.attention.to_flat())
            elif f.name in _DETECTION_FIELDS and self.task == "classification":
                continue
            else:
                out[f.name] = getattr(self, f.name)
        return jsonable(out)


def _merge(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    """``base`` updated by ``over``, one level of nested dicts merged too (``detector_kwargs``)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = {**out[k], **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def build_schedule(config: TrainConfig) -> List[Stage]:
    """The config's schedule as a list of :class:`~sca_lib.schedule.Stage`.

    A detector's stages name its groups (:data:`sca_lib.detection.DETECTION_STAGE_GROUPS`: the new
    attention, FPN, RPN and ROI heads first); its probe trains the FPN and the heads on the frozen trunk.
    """
    if isinstance(config.schedule, list):
        return schedule_from_dicts(config.schedule)
    total = sum(config.stage_epochs)
    if config.task == "detection":
        from .detection import DETECTION_GROUPS, DETECTION_STAGE_GROUPS

        groups, heads = DETECTION_STAGE_GROUPS, ("fpn", "rpn", "roi_heads")
        names = ("attention+FPN+heads", "+late trunk", "whole detector")
        if config.schedule == "single":
            return single_stage_schedule(total, config.single_lr, groups=DETECTION_GROUPS)
        if config.schedule == "probe":
            return single_stage_schedule(total, config.single_lr, groups=heads, name="FPN+heads on a frozen trunk")
        lrs = (config.single_lr,) * 3 if config.schedule == "staged_constant" else config.stage_lrs
        return staged_schedule(config.stage_epochs, lrs, groups=groups, names=names)
    if config.schedule == "single":
        return single_stage_schedule(total, config.single_lr)
    if config.schedule == "probe":
        return single_stage_schedule(total, config.single_lr, groups=("head",), name="linear probe")
    if config.schedule == "staged_constant":
        return staged_schedule(config.stage_epochs, (config.single_lr,) * 3)
    return staged_schedule(config.stage_epochs, config.stage_lrs)


def _devkit_root(config: TrainConfig, verbose: bool) -> Path:
    """The folder holding the config's devkit: the synthetic one (generated if missing) or real VOC's."""
    if config.dataset == "synthetic":
        return synthetic_devkit("target", config.mode, config.data_root, verbose, version=config.data_version)
    return Path(config.data_root) if config.data_root else data_dir()


def _first(ds: Dataset, n: int, classes: Sequence[str]) -> Dataset:
    """The first ``n`` items of ``ds`` (keeping its ``classes``)."""
    sub = Subset(ds, list(range(n)))
    sub.classes = classes  # type: ignore[attr-defined]
    return sub


def build_datasets(config: TrainConfig, verbose: bool = True) -> Tuple[Dataset, Dataset, Tuple[str, ...]]:
    """``(train_set, val_set, class_names)`` for the config (generating a synthetic devkit if missing)."""
    root = _devkit_root(config, verbose)
    sets = []
    for split, train in (("train", True), ("val", False)):
        ds = VOCClassification(root, year="2012", split=split, skip_bad=config.dataset == "voc",
                               transform=classification_transforms(config.image_size, train=train, normalize=True))
        classes = ds.classes
        n = config.train_images if train else config.val_images
        if config.cache_images:
            if n is not None:
                ds.ids, ds.labels = ds.ids[: int(n)], ds.labels[: int(n)]
            ds = CachedImages(ds, config.image_size, train)
        elif n is not None and n < len(ds):
            ds = _first(ds, int(n), classes)
        sets.append(ds)
    return sets[0], sets[1], tuple(classes)


def _resolve_weights(config: TrainConfig, progress: bool) -> Optional[str]:
    if config.weights not in STANDINS:
        return config.weights
    mode = config.mode if config.mode != "full" else "cpu"
    return str(pretrain_standin(config.backbone, mode, config.image_size, progress=progress,
                                data_version=config.data_version, data_root=config.data_root,
                                recipe=STANDINS[config.weights]))


#: ``build_model``'s default: take the weights from the config (``weights=None`` means random weights).
FROM_CONFIG: Any = type("FromConfig", (), {"__repr__": lambda self: "FROM_CONFIG"})()


def build_model(config: TrainConfig, num_classes: int = 20, weights: Any = FROM_CONFIG,
                progress: bool = False) -> nn.Module:
    """``build_classifier`` from the config, then C8's init on the new attention modules only.

    ``weights``: by default ``config.weights`` (``"standin"`` there is resolved here: pre-trained and
    cached on first use); ``None`` builds random weights whatever the config says; anything else
    (a torchvision weights name, a state_dict file) overrides the config. ``init_attention_`` runs on each attention module, never
    on the pretrained backbone (the article's snippet loops over every module).
    """
    if weights is FROM_CONFIG:
        weights = _resolve_weights(config, progress)
    model = build_classifier(config.backbone, attention=config.attention, num_classes=num_classes, weights=weights)
    for m in attention_modules(model).values():
        init_attention_(m)
    return model


def train_classifier(config: Union[TrainConfig, Dict[str, Any]], out_dir: Union[str, Path],
                     resume: bool = True, progress: bool = True, callbacks: Sequence[Any] = (),
                     device: Optional[str] = None, loss_fn: Optional[Any] = None) -> Dict[str, Any]:
    """Train one classifier; returns the summary (also written to ``out_dir/summary.json``).

    Rerunning with the same ``out_dir`` resumes after the last finished epoch (a finished run
    returns its summary at once). Summary keys: the metrics (``mAP``, ``top1``, ``per_class_ap``,
    ``val_loss``), ``classes``, ``params_total``, ``params_trainable`` (at the last stage),
    ``flops`` (one forward at ``image_size``), ``wall_time_s`` (epochs' time over all sessions),
    ``setup_time_s``, ``session_time_s``, ``images_per_s``, ``clip_fraction``, ``config``,
    ``reference`` (chance and prior lines of the split, :func:`sca_lib.baselines.reference_lines`),
    ``history``. ``loss_fn`` replaces the masked BCE (tests wrap it to inject faults).
    """
    if not isinstance(config, (TrainConfig, dict)):
        raise TypeError(f"config must be a TrainConfig or a dict, got {type(config).__name__}")
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    info = init_distributed()
    weights = _resolve_weights(cfg, progress and info.is_main)
    if cfg.dataset == "synthetic" and info.is_main:  # rank 0 generates a missing devkit, the others wait
        synthetic_devkit("target", cfg.mode, cfg.data_root, progress, version=cfg.data_version)
    if info.distributed:
        torch.distributed.barrier()
    train_set, val_set, classes = build_datasets(cfg, verbose=progress and info.is_main)
    torch.manual_seed(cfg.seed)  # the attention modules and head start from the seed
    model = build_model(cfg, num_classes=len(classes), weights=weights)
    params_total = count_parameters(model)["total"]
    with warnings.catch_warnings():  # fvcore's tracer warns about torch.jit deprecations
        warnings.simplefilter("ignore")
        flops = count_flops(model, (1, 3, cfg.image_size, cfg.image_size))
    loss_fn = loss_fn or functools.partial(masked_bce_with_logits, reduction=cfg.loss_reduction)
    trainer = Trainer(
        model, parameter_groups(model), build_schedule(cfg), train_set, val_set, out_dir=out_dir,
        batch_size=cfg.batch_size, set_trainable=set_trainable, momentum=cfg.momentum,
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm, seed=cfg.seed, device=device,
        num_workers=data_workers(cfg.num_workers), eval_every=cfg.eval_every, progress=progress, config=cfg.to_dict(),
        callbacks=callbacks, dist_info=info, loss_fn=loss_fn,
    )
    setup_s = time.perf_counter() - t0
    summary = trainer.fit(resume=resume)
    if cfg.bn_policy == "reestimate":
        summary.update(_reestimate_and_evaluate(trainer, cfg))
    summary.update({
        "classes": list(classes), "params_total": params_total, "params_trainable": trainer.trainable_parameters(),
        "flops": flops, "seed": cfg.seed, "setup_time_s": setup_s, "weights": display_path(weights),
        "threads": torch.get_num_threads(), "session_time_s": time.perf_counter() - t0, "config": cfg.to_dict(),
        # chance and prior on this split (the prior's loss in the training loss's reduction)
        "reference": reference_lines(labels_of(train_set), labels_of(val_set), reduction=cfg.loss_reduction),
    })
    return _write_summary(summary, weights, out_dir, info.is_main, model)


def _write_summary(summary: Dict[str, Any], weights: Optional[str], out_dir: Path, is_main: bool,
                   model: nn.Module) -> Dict[str, Any]:
    """Add the stand-in's record (which weights exactly), write the evaluated model's weights
    (:data:`FINAL_WEIGHTS`) and ``summary.json`` (rank 0, no history)."""
    if weights is not None and Path(weights).with_suffix(".json").exists():
        rec = standin_record(weights)
        summary["standin"] = {k: rec.get(k) for k in ("weights_digest", "source_val_mAP", "source_val_top1")}
    if is_main:
        atomic_save(model.state_dict(), out_dir / FINAL_WEIGHTS)
        slim = {k: v for k, v in summary.items() if k != "history"}
        atomic_write_text(out_dir / "summary.json", json.dumps(jsonable(slim), indent=1) + "\n")
    return summary


def _reestimate_and_evaluate(trainer: Trainer, cfg: TrainConfig) -> Dict[str, Any]:
    """Re-estimate the trainable BatchNorm layers over the training set, evaluate again; the new
    metrics, with the ones before as ``mAP_before_bn``, ``top1_before_bn``, ``val_loss_before_bn``."""
    last = next((r for r in reversed(trainer.history) if "metrics" in r), {})
    torch.manual_seed(cfg.seed)  # the cached set's random flips: the same statistics on every call
    set_trainable(trainer.model, trainer.stages[-1].groups)  # the last stage's frozen BNs stay frozen
    recalibrate_batchnorm(trainer.model, trainer.train_set, batch_size=cfg.batch_size)
    m = trainer.evaluate()
    m["val_loss"] = m.pop("loss")
    return {**m, "mAP_before_bn": last.get("mAP"), "top1_before_bn": last.get("top1"),
            "val_loss_before_bn": last.get("val_loss")}


# ------------------------------------------------------------------------------------------------
# detection
# ------------------------------------------------------------------------------------------------

def build_detection_datasets(config: TrainConfig, verbose: bool = True) -> Tuple[Dataset, Dataset, Tuple[str, ...]]:
    """``(train_set, val_set, class_names)`` of VOC detection for the config: the synthetic devkit's
    (generated if missing) or real VOC2012's, decoded into memory when ``cache_images``
    (:class:`~sca_lib.train_detection.CachedDetection`; training flips at random)."""
    from .data import detection_transforms
    from .train_detection import CachedDetection

    root = _devkit_root(config, verbose)
    sets = []
    for split, train in (("train", True), ("val", False)):
        ds = VOCDetection(root, year="2012", split=split, skip_bad=config.dataset == "voc",
                          transforms=detection_transforms(train=train))
        classes = ds.classes
        n = config.train_images if train else config.val_images
        if config.cache_images:
            ds = CachedDetection(ds, train=train, limit=n, progress=verbose)
        elif n is not None and n < len(ds):
            ds = _first(ds, int(n), classes)
        sets.append(ds)
    return sets[0], sets[1], tuple(classes)


def build_detection_model(config: TrainConfig, num_classes: int = 20, weights: Optional[str] = None,
                          progress: bool = False) -> nn.Module:
    """:func:`~sca_lib.detection.build_detector` from the config (``num_classes`` object classes; the
    background is added), then C8's init on the new attention modules only. ``weights`` (the
    trunk's) overrides ``config.weights``; a stand-in is resolved here."""
    from .detection import build_detector

    if weights is None:
        weights = _resolve_weights(config, progress)
    det = dict(config.detector or {})
    model = build_detector(config.backbone, attention=config.attention, fpn_attention=config.fpn_attention,
                           num_classes=num_classes + 1, weights_backbone=weights, weights=config.detector_weights,
                           **det)
    for m in attention_modules(model).values():
        init_attention_(m)
    return model


def train_detector(config: Union[TrainConfig, Dict[str, Any]], out_dir: Union[str, Path],
                   resume: bool = True, progress: bool = True, callbacks: Sequence[Any] = (),
                   device: Optional[str] = None) -> Dict[str, Any]:
    """Train one Faster R-CNN (``config.task == "detection"``); returns the summary (also written to
    ``out_dir/summary.json``), resumable like :func:`train_classifier`.

    Summary keys: the metrics (``mAP``: VOC2010+ detection AP at IoU 0.5, ``mAP_voc2007``,
    ``per_class_ap``, ``detections_per_image``), ``classes``, ``params_total``, ``params_trainable``,
    ``wall_time_s``, ``images_per_s``, ``clip_fraction``, ``config``, ``reference`` (chance and
    prior-box detector mAP of the split, :func:`sca_lib.train_detection.detection_reference_lines`),
    ``history`` (per epoch, with the detector's loss parts).
    """
    from .train_detection import DetectionTask, detection_reference_lines

    if not isinstance(config, (TrainConfig, dict)):
        raise TypeError(f"config must be a TrainConfig or a dict, got {type(config).__name__}")
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    if cfg.task != "detection":
        raise ValueError(f"train_detector trains task='detection' configs, got task={cfg.task!r}; "
                         f"use train_classifier (or train_model, which picks)")
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    info = init_distributed()
    weights = _resolve_weights(cfg, progress and info.is_main)
    if cfg.dataset == "synthetic" and info.is_main:
        synthetic_devkit("target", cfg.mode, cfg.data_root, progress, version=cfg.data_version)
    if info.distributed:
        torch.distributed.barrier()
    train_set, val_set, classes = build_detection_datasets(cfg, verbose=progress and info.is_main)
    torch.manual_seed(cfg.seed)
    model = build_detection_model(cfg, num_classes=len(classes), weights=weights)
    params_total = count_parameters(model)["total"]
    trainer = Trainer(
        model, parameter_groups(model), build_schedule(cfg), train_set, val_set, out_dir=out_dir,
        batch_size=cfg.batch_size, set_trainable=set_trainable, momentum=cfg.momentum,
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm, seed=cfg.seed, device=device,
        num_workers=data_workers(cfg.num_workers), eval_every=cfg.eval_every, progress=progress, config=cfg.to_dict(),
        callbacks=callbacks, dist_info=info, task=DetectionTask(len(classes), classes),
    )
    setup_s = time.perf_counter() - t0
    summary = trainer.fit(resume=resume)
    summary.update({
        "task": "detection", "classes": list(classes), "params_total": params_total,
        "params_trainable": trainer.trainable_parameters(), "seed": cfg.seed, "setup_time_s": setup_s,
        "weights": display_path(weights), "threads": torch.get_num_threads(),
        "session_time_s": time.perf_counter() - t0, "config": cfg.to_dict(),
        "reference": detection_reference_lines(train_set, val_set, num_classes=len(classes)),
    })
    return _write_summary(summary, weights, out_dir, info.is_main, model)


def load_trained(out_dir: Union[str, Path]) -> Tuple[nn.Module, Dict[str, Any]]:
    """``(model, summary)`` of a finished run: the model rebuilt from the run's ``summary.json``
    config, :data:`FINAL_WEIGHTS` loaded, in eval mode (no weights are downloaded or pre-trained:
    every weight comes from the run's file).

    A run finished by an older version has no :data:`FINAL_WEIGHTS`; calling :func:`train_model`
    with its config and folder again returns at once (re-estimating BatchNorm exactly as the run
    did) and writes it.
    """
    out_dir = Path(out_dir)
    missing = [n for n in ("summary.json", FINAL_WEIGHTS) if not (out_dir / n).exists()]
    if missing:
        raise FileNotFoundError(f"{out_dir} holds no finished run (missing {', '.join(missing)}); train it with "
                                f"train_model(config, {str(out_dir)!r}) (a run finished before {FINAL_WEIGHTS} "
                                f"existed only needs that call again: it returns at once and writes the file)")
    summary = json.loads((out_dir / "summary.json").read_text())
    cfg = TrainConfig.from_dict(summary["config"])
    n = len(summary["classes"])
    if cfg.task == "detection":
        from .detection import build_detector

        det = dict(cfg.detector or {})
        det.setdefault("frozen_bn", cfg.weights is not None or cfg.detector_weights is not None)  # as trained
        model = build_detector(cfg.backbone, attention=cfg.attention, fpn_attention=cfg.fpn_attention,
                               num_classes=n + 1, weights_backbone=None, weights=None, **det)
    else:
        model = build_classifier(cfg.backbone, attention=cfg.attention, num_classes=n, weights=None)
    try:
        state = torch.load(out_dir / FINAL_WEIGHTS, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as e:
        raise RuntimeError(f"cannot load {out_dir / FINAL_WEIGHTS} into the model its summary describes: {e}. "
                           f"Delete the file and call train_model(config, out_dir) again to rewrite it") from e
    return model.eval(), summary


def train_model(config: Union[TrainConfig, Dict[str, Any]], out_dir: Union[str, Path], **kwargs: Any) -> Dict[str, Any]:
    """:func:`train_detector` for a detection config, :func:`train_classifier` otherwise."""
    task = config.task if isinstance(config, TrainConfig) else dict(config).get("task", "classification")
    return (train_detector if task == "detection" else train_classifier)(config, out_dir, **kwargs)


def train_from_config(config: Dict[str, Any], out_dir: Union[str, Path]) -> Dict[str, Any]:
    """The ablation runner's entry: a grid point's flat config dict -> the run's summary (no history)."""
    summary = train_model(dict(config), out_dir, resume=True, progress=False)
    return {k: v for k, v in summary.items() if k != "history"}


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------

class _TaskDefault:
    """``--attention``'s default when not given (``--attention none`` is a plain model, so None cannot mean "not given")."""

    def __repr__(self) -> str:
        return "dual for a classifier, none for a detector"

    __str__ = __repr__


_TASK_DEFAULT = _TaskDefault()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sca_lib.train", description="Train one classifier with the "
                                "staged recipe (C6-C9). Rerun the same command to resume.")
    p.add_argument("--mode", default="cpu", type=str.lower, choices=MODES, help="run mode (default cpu)")
    p.add_argument("--task", default="classification", type=str.lower, choices=TASKS,
                   help="classification (default; --attention defaults to dual) or detection (Faster R-CNN + "
                        "FPN, VOC detection AP; --attention defaults to none)")
    p.add_argument("--fpn-attention", default=None, help="detection: C13 attention on every FPN level (e.g. dual)")
    p.add_argument("--detector-weights", default=None, help="detection: a whole plain detector's weights "
                   "(DEFAULT = torchvision's COCO weights, or a state_dict file)")
    p.add_argument("--backbone", default=None, help="default: the mode's (mobilenet_v3_small; resnet50 for full)")
    AttentionSpec.add_arguments(p, kind_default=_TASK_DEFAULT)  # dual for a classifier, none for a detector (below)
    p.add_argument("--schedule", default="staged", choices=SCHEDULES)
    p.add_argument("--bn-policy", default=None, choices=["keep", "reestimate"],
                   help="re-estimate trainable BatchNorm statistics before the final evaluation (default: the "
                        "mode's; cpu reestimate)")
    p.add_argument("--stage-epochs", default=None, help="three stage lengths, e.g. 5,10,15")
    p.add_argument("--single-lr", type=float, default=None, help="learning rate of --schedule single (default: the mode's; cpu 0.05)")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="per process")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--loss-reduction", default=None, choices=["sum_per_image", "mean"],
                   help="masked BCE summed over an image's labels or averaged over them (default: the mode's; cpu mean)")
    p.add_argument("--weights", default=None, help="standin | DEFAULT | none | path to a plain model's state_dict")
    p.add_argument("--data-root", default=None, help="folder holding VOCdevkit/ and pretrained/ (default: the "
                   "data dir, $SCA_DATA_DIR or data/)")
    p.add_argument("--train-images", type=int, default=None, help="use the first N training images")
    p.add_argument("--val-images", type=int, default=None)
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="shorter stages (2,3,3)")
    p.add_argument("--name", default=None, help="run name: logs and checkpoint go to runs/<name>/")
    p.add_argument("--out-dir", default=None, help="overrides runs/<name>/")
    p.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    over: Dict[str, Any] = {k: getattr(args, k) for k in (
        "backbone", "image_size", "batch_size", "data_root", "train_images", "val_images", "num_workers", "single_lr",
        "loss_reduction", "bn_policy")
        if getattr(args, k) is not None}
    if args.weights is not None:
        over["weights"] = None if args.weights.lower() == "none" else args.weights
    if args.stage_epochs:
        over["stage_epochs"] = tuple(int(v) for v in args.stage_epochs.split(","))
    if args.spec_kind is _TASK_DEFAULT:  # not given: a classifier gets dual, a detector no trunk attention
        args.spec_kind = "dual" if args.task == "classification" else None
    over.update(attention=AttentionSpec.from_args(args), schedule=args.schedule, seed=args.seed, quick=args.quick)
    if args.task == "detection":
        over.update(task="detection", fpn_attention=args.fpn_attention, detector_weights=args.detector_weights)
    elif args.fpn_attention or args.detector_weights:
        raise ValueError("--fpn-attention and --detector-weights are detection settings; add --task detection")
    return TrainConfig.from_mode(args.mode, **over)


def default_run_name(cfg: TrainConfig) -> str:
    return f"{cfg.mode}-{cfg.backbone}-{cfg.attention.label()}-s{cfg.seed}-{json_hash(cfg.to_dict(), 8)}"


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out_dir = Path(args.out_dir) if args.out_dir else runs_dir(args.name or default_run_name(cfg))
    info = init_distributed()
    if info.is_main:
        what = "" if cfg.task == "classification" else f"Faster R-CNN, FPN attention {cfg.fpn_attention}, "
        print(f"run: {cfg.mode} mode, {what}{cfg.backbone} + {cfg.attention.kind or 'no attention'}, seed {cfg.seed}, "
              f"{sum(cfg.stage_epochs)} epochs, {info.world_size} process(es)", flush=True)
        print(f"logs and checkpoint: {out_dir}/ (log.csv, log.jsonl, steps.csv, checkpoint.pt, summary.json)",
              flush=True)
    try:
        s = train_model(cfg, out_dir, resume=not args.no_resume, progress=not args.no_progress, device=args.device)
    except DivergenceError as e:
        if info.is_main:
            print(f"error: {e}", file=sys.stderr, flush=True)
        return 3
    finally:
        if info.distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if info.is_main:
        top1 = f"top-1 {s['top1']:.4f}" if cfg.task == "classification" else f"VOC07 mAP {s['mAP_voc2007']:.4f}"
        print(f"done: mAP {s['mAP']:.4f}  {top1}  wall {s['wall_time_s']:.1f} s  "
              f"{s['images_per_s']:.0f} images/s  ({s['epochs']} epochs, {s['world_size']} process(es), "
              f"{s['device']}; {out_dir})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
