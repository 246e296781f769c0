"""Data: Pascal VOC datasets, a synthetic VOC-format devkit, and a verified VOC download helper.

- :mod:`sca_lib.data.devkit`: finding, reading and checking a VOC devkit tree (split lists, class
  files, XML annotations), with errors that name the file and line.
- :mod:`sca_lib.data.voc`: :class:`VOCClassification` (multi-label, with the devkit's ignore mask)
  and :class:`VOCDetection` (targets for torchvision's detectors).
- :mod:`sca_lib.data.transforms`: ``transforms.v2`` pipelines for both, and detection collation.
- :mod:`sca_lib.data.cached`: :class:`CachedImages`, a classification set decoded once, in memory.
- :mod:`sca_lib.data.synthetic`: a synthetic devkit in VOC's exact format for CPU runs and CI,
  sized by the run mode; :mod:`sca_lib.data.render` draws its images.
- :mod:`sca_lib.data.download`: VOC2012 trainval from a list of mirrors, MD5-checked, atomic.

Default locations come from :func:`sca_lib.config.data_dir` (``$SCA_DATA_DIR``, else ``data/``).

Command line (``python -m sca_lib.data --help``)::

    python -m sca_lib.data synthetic --variant target --mode cpu
    python -m sca_lib.data download-voc
    python -m sca_lib.data check --root data
"""

from .cached import CachedImages
from .devkit import (
    VOC_CLASSES,
    BadSampleError,
    DatasetNotFoundError,
    check_voc_tree,
    find_devkit,
    image_labels,
    parse_annotation,
    read_classes,
)
from .download import VOC2012_TRAINVAL, DownloadError, download_voc
from .synthetic import (
    DEFAULT_VERSION,
    LATEST_VERSION,
    SIZES,
    SOURCE_CLASSES,
    TARGET_CLASSES,
    SyntheticConfig,
    ensure_synthetic,
    generate_synthetic_voc,
    make_config,
    synthetic_classes,
    synthetic_root,
)
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    classification_transforms,
    detection_collate,
    detection_transforms,
)
from .voc import VOCClassification, VOCDetection

__all__ = [
    "VOC_CLASSES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BadSampleError",
    "DatasetNotFoundError",
    "VOCClassification",
    "VOCDetection",
    "CachedImages",
    "check_voc_tree",
    "classification_transforms",
    "detection_collate",
    "detection_transforms",
    "find_devkit",
    "image_labels",
    "parse_annotation",
    "read_classes",
    "SIZES",
    "DEFAULT_VERSION",
    "LATEST_VERSION",
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
