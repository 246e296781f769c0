"""sca_lib: spatial + channel ("SCA-CNN"-style) attention for CNNs.

The library behind the notebooks in ``notebooks/``. Public names are re-exported here; each
submodule is importable on its own (``sca_lib.attention``, ...).
"""

from .attention import (
    MODES,
    STRENGTH_PRESETS,
    AttnResBlock,
    ChannelAttention,
    DualAttention,
    LiteDualAttention,
    SpatialAttention,
    create_attention,
    init_attention_,
    list_attentions,
    record_attention,
)
from .config import MODES as RUN_MODES, default_device, get_mode

__version__ = "0.1.0"

__all__ = [
    "MODES",
    "STRENGTH_PRESETS",
    "AttnResBlock",
    "ChannelAttention",
    "DualAttention",
    "LiteDualAttention",
    "SpatialAttention",
    "create_attention",
    "init_attention_",
    "list_attentions",
    "record_attention",
    "RUN_MODES",
    "default_device",
    "get_mode",
]

# --- backbones + profile (issue 4: sca_lib/backbones.py, sca_lib/profile.py) ---
# The profiler's `profile` function is not re-exported, so `sca_lib.profile` stays the module.
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

__all__ += [
    "GROUPS",
    "attention_modules",
    "build_classifier",
    "default_placement",
    "list_backbones",
    "list_placements",
    "parameter_groups",
    "set_trainable",
    "attention_cost",
    "compare_latency",
    "count_flops",
    "count_parameters",
    "measure_latency",
]

# --- metrics + training engine (issue 5: sca_lib/metrics.py, sca_lib/engine.py, sca_lib/train/) ---
from .engine import DivergenceError, Stage, Trainer, expand_schedule, single_stage_schedule, staged_schedule
from .metrics import average_precision, classification_metrics, mean_average_precision, per_class_ap, top1_accuracy
from .train import TrainConfig, pretrain_standin, train_classifier

__all__ += [
    "DivergenceError",
    "Stage",
    "Trainer",
    "expand_schedule",
    "single_stage_schedule",
    "staged_schedule",
    "average_precision",
    "classification_metrics",
    "mean_average_precision",
    "per_class_ap",
    "top1_accuracy",
    "TrainConfig",
    "pretrain_standin",
    "train_classifier",
]

# --- data (issue 3: sca_lib/data/) ---
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

__all__ += [
    "VOC_CLASSES",
    "VOCClassification",
    "VOCDetection",
    "classification_transforms",
    "detection_collate",
    "detection_transforms",
    "download_voc",
    "ensure_synthetic",
    "generate_synthetic_voc",
]
