"""sca_lib: spatial + channel ("SCA-CNN"-style) attention for CNNs.

The library behind the notebooks in ``notebooks/``. Every submodule is importable on its own; the
public names a notebook uses are re-exported here, in pipeline order: attention modules, backbones
and their cost, data, training, metrics, ablations and their report.
"""

from .config import MODES, data_dir, default_device, get_mode, output_root
from .attention import (
    MODES as ATTENTION_MODES,
    STRENGTH_PRESETS,
    AttnResBlock,
    ChannelAttention,
    DualAttention,
    LiteDualAttention,
    SpatialAttention,
    create_attention,
    default_reduction,
    init_attention_,
    list_attentions,
    record_attention,
)
from .spec import AttentionSpec
from .backbones import (
    GROUPS,
    attention_modules,
    build_classifier,
    default_placement,
    list_backbones,
    list_placements,
    parameter_groups,
    set_trainable,
)
from .profile import attention_cost, compare_latency, count_flops, count_parameters, measure_latency
from .data import (
    VOC_CLASSES,
    VOCClassification,
    VOCDetection,
    classification_transforms,
    detection_collate,
    detection_transforms,
    download_voc,
    ensure_synthetic,
    generate_synthetic_voc,
)
from .schedule import Stage, expand_schedule, single_stage_schedule, staged_schedule
from .losses import masked_bce_with_logits
from .engine import DivergenceError, Trainer
from .standin import pretrain_standin
from .metrics import average_precision, classification_metrics, mean_average_precision, per_class_ap, top1_accuracy

__version__ = "0.1.0"

# `python -m sca_lib.train` runs that module as __main__: importing it here first would make runpy
# warn, so its names load on first use
_LAZY = {"TrainConfig": "train", "train_classifier": "train"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'sca_lib' has no attribute {name!r}")


__all__ = [
    # run mode and paths
    "MODES", "get_mode", "default_device", "output_root", "data_dir",
    # attention
    "ATTENTION_MODES", "STRENGTH_PRESETS", "AttnResBlock", "ChannelAttention", "DualAttention", "LiteDualAttention",
    "SpatialAttention", "create_attention", "default_reduction", "init_attention_", "list_attentions",
    "record_attention", "AttentionSpec",
    # backbones and cost
    "GROUPS", "attention_modules", "build_classifier", "default_placement", "list_backbones", "list_placements",
    "parameter_groups", "set_trainable", "attention_cost", "compare_latency", "count_flops", "count_parameters",
    "measure_latency",
    # data
    "VOC_CLASSES", "VOCClassification", "VOCDetection", "classification_transforms", "detection_collate",
    "detection_transforms", "download_voc", "ensure_synthetic", "generate_synthetic_voc",
    # training
    "Stage", "expand_schedule", "single_stage_schedule", "staged_schedule", "masked_bce_with_logits",
    "DivergenceError", "Trainer", "pretrain_standin", "TrainConfig", "train_classifier",
    # metrics
    "average_precision", "classification_metrics", "mean_average_precision", "per_class_ap", "top1_accuracy",
]
