"""Data: Pascal VOC datasets, a synthetic VOC-format devkit, and a verified VOC download helper.

- :mod:`sca_lib.data.voc`: :class:`VOCClassification` (multi-label, with the devkit's ignore mask)
  and :class:`VOCDetection` (targets for torchvision's detectors), transforms and collation.
- :mod:`sca_lib.data.synthetic`: a synthetic devkit in VOC's exact format for CPU runs and CI.
- :mod:`sca_lib.data.download`: VOC2012 trainval from a list of mirrors, MD5-checked, atomic.

Command line (``python -m sca_lib.data --help``)::

    python -m sca_lib.data synthetic --root data --variant target --preset cpu
    python -m sca_lib.data download-voc --root data
    python -m sca_lib.data check --root data
"""

from .download import VOC2012_TRAINVAL, DownloadError, download_voc
from .synthetic import (
    PRESETS,
    SOURCE_CLASSES,
    TARGET_CLASSES,
    SyntheticConfig,
    ensure_synthetic,
    generate_synthetic_voc,
    make_config,
    synthetic_classes,
    synthetic_root,
)
from .voc import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VOC_CLASSES,
    BadSampleError,
    DatasetNotFoundError,
    VOCClassification,
    VOCDetection,
    check_voc_tree,
    classification_transforms,
    default_data_dir,
    detection_collate,
    detection_transforms,
    find_devkit,
    image_labels,
    parse_annotation,
    read_classes,
)

__all__ = [
    "VOC_CLASSES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BadSampleError",
    "DatasetNotFoundError",
    "VOCClassification",
    "VOCDetection",
    "check_voc_tree",
    "classification_transforms",
    "default_data_dir",
    "detection_collate",
    "detection_transforms",
    "find_devkit",
    "image_labels",
    "parse_annotation",
    "read_classes",
    "PRESETS",
    "SOURCE_CLASSES",
    "TARGET_CLASSES",
    "SyntheticConfig",
    "ensure_synthetic",
    "generate_synthetic_voc",
    "make_config",
    "synthetic_classes",
    "synthetic_root",
    "VOC2012_TRAINVAL",
    "DownloadError",
    "download_voc",
]
