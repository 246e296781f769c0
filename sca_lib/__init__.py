"""sca_lib: spatial + channel ("SCA-CNN"-style) attention for CNNs.

The library behind the notebooks in ``notebooks/``. Every submodule is importable on its own; the
public names a notebook uses are re-exported here, in pipeline order: the run mode and paths,
attention modules, backbones and their cost, data, training, metrics, ablations and their report.
"""

import importlib as _importlib

from .config import MODES, data_dir, default_device, get_mode, output_root

# attention
from .attention import (
    ATTENTION_TYPES,
    CONTROLS,
    DESCRIPTIONS,
    FUSIONS,
    PATHS,
    STRENGTHS,
    AttentionModule,
    AttnResBlock,
    ChannelAttention,
    DualAttention,
    LiteDualAttention,
    SpatialAttention,
    attention_modules,
    attention_settings,
    create_attention,
    default_reduction,
    init_attention_,
    is_attention,
    list_attentions,
)
from .family import CBAM, ECA, CoordinateAttention, ResidualBottleneck, SCACNNAttention
from .maps import attention_maps, detector_attention_maps, gradcam_maps, record_attention
from .spec import AttentionSpec

# backbones and what they cost
from .backbones import build_classifier, default_placement, list_backbones, list_placements
from .diagrams import module_diagram, placement_diagram
from .groups import GROUPS, parameter_groups, set_trainable
from .detection import FPNAttention, build_detector, list_detector_backbones
from .profile import (
    attention_cost,
    compare_costs,
    compare_latency,
    paired_latency,
    add_paired_latency,
    paired_ratios,
    time_interleaved,
    balanced_orders,
    round_orders,
    cost_table,
    count_flops,
    count_parameters,
    measure_latency,
)

# data
from .data import (
    VOC_CLASSES,
    CachedImages,
    VOCClassification,
    VOCDetection,
    classification_transforms,
    detection_collate,
    detection_transforms,
    download_voc,
    ensure_synthetic,
    generate_synthetic_voc,
)

# training
from .schedule import Stage, expand_schedule, single_stage_schedule, staged_schedule
from .losses import masked_bce_with_logits
from .engine import DivergenceError, Trainer
from .standin import pretrain_standin

# metrics
from .metrics import (
    average_precision,
    classification_metrics,
    detection_metrics,
    mean_average_precision,
    per_class_ap,
    top1_accuracy,
    voc_detection_ap,
)

# ablations
from .studies import GRIDS, build_grid
from .results import load_results

__version__ = "0.1.0"

# Modules with a command line (`python -m sca_lib.train`, `.ablate`, `.report`) load on first use:
# importing them here would make runpy warn when they run as __main__ (and report pulls in seaborn).
_LAZY = {"TrainConfig": "train", "train_classifier": "train", "run_grid": "ablate", "write_report": "report"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(_importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'sca_lib' has no attribute {name!r}")


__all__ = [
    "MODES", "get_mode", "default_device", "output_root", "data_dir",
    "ATTENTION_TYPES", "CONTROLS", "DESCRIPTIONS", "FUSIONS", "PATHS", "STRENGTHS", "AttentionModule", "AttnResBlock",
    "CBAM", "ECA", "CoordinateAttention", "ResidualBottleneck", "SCACNNAttention", "ChannelAttention", "DualAttention",
    "LiteDualAttention", "SpatialAttention", "attention_modules", "attention_settings", "create_attention", "default_reduction",
    "init_attention_", "is_attention", "list_attentions", "record_attention", "attention_maps", "detector_attention_maps", "gradcam_maps", "AttentionSpec",
    "build_classifier", "default_placement", "list_backbones", "list_placements", "module_diagram", "placement_diagram", "GROUPS", "parameter_groups",
    "set_trainable", "FPNAttention", "build_detector", "list_detector_backbones", "attention_cost", "compare_costs", "compare_latency", "paired_latency", "add_paired_latency", "paired_ratios", "time_interleaved", "balanced_orders", "round_orders", "cost_table", "count_flops",
    "count_parameters", "measure_latency",
    "VOC_CLASSES", "CachedImages", "VOCClassification", "VOCDetection", "classification_transforms",
    "detection_collate", "detection_transforms", "download_voc", "ensure_synthetic", "generate_synthetic_voc",
    "Stage", "expand_schedule", "single_stage_schedule", "staged_schedule", "masked_bce_with_logits",
    "DivergenceError", "Trainer", "pretrain_standin", "TrainConfig", "train_classifier",
    "average_precision", "classification_metrics", "mean_average_precision", "per_class_ap", "top1_accuracy",
    "detection_metrics", "voc_detection_ap", "GRIDS", "build_grid", "load_results", "run_grid", "write_report",
]
