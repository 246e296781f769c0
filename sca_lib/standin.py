"""The pretrained stand-in: ImageNet-style pre-training on the synthetic *source* set, cached.

Without internet there are no ImageNet weights, so :func:`pretrain_standin` trains the *plain*
backbone on the synthetic ``source`` variant (its own 20 classes and seed: transfer, not a peek at
the target) and caches its state_dict as ``<data dir>/pretrained/<backbone>-<hash>.pt``, with a
``.json`` beside it recording the recipe and the source-val metrics. It is loaded through the same
``build_classifier(weights=path)`` path as ImageNet weights (``TrainConfig(weights="standin")``).
Processes that need the same stand-in at the same time take a lock: one trains, the others wait.

The ``.json`` also records :func:`weights_digest` of the saved weights, so every run that loads
them can record exactly which weights it started from (:func:`standin_record`), and a rebuild from
the same spec can be checked against it (same machine, library versions and thread count: float
sums in another order give other weights).
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch

from ._io import atomic_save, atomic_write_text, clean_stale_temp, file_lock, json_hash
from .backbones import build_classifier
from .groups import parameter_groups, set_trainable
from .batchnorm import recalibrate_batchnorm
from .config import data_dir
from .data import DEFAULT_VERSION, LATEST_VERSION, VOCClassification, classification_transforms, ensure_synthetic, make_config
from .data import synthetic_root
from .data import CachedImages
from .distributed import DistInfo, init_distributed
from .engine import Trainer
from .losses import single_label_cross_entropy
from .schedule import Stage, single_stage_schedule

__all__ = ["STANDIN_RECIPES", "STANDIN_RECIPE_OVERRIDES", "standin_path", "pretrain_standin", "synthetic_devkit", "weights_digest",
           "standin_record"]

#: Pre-training recipe per data version and run mode (it is in the cache key; bump
#: ``STANDIN_VERSION`` when the code around it changes). Version 1 is the first CPU study's. After
#: ``epochs`` at ``lr``, then ``anneal_epochs`` more at ``anneal_lr`` (whole network, same optimizer).
STANDIN_RECIPES: Dict[int, Dict[str, Dict[str, Any]]] = {
    1: {"fast": dict(epochs=3, lr=0.003, batch_size=16), "cpu": dict(epochs=6, lr=0.002, batch_size=64)},
    2: {"fast": dict(epochs=2, lr=0.003, batch_size=16, anneal_epochs=1, anneal_lr=0.0003),
        "cpu": dict(epochs=20, lr=0.003, batch_size=64, anneal_epochs=5, anneal_lr=0.0003),
        # the cpu source set, pre-trained five times shorter: the quick grid (``make main``) uses it
        "cpu-short": dict(epochs=4, lr=0.003, batch_size=64, anneal_epochs=1, anneal_lr=0.0003)},
}
#: Backbone-specific changes to a recipe, ``{(version, recipe key, backbone): {...}}``. ResNet18 trains
#: about five times slower than MobileNetV3-Small on a CPU, so its cpu stand-in gets 10 epochs
#: instead of 25 (the same source set, learning rates and annealing step).
STANDIN_RECIPE_OVERRIDES: Dict[tuple, Dict[str, Any]] = {
    (2, "cpu", "resnet18"): dict(epochs=8, anneal_epochs=2),
}
STANDIN_VERSION = 2
STANDIN_SEED = 1234


def synthetic_devkit(variant: str, mode: str, data_root: Optional[Union[str, Path]] = None,
                     verbose: bool = False, version: int = DEFAULT_VERSION, **overrides: Any) -> Path:
    """The synthetic devkit of ``variant`` at ``mode``'s size and devkit ``version`` under
    ``data_root`` (default: the data dir), generated if missing.

    ``overrides`` (e.g. ``confusers=2``; None values are ignored) change the configuration; such a
    devkit gets a folder of its own (``<variant>-<mode>-v2-<hash of the overrides>``), so runs with
    different settings never regenerate each other's data.
    """
    base = Path(data_root) if data_root else data_dir()
    root = synthetic_root(variant, mode, data_dir=base, version=version)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if overrides:
        root = root.with_name(f"{root.name}-{json_hash(overrides, 8)}")
    return ensure_synthetic(variant, mode, root=root, verbose=verbose, version=version, **overrides)


def _recipe(mode: str, version: int, backbone: str = "", recipe: Optional[str] = None) -> Dict[str, Any]:
    recipes = STANDIN_RECIPES.get(version)
    key = mode if recipe is None else f"{mode}-{recipe}"
    if recipes is None or key not in recipes:
        raise ValueError(f"no stand-in pre-training recipe {key!r} for data version {version!r}; expected one of "
                         f"{', '.join(STANDIN_RECIPES[LATEST_VERSION])} and a version of "
                         f"{', '.join(map(str, STANDIN_RECIPES))} (the full mode uses ImageNet weights)")
    named = {"recipe": recipe} if recipe is not None else {}  # a default recipe's spec (and hash) stays as it was
    return {**recipes[key], **STANDIN_RECIPE_OVERRIDES.get((version, key, backbone), {}), **named}


def _spec(backbone: str, mode: str, image_size: int, version: int, recipe: Optional[str] = None) -> Dict[str, Any]:
    recipe = _recipe(mode, version, backbone, recipe)
    return {
        "version": STANDIN_VERSION, "backbone": backbone, "image_size": int(image_size), "seed": STANDIN_SEED,
        "optimizer": "adamw", "weight_decay": 1e-4, "loss": "cross_entropy", "bn_recalibration": True,
        "data": make_config("source", mode, version).to_dict(), **recipe,
    }


def weights_digest(state_dict: Dict[str, torch.Tensor], length: int = 16) -> str:
    """A sha256 over a state_dict's names, dtypes, shapes and values (in name order), hex, cut to
    ``length``: equal for equal weights however the file was written."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()[:length]


def standin_record(path: Union[str, Path]) -> Dict[str, Any]:
    """The ``.json`` written beside a stand-in's weights (spec, source-val metrics, weights digest)."""
    return json.loads(Path(path).with_suffix(".json").read_text(encoding="utf-8"))


def standin_path(backbone: str, mode: str = "cpu", image_size: int = 96,
                 cache_dir: Optional[Union[str, Path]] = None, data_version: int = DEFAULT_VERSION,
                 recipe: Optional[str] = None) -> Path:
    """Where :func:`pretrain_standin` caches the state_dict: ``<cache_dir>/<backbone>-<hash>.pt``
    (``cache_dir`` default: ``sca_lib.config.data_dir()/pretrained``)."""
    base = Path(cache_dir) if cache_dir else data_dir() / "pretrained"
    return base / f"{backbone}-{json_hash(_spec(backbone, mode, image_size, data_version, recipe), 10)}.pt"


def pretrain_standin(backbone: str, mode: str = "cpu", image_size: int = 96,
                     cache_dir: Optional[Union[str, Path]] = None, progress: bool = True,
                     data_root: Optional[Union[str, Path]] = None, data_version: int = DEFAULT_VERSION,
                     recipe: Optional[str] = None) -> Path:
    """Pre-train the plain ``backbone`` on the synthetic source set, cache it, return its path.

    The whole plain network trains from random init in one stage (AdamW, :data:`STANDIN_RECIPES`),
    then its BatchNorm statistics are re-estimated exactly and the source-val mAP/top-1 measured.
    Cached by a hash of backbone, image size, data config and recipe: a second call returns at
    once. ``data_version`` picks the source devkit's version (and the recipe of
    :data:`STANDIN_RECIPES`); ``recipe="short"`` picks the ``<mode>-short`` recipe (the same source
    set, a shorter pre-training). ``data_root`` (a folder holding the devkits) also moves the cache to
    ``<data_root>/pretrained`` unless ``cache_dir`` is given. Under ``torchrun`` only rank 0 trains.
    """
    if cache_dir is None and data_root is not None:
        cache_dir = Path(data_root) / "pretrained"
    path = standin_path(backbone, mode, image_size, cache_dir, data_version, recipe)
    info = init_distributed()
    if path.exists():
        return path
    if info.is_main:
        with file_lock(path.with_name(path.name + ".lock"), what=f"pre-training the stand-in {path.name}"):
            if not path.exists():  # another process may have built it while we waited
                clean_stale_temp(path.parent)
                _pretrain(backbone, mode, image_size, path, progress, data_root, data_version, recipe)
    if info.distributed:
        torch.distributed.barrier()
    return path


def _schedule(spec: Dict[str, Any]) -> List[Stage]:
    stages = single_stage_schedule(spec["epochs"], spec["lr"], name="pretrain")
    if spec.get("anneal_epochs"):
        stages += single_stage_schedule(spec["anneal_epochs"], spec["anneal_lr"], name="anneal")
    return stages


def _pretrain(backbone: str, mode: str, image_size: int, path: Path, progress: bool,
              data_root: Optional[Union[str, Path]], version: int, recipe: Optional[str] = None) -> None:
    spec = _spec(backbone, mode, image_size, version, recipe)
    t0 = time.perf_counter()
    if progress:
        print(f"pre-training the stand-in {backbone} on the synthetic source set ({spec['data']['n_train']} "
              f"images, {spec['epochs'] + spec.get('anneal_epochs', 0)} epochs, {image_size} px) -> {path}",
              flush=True)
    root = synthetic_devkit("source", mode, data_root, progress, version)
    sets = [CachedImages(VOCClassification(root, split=split,
                                           transform=classification_transforms(image_size, train, True)),
                         image_size, train) for split, train in (("train", True), ("val", False))]
    torch.manual_seed(spec["seed"])
    model = build_classifier(backbone, num_classes=len(sets[0].classes or ()) or 20, weights=None)
    run_dir = path.with_name(path.stem + "-run")
    trainer = Trainer(
        model, parameter_groups(model), _schedule(spec),
        sets[0], sets[1], out_dir=run_dir, batch_size=spec["batch_size"], set_trainable=set_trainable,
        seed=spec["seed"], weight_decay=spec["weight_decay"], optimizer="adamw", progress=progress, config=spec,
        dist_info=DistInfo(), loss_fn=single_label_cross_entropy,
    )
    summary = trainer.fit(resume=True)
    # MobileNetV3's BN momentum (0.01) leaves the running statistics far behind a short training
    # from scratch: recompute them exactly, then measure the source-val metrics
    recalibrate_batchnorm(model, sets[0], batch_size=spec["batch_size"])
    metrics = trainer.evaluate()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    meta = {"spec": spec, "source_val_mAP": metrics["mAP"], "source_val_top1": metrics["top1"],
            "pretrain_time_s": time.perf_counter() - t0, "train_wall_time_s": summary["wall_time_s"],
            "classes": list(sets[0].classes or ()), "weights_digest": weights_digest(state),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine()}
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=1) + "\n")
    atomic_save(state, path)
    (run_dir / "checkpoint.pt").unlink(missing_ok=True)  # logs stay; the weights are in `path`
    if progress:
        print(f"stand-in ready in {meta['pretrain_time_s']:.0f} s: source-val mAP {metrics['mAP']:.3f}, "
              f"top-1 {metrics['top1']:.3f}", flush=True)
