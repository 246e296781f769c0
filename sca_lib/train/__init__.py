"""Train one classifier with the article's staged recipe (claims C6-C9): config, presets, CLI.

    python -m sca_lib.train --backbone mobilenet_v3_small --attention lite --preset cpu
    python -m sca_lib.train --backbone resnet50 --attention dual --preset full        # a GPU, real VOC
    torchrun --nproc_per_node=2 -m sca_lib.train --preset fast                         # DDP (gloo on CPU)

One :class:`TrainConfig` describes a run; :func:`train_classifier` builds data, model and schedule
from it and runs :class:`sca_lib.engine.Trainer` (resumable checkpoints, logs, clipping, DDP). The
ablation runner calls :func:`train_from_ablation_config` once per grid point.

Presets (``TrainConfig.from_preset``):

- ``fast``: CI plumbing, seconds per run. Synthetic devkit (``fast`` size: 64 train / 40 val
  images) at 32 px, stages of 1 epoch each, the pretrained stand-in of the ``fast`` size.
- ``cpu``: small but real on a 2-core CPU. Synthetic devkit (``cpu`` size: 800 train / 400 val) at
  96 px, stages of 4, 5 and 5 epochs, backbone pretrained on the synthetic *source* set (the
  stand-in for ImageNet, see below). MobileNetV3-Small + dual: about 50 s of training plus 2 s of
  set-up (measured on a shared 2-core CPU with ``OMP_NUM_THREADS=1``), after a one-time stand-in
  pre-training of about 2 minutes. On a machine shared with other jobs use ``OMP_NUM_THREADS=1``:
  two busy-waiting OpenMP threads per process made training up to 30x slower there.
- ``full``: the article's protocol for a GPU. Real VOC2012 train/val, ImageNet weights
  (``"DEFAULT"``), 224 px, stages of 5, 10 and 15 epochs (C6 gives 1-5, 6-15 and "16+"; we stop stage
  3 after 15 epochs, 30 in all: at LR 1e-4 a fine-tuned ResNet50 on VOC's 5.7k training images has
  long stopped moving by then, and it keeps a three-backbone, three-seed ablation within a day of one
  GPU), AMP and channels_last.

The pretrained stand-in (``weights="standin"``, the default of ``fast`` and ``cpu``): without internet
there are no ImageNet weights, so :func:`pretrain_standin` trains the *plain* backbone on the synthetic
``source`` variant (its own 20 classes and seed: transfer, not a peek at the target) and caches the
state_dict under ``data/pretrained/<backbone>-<hash>.pt``; it is loaded through the same
``build_classifier(weights=path)`` path as ImageNet weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.utils.data import Dataset

from ..engine import (
    DistInfo,
    DivergenceError,
    Stage,
    Trainer,
    atomic_save,
    expand_schedule,
    init_distributed,
    recalibrate_batchnorm,
    schedule_from_dicts,
    single_stage_schedule,
    staged_schedule,
)

__all__ = [
    "TrainConfig",
    "TRAIN_PRESETS",
    "train_classifier",
    "train_from_ablation_config",
    "build_schedule",
    "build_model",
    "build_datasets",
    "pretrain_standin",
    "standin_path",
    "CachedImages",
    "main",
]

_REPO_ROOT = Path(__file__).resolve().parents[2]

#: What each preset sets; everything else keeps the :class:`TrainConfig` defaults.
TRAIN_PRESETS: Dict[str, Dict[str, Any]] = {
    "fast": dict(dataset="synthetic", data_preset="fast", image_size=32, batch_size=16,
                 stage_epochs=(1, 1, 1), weights="standin", backbone="mobilenet_v3_small",
                 cache_images=True, num_workers=0),
    "cpu": dict(dataset="synthetic", data_preset="cpu", image_size=96, batch_size=32,
                stage_epochs=(4, 5, 5), weights="standin", backbone="mobilenet_v3_small",
                cache_images=True, num_workers=0),
    "full": dict(dataset="voc", data_preset=None, image_size=224, batch_size=64,
                 stage_epochs=(5, 10, 15), weights="DEFAULT", backbone="resnet50",
                 cache_images=False, num_workers=8),
}

#: ``quick=True`` (the README's short ablation): the ``cpu`` preset with these stage lengths.
QUICK_STAGE_EPOCHS = (2, 3, 3)


@dataclass
class TrainConfig:
    """Everything one training run depends on (JSON-serialisable; the ablation runner hashes it).

    Model: ``backbone`` (``sca_lib.backbones.list_backbones()``), ``attention`` (None = plain, or a
    name from ``sca_lib.attention.list_attentions()``), ``placement`` (None = the article's default),
    and the attention knobs ``reduction``, ``strength`` (a C10 preset name) or ``alpha``/``beta``,
    ``drop_rate`` (C9's attention dropout; 0.1 in the article, 0 by default here so that the
    ablation's baseline has none), ``identity_init`` (start the attention as the identity).

    Schedule: ``schedule="staged"`` is C6 (stage lengths ``stage_epochs``, rates ``stage_lrs``;
    stage 1 attention + head, stage 2 + late backbone, stage 3 everything); ``"single"`` trains the
    whole network at ``single_lr`` for the same total number of epochs (the staged-vs-single
    ablation; 0.01, the article's first rate, so that the comparison tests the staging and not a
    smaller learning rate). A list of stage dicts (``{"name", "epochs", "lr", "groups"}``) gives any schedule.

    Data: ``dataset="synthetic"`` (the devkit of ``sca_lib.data.synthetic``, size ``data_preset``)
    or ``"voc"`` (real VOC2012 under ``data_root``, default ``data/``). ``train_images`` /
    ``val_images`` cap the split sizes (first N images).

    Weights: ``"standin"`` (synthetic pre-training, see :func:`pretrain_standin`), ``"DEFAULT"``
    (ImageNet, needs internet once), ``None`` (random init) or a path to a plain model's state_dict.
    """

    preset: str = "cpu"
    backbone: str = "mobilenet_v3_small"
    attention: Optional[str] = "dual"
    placement: Optional[Union[str, List[str]]] = None
    reduction: Optional[int] = None
    strength: Optional[str] = None
    alpha: Optional[float] = None
    beta: Optional[float] = None
    drop_rate: float = 0.0
    identity_init: bool = False
    schedule: Union[str, List[Dict[str, Any]]] = "staged"
    stage_epochs: Tuple[int, int, int] = (4, 5, 5)
    stage_lrs: Tuple[float, float, float] = (0.01, 0.001, 0.0001)
    single_lr: float = 0.01
    image_size: int = 96
    batch_size: int = 32
    seed: int = 0
    dataset: str = "synthetic"
    data_preset: Optional[str] = "cpu"
    data_root: Optional[str] = None
    train_images: Optional[int] = None
    val_images: Optional[int] = None
    weights: Optional[str] = "standin"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    max_grad_norm: Optional[float] = 2.0
    num_workers: int = 0
    cache_images: bool = True
    eval_every: int = 1
    quick: bool = False
    nan_at_step: Optional[int] = None  # debug: inject a NaN loss at this global step

    def __post_init__(self) -> None:
        self.stage_epochs = tuple(int(e) for e in self.stage_epochs)  # type: ignore[assignment]
        self.stage_lrs = tuple(float(v) for v in self.stage_lrs)  # type: ignore[assignment]
        if self.preset not in TRAIN_PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; expected one of {', '.join(TRAIN_PRESETS)}")
        if self.dataset not in ("synthetic", "voc"):
            raise ValueError(f"dataset must be 'synthetic' or 'voc', got {self.dataset!r}")
        if isinstance(self.schedule, str) and self.schedule not in ("staged", "single"):
            raise ValueError(f"schedule must be 'staged', 'single' or a list of stage dicts, got {self.schedule!r}")
        if self.attention is None:
            knobs = {k: getattr(self, k) for k in ("placement", "reduction", "strength", "alpha", "beta")
                     if getattr(self, k) is not None}
            if self.drop_rate:
                knobs["drop_rate"] = self.drop_rate
            if self.identity_init:
                knobs["identity_init"] = True
            if knobs:
                raise ValueError(f"attention=None (a plain model) takes no attention settings, got {knobs}; "
                                 f"set attention='dual' (or another name) or drop them")
        if len(self.stage_epochs) != 3 or len(self.stage_lrs) != 3:
            raise ValueError(f"stage_epochs and stage_lrs need 3 entries (C6's three stages), got "
                             f"{self.stage_epochs} and {self.stage_lrs}")

    @classmethod
    def from_preset(cls, preset: str = "cpu", **overrides: Any) -> "TrainConfig":
        """The preset's settings (:data:`TRAIN_PRESETS`) with ``overrides`` on top.

        ``quick=True`` shortens the stages to :data:`QUICK_STAGE_EPOCHS` (unless ``stage_epochs``
        is given). Unknown keys raise ValueError listing the valid ones.
        """
        if preset not in TRAIN_PRESETS:
            raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(TRAIN_PRESETS)}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"TrainConfig has no field(s) {unknown}; valid fields: {', '.join(sorted(names))}")
        kw: Dict[str, Any] = dict(TRAIN_PRESETS[preset])
        if overrides.get("quick") and "stage_epochs" not in overrides:
            kw["stage_epochs"] = QUICK_STAGE_EPOCHS
        kw.update(overrides)
        kw["preset"] = preset
        return cls(**kw)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        d = dict(d)
        return cls.from_preset(d.pop("preset", "cpu"), **d)

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready dict (tuples as lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def attention_kwargs(self) -> Dict[str, Any]:
        """The keyword arguments that go to every attention module (only those that are set)."""
        if self.attention is None:
            return {}
        kw: Dict[str, Any] = {}
        for k in ("reduction", "strength", "alpha", "beta"):
            if getattr(self, k) is not None:
                kw[k] = getattr(self, k)
        if self.drop_rate:
            kw["drop_rate"] = float(self.drop_rate)
        if self.identity_init:
            kw["identity_init"] = True
        return kw


# ------------------------------------------------------------------------------------------------
# schedule
# ------------------------------------------------------------------------------------------------

def build_schedule(config: TrainConfig) -> List[Stage]:
    """The config's schedule as a list of :class:`~sca_lib.engine.Stage`."""
    if isinstance(config.schedule, list):
        return schedule_from_dicts(config.schedule)
    if config.schedule == "single":
        return single_stage_schedule(sum(config.stage_epochs), config.single_lr)
    return staged_schedule(config.stage_epochs, config.stage_lrs)


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------

class CachedImages(Dataset):
    """A VOC classification set decoded and resized once, kept in memory as uint8.

    Items are ``(image (3, S, S) float32, normalised with ImageNet's mean/std, target (C,) float32,
    ignore (C,) bool)``, exactly what ``classification_transforms(S, train, normalize=True)`` gives,
    with the random horizontal flip (``train=True``) drawn from torch's global RNG (so seeds and
    resumed runs reproduce it). For the small synthetic sets of the ``fast``/``cpu`` presets this
    removes JPEG decoding from every epoch; 800 images at 96 px take 22 MB.
    """

    def __init__(self, dataset: Dataset, image_size: int, train: bool) -> None:
        from ..data import IMAGENET_MEAN, IMAGENET_STD, classification_transforms

        base_tf = getattr(dataset, "transform", None)
        dataset.transform = classification_transforms(image_size)  # type: ignore[attr-defined]
        try:
            items = [dataset[i] for i in range(len(dataset))]  # type: ignore[arg-type]
        finally:
            dataset.transform = base_tf  # type: ignore[attr-defined]
        self.images = torch.stack([(x * 255).round().to(torch.uint8) for x, _, _ in items]) if items else \
            torch.empty(0, 3, image_size, image_size, dtype=torch.uint8)
        self.targets = torch.stack([t for _, t, _ in items])
        self.ignore = torch.stack([g for _, _, g in items])
        self.train = train
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        self.classes = getattr(dataset, "classes", None)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.images[i]
        if self.train and bool(torch.rand(()) < 0.5):
            x = x.flip(-1)
        x = (x.float() / 255.0 - self.mean) / self.std
        return x, self.targets[i], self.ignore[i]


def _first(dataset: Dataset, n: Optional[int]) -> Dataset:
    if n is None or n >= len(dataset):  # type: ignore[arg-type]
        return dataset
    from torch.utils.data import Subset

    sub = Subset(dataset, list(range(int(n))))
    sub.classes = getattr(dataset, "classes", None)  # type: ignore[attr-defined]
    sub.transform = getattr(dataset, "transform", None)  # type: ignore[attr-defined]
    return sub


def _synthetic_root(variant: str, preset: str, data_root: Optional[str], verbose: bool) -> Path:
    from ..data import ensure_synthetic, synthetic_root
    from ..data.voc import default_data_dir

    base = Path(data_root) if data_root else default_data_dir()
    root = synthetic_root(variant, preset, data_dir=base)
    return ensure_synthetic(variant, preset, root=root, verbose=verbose)


def build_datasets(config: TrainConfig, verbose: bool = True) -> Tuple[Dataset, Dataset, Tuple[str, ...]]:
    """``(train_set, val_set, class_names)`` for the config (generating a synthetic devkit if missing)."""
    from ..data import VOCClassification, classification_transforms
    from ..data.voc import default_data_dir

    if config.dataset == "synthetic":
        root = _synthetic_root("target", config.data_preset or config.preset, config.data_root, verbose)
    else:
        root = Path(config.data_root) if config.data_root else default_data_dir()
    size = config.image_size
    sets = []
    for split, train in (("train", True), ("val", False)):
        tf = classification_transforms(size, train=train, normalize=True)
        ds = VOCClassification(root, year="2012", split=split, transform=tf, skip_bad=config.dataset == "voc")
        classes = ds.classes
        n = config.train_images if train else config.val_images
        if config.cache_images:
            if n is not None:
                ds.ids = ds.ids[: int(n)]
                ds.labels = ds.labels[: int(n)]
            ds = CachedImages(ds, size, train)
        else:
            ds = _first(ds, n)
        sets.append(ds)
    return sets[0], sets[1], tuple(classes)


# ------------------------------------------------------------------------------------------------
# the pretrained stand-in
# ------------------------------------------------------------------------------------------------

#: Pre-training settings per preset (bump ``version`` when the recipe changes: it is in the hash).
STANDIN_RECIPES: Dict[str, Dict[str, Any]] = {
    "fast": dict(data_preset="fast", epochs=3, lr=0.003, batch_size=16),
    "cpu": dict(data_preset="cpu", epochs=6, lr=0.002, batch_size=64),
}
STANDIN_VERSION = 2
STANDIN_SEED = 1234


def _standin_spec(backbone: str, preset: str, image_size: int) -> Dict[str, Any]:
    from ..data import make_config

    if preset not in STANDIN_RECIPES:
        raise ValueError(f"no stand-in pre-training recipe for preset {preset!r}; "
                         f"expected one of {', '.join(STANDIN_RECIPES)} (the full preset uses ImageNet weights)")
    recipe = dict(STANDIN_RECIPES[preset])
    return {
        "version": STANDIN_VERSION, "backbone": backbone, "image_size": int(image_size), "seed": STANDIN_SEED,
        "optimizer": "adamw", "weight_decay": 1e-4, "loss": "cross_entropy", "bn_recalibration": True,
        "data": make_config("source", recipe.pop("data_preset")).to_dict(), **recipe,
    }


def single_label_cross_entropy(logits: torch.Tensor, targets: torch.Tensor,
                               ignore: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Softmax cross-entropy for the single-label source set: (N, C) logits, (N, C) one-hot targets.

    Images without a (non-ignored) positive label (their object is "difficult") are left out.
    """
    pos = targets > 0.5
    if ignore is not None:
        pos = pos & ~ignore.bool()
    keep = pos.any(dim=1)
    if not bool(keep.any()):
        return logits.float().sum() * 0.0
    return nn.functional.cross_entropy(logits[keep].float(), pos[keep].float().argmax(dim=1))


def _hash(spec: Dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]


def standin_path(backbone: str, preset: str = "cpu", image_size: int = 96,
                 cache_dir: Optional[Union[str, Path]] = None) -> Path:
    """Where :func:`pretrain_standin` caches the state_dict: ``data/pretrained/<backbone>-<hash>.pt``."""
    from ..data.voc import default_data_dir

    base = Path(cache_dir) if cache_dir else default_data_dir() / "pretrained"
    return base / f"{backbone}-{_hash(_standin_spec(backbone, preset, image_size))}.pt"


def pretrain_standin(backbone: str, preset: str = "cpu", image_size: int = 96,
                     cache_dir: Optional[Union[str, Path]] = None, progress: bool = True,
                     data_root: Optional[str] = None) -> Path:
    """Pre-train the plain ``backbone`` on the synthetic *source* set, cache it, return its path.

    The stand-in for ImageNet weights on machines without internet: the source variant has its
    own 20 classes (shapes and skins that never name a target class) and its own seed, so loading
    it into a target model is transfer, not a peek at the target. The whole plain network trains
    from random init in one stage (AdamW, the recipe in :data:`STANDIN_RECIPES`); the result is the
    plain model's ``state_dict``, loaded later with ``build_classifier(..., weights=path)`` (head
    replaced, as for ImageNet weights). Cached by a hash of backbone, image size, data config and
    recipe; a second call returns at once. Beside it, ``<name>.json`` records the recipe, the
    source-val mAP/top-1 and the time it took. Under ``torchrun`` only rank 0 trains; the others wait.
    """
    from ..backbones import build_classifier, parameter_groups, set_trainable
    from ..data import VOCClassification, classification_transforms

    path = standin_path(backbone, preset, image_size, cache_dir)
    info = DistInfo()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        info = init_distributed()
    if path.exists():
        return path
    if info.is_main:
        spec = _standin_spec(backbone, preset, image_size)
        t0 = time.perf_counter()
        if progress:
            print(f"pre-training the stand-in {backbone} on the synthetic source set "
                  f"({spec['data']['n_train']} images, {spec['epochs']} epochs, {image_size} px) -> {path}",
                  flush=True)
        root = _synthetic_root("source", STANDIN_RECIPES[preset]["data_preset"], data_root, progress)
        sets = []
        for split, train in (("train", True), ("val", False)):
            ds = VOCClassification(root, split=split, transform=classification_transforms(image_size, train, True))
            sets.append(CachedImages(ds, image_size, train))
        torch.manual_seed(spec["seed"])
        model = build_classifier(backbone, num_classes=len(sets[0].classes or ()) or 20, weights=None)
        groups = parameter_groups(model)
        run_dir = path.with_name(path.stem + "-run")
        trainer = Trainer(
            model, groups, single_stage_schedule(spec["epochs"], spec["lr"], name="pretrain"),
            sets[0], sets[1], out_dir=run_dir, batch_size=spec["batch_size"],
            set_trainable=set_trainable, seed=spec["seed"], weight_decay=spec["weight_decay"],
            optimizer="adamw", progress=progress, config=spec, dist_info=DistInfo(),
            loss_fn=single_label_cross_entropy,
        )
        summary = trainer.fit(resume=True)
        # torchvision's MobileNetV3 BN momentum (0.01) leaves the running statistics far behind a
        # short from-scratch training: recompute them exactly, then measure the source-val metrics
        recalibrate_batchnorm(model, sets[0], batch_size=spec["batch_size"])
        summary = {**summary, **{k: v for k, v in trainer.evaluate().items() if k in ("mAP", "top1")}}
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        meta = {"spec": spec, "source_val_mAP": summary["mAP"], "source_val_top1": summary["top1"],
                "pretrain_time_s": time.perf_counter() - t0, "train_wall_time_s": summary["wall_time_s"],
                "classes": list(sets[0].classes or ())}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".json.tmp")
        tmp.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path.with_suffix(".json"))
        atomic_save(state, path)
        (run_dir / "checkpoint.pt").unlink(missing_ok=True)  # logs stay; the weights are in `path`
        if progress:
            print(f"stand-in ready in {meta['pretrain_time_s']:.0f} s: source-val mAP {summary['mAP']:.3f}, "
                  f"top-1 {summary['top1']:.3f}", flush=True)
    if info.distributed:
        import torch.distributed as dist

        dist.barrier()
    return path


# ------------------------------------------------------------------------------------------------
# model
# ------------------------------------------------------------------------------------------------

def _resolve_weights(config: TrainConfig, progress: bool) -> Optional[str]:
    w = config.weights
    if w == "standin":
        return str(pretrain_standin(config.backbone, config.preset if config.preset in STANDIN_RECIPES else "cpu",
                                    config.image_size, progress=progress, data_root=config.data_root))
    return w


def build_model(config: TrainConfig, num_classes: int = 20, weights: Optional[str] = None) -> nn.Module:
    """``build_classifier`` from the config, then C8's init on the new attention modules only.

    ``init_attention_`` (Kaiming fan_out, zero bias; identity start kept) runs on each attention
    module, never on the pretrained backbone (the article's snippet loops over every module, which
    would overwrite the pretrained weights). ``weights`` overrides ``config.weights`` (a resolved path).
    """
    from ..attention import init_attention_
    from ..backbones import attention_modules, build_classifier

    model = build_classifier(config.backbone, attention=config.attention, placement=config.placement,
                             num_classes=num_classes, weights=weights if weights is not None else
                             (None if config.weights == "standin" else config.weights),
                             **config.attention_kwargs())
    for m in attention_modules(model).values():
        init_attention_(m)
    return model


# ------------------------------------------------------------------------------------------------
# one run
# ------------------------------------------------------------------------------------------------

def _as_config(config: Union[TrainConfig, Dict[str, Any]]) -> TrainConfig:
    if isinstance(config, TrainConfig):
        return config
    if isinstance(config, dict):
        return TrainConfig.from_dict(config)
    raise TypeError(f"config must be a TrainConfig or a dict, got {type(config).__name__}")


def train_classifier(config: Union[TrainConfig, Dict[str, Any]], out_dir: Union[str, Path],
                     resume: bool = True, progress: bool = True, callbacks: Sequence[Any] = (),
                     device: Optional[str] = None) -> Dict[str, Any]:
    """Train one classifier; returns the summary (also written to ``out_dir/summary.json``).

    Rerunning with the same ``out_dir`` resumes after the last finished epoch (a finished run
    returns its summary without training). Summary keys: ``mAP``, ``top1``, ``per_class_ap`` (list),
    ``classes``, ``params_total``, ``params_trainable`` (at the last stage), ``flops`` (one forward at
    ``image_size``), ``wall_time_s``, ``images_per_s``, ``epochs``, ``seed``, ``clip_fraction``,
    ``config`` (the dict), ``history`` and where logs and checkpoint are. ``wall_time_s`` is the sum
    of the epochs' times (training, evaluation, checkpoint) over all sessions of a resumed run;
    ``setup_time_s`` (data, model, stand-in lookup) and ``session_time_s`` are this call's.
    """
    from ..backbones import parameter_groups, set_trainable
    from ..profile import count_flops, count_parameters

    cfg = _as_config(config)
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    info = init_distributed()
    weights = _resolve_weights(cfg, progress and info.is_main)
    if cfg.dataset == "synthetic" and info.is_main:  # rank 0 generates a missing devkit, the others wait
        _synthetic_root("target", cfg.data_preset or cfg.preset, cfg.data_root, progress)
    if info.distributed:
        import torch.distributed as dist

        dist.barrier()
    train_set, val_set, classes = build_datasets(cfg, verbose=progress and info.is_main)
    torch.manual_seed(cfg.seed)  # the attention modules and head start from the seed
    model = build_model(cfg, num_classes=len(classes), weights=weights)
    params_total = count_parameters(model)["total"]
    with warnings.catch_warnings():  # fvcore's tracer warns about torch.jit deprecations
        warnings.simplefilter("ignore")
        flops = count_flops(model, (1, 3, cfg.image_size, cfg.image_size))
    stages = build_schedule(cfg)
    trainer = Trainer(
        model, parameter_groups(model), stages, train_set, val_set, out_dir=out_dir,
        batch_size=cfg.batch_size, set_trainable=set_trainable, momentum=cfg.momentum,
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm, seed=cfg.seed, device=device,
        num_workers=cfg.num_workers, eval_every=cfg.eval_every, progress=progress, config=cfg.to_dict(),
        callbacks=callbacks, nan_at_step=cfg.nan_at_step, dist_info=info,
    )
    setup_s = time.perf_counter() - t0
    summary = trainer.fit(resume=resume)
    summary.update({
        "classes": list(classes),
        "params_total": params_total,
        "params_trainable": trainer.trainable_parameters(),
        "flops": flops,
        "seed": cfg.seed,
        "setup_time_s": setup_s,
        "weights": _display_path(weights),
        "threads": torch.get_num_threads(),
        "session_time_s": time.perf_counter() - t0,
        "config": cfg.to_dict(),
    })
    if info.is_main:
        slim = {k: v for k, v in summary.items() if k != "history"}
        from ..engine import _jsonable

        tmp = out_dir / ".summary.json.tmp"
        tmp.write_text(json.dumps(_jsonable(slim), indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, out_dir / "summary.json")
    return summary


def _display_path(path: Optional[str]) -> Optional[str]:
    """A weights path relative to the repository when it lies inside it (summaries get committed)."""
    if path is None or not os.path.isabs(str(path)):
        return path
    try:
        return str(Path(path).resolve().relative_to(_REPO_ROOT))
    except ValueError:
        return str(path)


def train_from_ablation_config(config: Dict[str, Any], out_dir: Union[str, Path]) -> Dict[str, Any]:
    """The ablation runner's entry: a grid point's config dict -> the run's summary (no history).

    The dict holds ``preset`` plus :class:`TrainConfig` fields (``backbone``, ``attention``,
    ``seed``, ``placement``, ``reduction``, ``strength``, ``drop_rate``, ``identity_init``,
    ``schedule``, ``quick``, ...).
    """
    summary = train_classifier(dict(config), out_dir, resume=True, progress=False)
    return {k: v for k, v in summary.items() if k not in ("history",)}


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------

def _none_or(cast):
    def parse(text: str):
        return None if text.lower() in ("none", "null", "") else cast(text)
    return parse


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sca_lib.train",
        description="Train one classifier with the staged recipe (C6-C9). Rerun the same command to resume.",
    )
    p.add_argument("--preset", default="cpu", choices=sorted(TRAIN_PRESETS), help="fast | cpu | full (default cpu)")
    p.add_argument("--backbone", default=None, help="default: the preset's (mobilenet_v3_small; resnet50 for full)")
    p.add_argument("--attention", type=_none_or(str), default="dual", help="dual, channel, spatial, lite, ... or none")
    p.add_argument("--placement", default=None, help="a name from sca_lib.backbones.list_placements(backbone)")
    p.add_argument("--reduction", type=int, default=None)
    p.add_argument("--strength", default=None, help="C10 preset: classification | detection | segmentation")
    p.add_argument("--drop-rate", type=float, default=0.0, help="attention dropout (C9 uses 0.1)")
    p.add_argument("--identity-init", action="store_true", help="start every attention module as the identity")
    p.add_argument("--schedule", default="staged", choices=["staged", "single"])
    p.add_argument("--stage-epochs", default=None, help="three stage lengths, e.g. 5,10,15")
    p.add_argument("--single-lr", type=float, default=None, help="learning rate of --schedule single (0.01)")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="per process")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", default=None, help="standin | DEFAULT | none | path to a plain model's state_dict")
    p.add_argument("--data-root", default=None, help="folder holding VOCdevkit/ (default data/)")
    p.add_argument("--train-images", type=int, default=None, help="use the first N training images")
    p.add_argument("--val-images", type=int, default=None)
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="shorter stages (2,3,3)")
    p.add_argument("--name", default=None, help="run name: logs and checkpoint go to runs/<name>/")
    p.add_argument("--out-dir", default=None, help="overrides runs/<name>/")
    p.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--nan-at-step", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--pause-after-epoch", type=float, default=0.0, help=argparse.SUPPRESS)  # tests: time to kill
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    over: Dict[str, Any] = {}
    for k in ("backbone", "placement", "reduction", "strength", "image_size", "batch_size", "data_root",
              "train_images", "val_images", "num_workers", "nan_at_step", "single_lr"):
        v = getattr(args, k)
        if v is not None:
            over[k] = v
    if args.weights is not None:
        over["weights"] = None if args.weights.lower() == "none" else args.weights
    if args.stage_epochs:
        over["stage_epochs"] = tuple(int(v) for v in args.stage_epochs.split(","))
    over.update(attention=args.attention, drop_rate=args.drop_rate, identity_init=args.identity_init,
                schedule=args.schedule, seed=args.seed, quick=args.quick)
    return TrainConfig.from_preset(args.preset, **over)


def _default_name(cfg: TrainConfig) -> str:
    h = hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
    return f"{cfg.preset}-{cfg.backbone}-{cfg.attention or 'plain'}-s{cfg.seed}-{h}"


class _Pause:
    """Sleeps after each epoch's checkpoint (tests use it to kill a run between epochs)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_epoch_end(self, trainer: Trainer, record: Dict[str, Any]) -> None:
        time.sleep(self.seconds)


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    cfg = config_from_args(args)
    out_dir = Path(args.out_dir) if args.out_dir else _REPO_ROOT / "runs" / (args.name or _default_name(cfg))
    info = init_distributed()
    if info.is_main:
        print(f"run: {cfg.preset} preset, {cfg.backbone} + {cfg.attention or 'no attention'}, seed {cfg.seed}, "
              f"{sum(cfg.stage_epochs)} epochs, {info.world_size} process(es)", flush=True)
        print(f"logs and checkpoint: {out_dir}/ (log.csv, log.jsonl, steps.csv, checkpoint.pt, summary.json)",
              flush=True)
    try:
        callbacks = [_Pause(args.pause_after_epoch)] if args.pause_after_epoch > 0 else []
        s = train_classifier(cfg, out_dir, resume=not args.no_resume, progress=not args.no_progress,
                             device=args.device, callbacks=callbacks)
    except DivergenceError as e:
        if info.is_main:
            print(f"error: {e}", file=sys.stderr, flush=True)
        return 3
    finally:
        if info.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
    if info.is_main:
        print(f"done: mAP {s['mAP']:.4f}  top-1 {s['top1']:.4f}  wall {s['wall_time_s']:.1f} s  "
              f"{s['images_per_s']:.0f} images/s  ({s['epochs']} epochs, {s['world_size']} process(es), "
              f"{s['device']}; {out_dir})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
