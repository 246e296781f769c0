"""A synthetic devkit in Pascal VOC's exact on-disk format, for CPU runs, CI and offline machines.

It writes a real ``VOCdevkit/VOC2012`` tree (``JPEGImages``, ``Annotations``,
``ImageSets/Main/{train,val,trainval}.txt`` and ``{class}_{split}.txt``), so the loaders that read
Pascal VOC (``sca_lib.data`` and ``torchvision.datasets.VOCDetection`` itself) read it unchanged.
It is a stand-in for plumbing and for small, honest CPU experiments; it is **not** Pascal VOC and
numbers measured on it say nothing about the article's VOC numbers (``data/README.md``).

This module holds what to generate (:class:`SyntheticConfig`, sized per run mode by :data:`SIZES`)
and the writing of the tree. Two versions draw the images: 1 (:mod:`sca_lib.data.render`, the
first CPU study's data, kept byte-identical) and 2, the default (:mod:`sca_lib.data.scenes`: small
objects, confusers as the difficulty knob). Everything is drawn from a seed: the same configuration
writes byte-identical files with the same NumPy and Pillow versions (fixed JPEG settings; no
timestamps).

Several processes may ask for the same devkit at once (e.g. shards of an ablation grid on a fresh
data folder): generation holds a lock file, builds the tree in ``VOCdevkit/.<name>.tmp<PID>`` and
renames it into place; a process that finds an intact tree of the same configuration uses it and
never replaces it. Temporary folders left by a killed process are removed by the next one.

Command line: ``python -m sca_lib.data synthetic --root data --variant target --mode cpu``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from .._io import clean_stale_temp, file_lock, temp_name
from ..config import MODES, check_mode
from .. import config
from .devkit import SPLITS, annotation_xml, object_labels
from . import render
from .render import GENERATOR_VERSION, SOURCE_CLASSES, TARGET_CLASSES, VARIANTS, check_variant
from .scenes import SCENE_VERSION, render_scene, scene_classes

__all__ = [
    "SyntheticConfig",
    "SIZES",
    "VERSIONS",
    "LATEST_VERSION",
    "DEFAULT_VERSION",
    "VARIANTS",
    "TARGET_CLASSES",
    "SOURCE_CLASSES",
    "MARKER",
    "synthetic_classes",
    "make_config",
    "generate_synthetic_voc",
    "ensure_synthetic",
    "synthetic_root",
    "read_marker",
    "is_intact",
    "render_sample",
]

#: Devkit versions: 1 (:mod:`~sca_lib.data.render`, the first CPU study's data) and 2
#: (:mod:`~sca_lib.data.scenes`: small objects, confusers, 7x7 maps at 112 px).
VERSIONS = (GENERATOR_VERSION, SCENE_VERSION)
LATEST_VERSION = SCENE_VERSION
#: The version every function uses when none is given: 1 (the first CPU study's data, kept byte for byte
#: so its committed rows stay reproducible). The committed studies since (``results/cpu``, family,
#: detection, localisation) name version 2 in their grids' configs (``data_version=2``);
#: pass ``version=2`` (or ``--version 2``) to generate it by hand.
DEFAULT_VERSION = GENERATOR_VERSION

#: Written last into ``VOCdevkit/<name>/``: the configuration, the class list and the counts.
MARKER = "synthetic.json"


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate.

    Args:
        variant: ``"target"`` (VOC stand-in, multi-label) or ``"source"`` (pre-training stand-in,
            one object per image).
        n_train, n_val: images per split (``trainval`` is their union).
        image_size: ``(min, max)`` side length in pixels; width and height are drawn independently
            in that range, so images vary in size like VOC's do. An int gives square images.
        seed: everything is drawn from it.
        objects: ``(min, max)`` objects per image.
        object_scale: ``(lo, hi)`` object side as a fraction of the shorter image side.
        p_tiny: probability that an object is drawn tiny (``tiny_scale``): marked difficult.
        p_occlude: probability that an object gets an occluder drawn over it; an object less than
            half visible is marked difficult.
        distractors: ``(min, max)`` distractor shapes per image.
        jpeg_quality: JPEG quality of the written images.
        name: the devkit folder, ``VOCdevkit/<name>``. ``VOC2012`` lets torchvision's own
            ``VOCDetection(root, year="2012")`` read the tree.
        version: how images are drawn (:data:`VERSIONS`). The field defaults are version 1's;
            :func:`make_config` gives each version its own defaults.
        confusers: version 2's difficulty knob: phantom classes per image, each drawn as its shape
            in another skin plus its skin on another shape (:mod:`sca_lib.data.scenes`). Version 1
            has none.

    A version-1 config serialises (:meth:`to_dict`) without ``version`` and ``confusers``, exactly
    as before they existed, so its devkits, markers and every hash built on them are unchanged.
    """

    variant: str = "target"
    n_train: int = 800
    n_val: int = 400
    image_size: Union[int, Tuple[int, int]] = (96, 128)
    seed: int = 0
    objects: Tuple[int, int] = (1, 3)
    object_scale: Tuple[float, float] = (0.2, 0.42)
    tiny_scale: Tuple[float, float] = (0.09, 0.13)
    p_tiny: float = 0.08
    p_occlude: float = 0.2
    distractors: Tuple[int, int] = (2, 5)
    jpeg_quality: int = 90
    name: str = "VOC2012"
    version: int = 1
    confusers: int = 0

    def __post_init__(self) -> None:
        check_variant(self.variant)
        if self.version not in VERSIONS:
            raise ValueError(f"unknown synthetic devkit version {self.version!r}; expected one of {VERSIONS}")
        if self.confusers < 0 or (self.version == 1 and self.confusers):
            raise ValueError(f"confusers must be >= 0, and 0 for version 1 (it has none), got {self.confusers!r} "
                             f"with version {self.version}")
        if self.n_train < 0 or self.n_val < 0 or self.n_train + self.n_val == 0:
            raise ValueError(f"need n_train, n_val >= 0 and at least one image, got {self.n_train}, {self.n_val}")
        lo, hi = self.size_range
        if not 32 <= lo <= hi <= 1024:
            raise ValueError(f"image_size must lie in 32..1024 px, got {self.image_size!r}")
        if not 1 <= self.objects[0] <= self.objects[1] <= 8:
            raise ValueError(f"objects must be (min, max) with 1 <= min <= max <= 8, got {self.objects!r}")

    @property
    def size_range(self) -> Tuple[int, int]:
        s = self.image_size
        return (int(s), int(s)) if isinstance(s, (int, np.integer)) else (int(s[0]), int(s[1]))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["image_size"] = list(self.size_range)
        for k in ("objects", "object_scale", "tiny_scale", "distractors"):
            d[k] = list(d[k])
        if self.version == 1:
            del d["version"], d["confusers"]
        return d

    @property
    def classes(self) -> Tuple[str, ...]:
        """The class names of this variant and version, in label order."""
        return synthetic_classes(self.variant, self.version)


#: Images per split of each variant, per run mode. ``fast``: a few dozen images for CI and notebooks
#: in fast mode. ``cpu``: the small-but-real CPU experiments. Mode ``full`` trains on real Pascal
#: VOC2012, so it has no synthetic size.
SIZES: Dict[str, Dict[str, Dict]] = {
    "target": {"fast": dict(n_train=64, n_val=40), "cpu": dict(n_train=800, n_val=400)},
    "source": {"fast": dict(n_train=120, n_val=40), "cpu": dict(n_train=3000, n_val=600)},
}
_SOURCE_DEFAULTS = dict(objects=(1, 1), object_scale=(0.32, 0.6), p_tiny=0.0, p_occlude=0.0,
                        distractors=(2, 5))
#: Version 2's sizes where they differ from :data:`SIZES`: twice the target's training images and
#: a source set twice as large (both calibrated in data/README.md).
V2_SIZES: Dict[str, Dict[str, Dict]] = {"target": {"cpu": dict(n_train=1600, n_val=400)},
                                        "source": {"cpu": dict(n_train=6000, n_val=600)}}
#: Version 2's settings (on top of the field defaults); ``confusers`` is calibrated in data/README.md.
V2_DEFAULTS: Dict[str, Dict] = {
    "target": dict(image_size=(112, 144), objects=(1, 3), object_scale=(0.2, 0.34), tiny_scale=(0.08, 0.11),
                   p_tiny=0.08, p_occlude=0.2, distractors=(2, 4), confusers=0),
    "source": dict(image_size=(112, 144), objects=(1, 1), object_scale=(0.25, 0.45), p_tiny=0.0, p_occlude=0.0,
                   distractors=(2, 4), confusers=1),
}


def synthetic_classes(variant: str = "target", version: int = DEFAULT_VERSION) -> Tuple[str, ...]:
    """The 20 class names of a variant (and devkit version), in label order."""
    check_variant(variant)
    if version not in VERSIONS:
        raise ValueError(f"unknown synthetic devkit version {version!r}; expected one of {VERSIONS}")
    return render.synthetic_classes(variant) if version == 1 else scene_classes(variant)


def render_sample(cfg: SyntheticConfig, index: int):
    """Draw image ``index`` of ``cfg`` with its version's drawing: ``(PIL image, objects)``."""
    return render.render_sample(cfg, index) if cfg.version == 1 else render_scene(cfg, index)


def synthetic_mode(mode: str) -> str:
    """``mode`` normalised (``"FAST"`` -> ``"fast"``) if it has a synthetic size; else a ValueError."""
    mode = check_mode(mode, "mode")
    if mode not in SIZES["target"]:
        sized = [m for m in MODES if m in SIZES["target"]]
        raise ValueError(
            f"mode {mode!r} has no synthetic devkit size: it trains on real Pascal VOC2012 "
            f"(python -m sca_lib.data download-voc, see data/README.md); for a synthetic devkit use "
            f"mode {' or '.join(sized)}")
    return mode


def make_config(variant: str = "target", mode: str = "cpu", version: int = DEFAULT_VERSION,
                **overrides) -> SyntheticConfig:
    """A :class:`SyntheticConfig` of ``version`` (default the latest) at the size of run ``mode``
    (``"fast"`` or ``"cpu"``), plus overrides (None values are ignored)."""
    check_variant(variant)
    if version not in VERSIONS:
        raise ValueError(f"unknown synthetic devkit version {version!r}; expected one of {VERSIONS}")
    if version == 1:
        kw = dict(_SOURCE_DEFAULTS) if variant == "source" else {}
    else:
        kw = dict(V2_DEFAULTS[variant], version=version)
    mode = synthetic_mode(mode)
    kw.update(SIZES[variant][mode])
    if version != 1:
        kw.update(V2_SIZES.get(variant, {}).get(mode, {}))
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return SyntheticConfig(variant=variant, **kw)


def synthetic_root(variant: str = "target", mode: str = "cpu", data_dir: Union[str, Path, None] = None,
                   version: int = DEFAULT_VERSION) -> Path:
    """Where a mode's devkit lives by default: ``<data_dir>/synthetic/<variant>-<mode>`` for version
    1, ``...-v<version>`` for later ones, with ``data_dir`` defaulting to :func:`sca_lib.config.data_dir`.

    The returned folder is a dataset root in torchvision's sense (it holds ``VOCdevkit/``).
    """
    check_variant(variant)
    base = Path(data_dir) if data_dir is not None else config.data_dir()
    suffix = "" if version == 1 else f"-v{int(version)}"
    return base / "synthetic" / f"{variant}-{synthetic_mode(mode)}{suffix}"


# --------------------------------------------------------------------------------------------
# Writing a devkit
# --------------------------------------------------------------------------------------------
def _marker_dict(cfg: SyntheticConfig, counts: dict) -> dict:
    return {
        "generator": "sca_lib.data.synthetic",
        "generator_version": cfg.version,
        "note": "Synthetic VOC-format devkit generated by sca_lib; NOT Pascal VOC.",
        "config": cfg.to_dict(),
        "classes": list(cfg.classes),
        "counts": counts,
    }


def read_marker(root: Union[str, Path], name: str = "VOC2012") -> Optional[dict]:
    """The ``synthetic.json`` of ``root/VOCdevkit/<name>``, or None when absent/unreadable."""
    path = Path(root) / "VOCdevkit" / name / MARKER
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _lock_path(root: Path, cfg: SyntheticConfig) -> Path:
    """The lock file that processes generating ``root/VOCdevkit/<cfg.name>`` take turns on."""
    return root / f".{cfg.name}.lock"


def is_intact(root: Union[str, Path], cfg: SyntheticConfig) -> bool:
    """True when ``root`` holds an intact devkit of exactly ``cfg``: its ``synthetic.json`` records
    ``cfg`` and this generator version, and every split list, class file, image and annotation is
    there."""
    root = Path(root)
    marker = read_marker(root, cfg.name)
    if marker is None or marker.get("config") != cfg.to_dict() \
            or marker.get("generator_version") != cfg.version:
        return False
    devkit = root / "VOCdevkit" / cfg.name
    main = devkit / "ImageSets" / "Main"
    try:
        jpgs = set(os.listdir(devkit / "JPEGImages"))
        xmls = set(os.listdir(devkit / "Annotations"))
        lists = set(os.listdir(main))
    except OSError:
        return False
    names = [f"syn_{i:06d}" for i in range(cfg.n_train + cfg.n_val)]
    classes = cfg.classes
    wanted = {f"{s}.txt" for s in SPLITS} | {f"{c}_{s}.txt" for c in classes for s in SPLITS}
    return wanted <= lists and all(f"{n}.jpg" in jpgs and f"{n}.xml" in xmls for n in names)


def _write_tree(tmp: Path, cfg: SyntheticConfig) -> Dict[str, int]:
    """Render and write every file of the devkit into ``tmp``, ``synthetic.json`` last; the counts."""
    classes = cfg.classes
    (tmp / "JPEGImages").mkdir()
    (tmp / "Annotations").mkdir()
    (tmp / "ImageSets" / "Main").mkdir(parents=True)
    names: Dict[str, List[str]] = {"train": [], "val": []}
    labels: Dict[str, List[List[int]]] = {"train": [], "val": []}
    n_obj = n_difficult = 0
    for i in range(cfg.n_train + cfg.n_val):
        split = "train" if i < cfg.n_train else "val"
        name = f"syn_{i:06d}"
        image, objects = render_sample(cfg, i)
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=cfg.jpeg_quality, subsampling=0 if cfg.jpeg_quality >= 95 else 2)
        (tmp / "JPEGImages" / f"{name}.jpg").write_bytes(buf.getvalue())
        (tmp / "Annotations" / f"{name}.xml").write_bytes(
            annotation_xml(name, cfg.name, image.width, image.height, objects))
        names[split].append(name)
        labels[split].append(object_labels(objects, classes))
        n_obj += len(objects)
        n_difficult += sum(o["difficult"] for o in objects)
    names["trainval"] = names["train"] + names["val"]
    labels["trainval"] = labels["train"] + labels["val"]
    main = tmp / "ImageSets" / "Main"
    for split in SPLITS:
        (main / f"{split}.txt").write_text("".join(f"{n}\n" for n in names[split]), encoding="utf-8")
        for c, cls in enumerate(classes):
            lines = "".join(f"{n} {lab[c]:2d}\n" for n, lab in zip(names[split], labels[split]))
            (main / f"{cls}_{split}.txt").write_text(lines, encoding="utf-8")
    counts = {"train": cfg.n_train, "val": cfg.n_val, "objects": n_obj, "difficult": n_difficult}
    (tmp / MARKER).write_text(json.dumps(_marker_dict(cfg, counts), indent=1) + "\n", encoding="utf-8")
    return counts


def generate_synthetic_voc(root: Union[str, Path], config: Optional[SyntheticConfig] = None, *,
                           overwrite: bool = False, verbose: bool = False) -> Path:
    """Write a synthetic devkit under ``root/VOCdevkit/<config.name>`` and return ``root``.

    The tree is built in ``VOCdevkit/.<name>.tmp<PID>`` and renamed into place at the end, with
    ``synthetic.json`` written last, so an interrupted run never leaves a tree that looks complete
    (the next run removes the temporary folder of a process that has ended). Processes generating
    into the same ``root`` take turns on the lock file ``root/.<name>.lock``; one that then finds an
    intact tree of this configuration keeps it (it would write the same bytes, and others may be
    reading it). Another tree is replaced only when ``overwrite`` is true, and only a synthetic one.
    Folders are created with the usual permissions (``0o777`` less the umask).
    """
    cfg = config or SyntheticConfig()
    root = Path(root)
    devkits = root / "VOCdevkit"
    final = devkits / cfg.name
    devkits.mkdir(parents=True, exist_ok=True)
    with file_lock(_lock_path(root, cfg), what=f"generating the synthetic devkit {final}"):
        clean_stale_temp(devkits)
        if is_intact(root, cfg):
            if verbose:
                print(f"{final} already holds this synthetic devkit (made by another process meanwhile?)")
            return root
        if final.exists():
            if not (final / MARKER).exists() and any(final.iterdir()):
                raise FileExistsError(f"{final} exists and is not a synthetic devkit (no {MARKER}); "
                                      "refusing to replace it")
            if not overwrite:
                raise FileExistsError(f"{final} already exists (another configuration, or incomplete); pass "
                                      f"overwrite=True (command line: --force) to replace it")
        t0 = time.perf_counter()
        tmp = temp_name(final)
        shutil.rmtree(tmp, ignore_errors=True)  # left by an earlier failure of this very process
        tmp.mkdir()
        try:
            counts = _write_tree(tmp, cfg)
            if final.exists():
                aside = temp_name(final.with_name(f"{cfg.name}.old"))
                os.replace(final, aside)
                os.replace(tmp, final)
                shutil.rmtree(aside, ignore_errors=True)
            else:
                os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    dt = time.perf_counter() - t0
    if verbose:
        n = cfg.n_train + cfg.n_val
        print(f"wrote {n} images ({counts['objects']} objects, {counts['difficult']} difficult) to {final} "
              f"in {dt:.1f} s ({n / max(dt, 1e-9):.0f} images/s)")
    return root


def ensure_synthetic(variant: str = "target", mode: str = "cpu", root: Union[str, Path, None] = None,
                     verbose: bool = True, version: int = DEFAULT_VERSION, **overrides) -> Path:
    """Return the root of a synthetic devkit, generating it first when missing, damaged or out of date.

    ``mode`` (``"fast"`` or ``"cpu"``) sizes it (:data:`SIZES`), ``version`` says how it is drawn
    (default the latest); ``root`` defaults to :func:`synthetic_root`
    (``<data dir>/synthetic/<variant>-<mode>[-v<version>]``). A tree whose
    ``synthetic.json`` records another configuration is regenerated. Safe to call from several
    processes at once (see :func:`generate_synthetic_voc`).
    """
    mode = synthetic_mode(mode)
    cfg = make_config(variant, mode, version, **overrides)
    root = Path(root) if root is not None else synthetic_root(variant, mode, version=version)
    devkits = root / "VOCdevkit"
    if devkits.is_dir() and any(p.name.startswith(f".{cfg.name}.") for p in devkits.iterdir()):
        with file_lock(_lock_path(root, cfg), what=f"generating the synthetic devkit {devkits / cfg.name}"):
            clean_stale_temp(devkits)  # under the lock: no generator of this tree is running
    if is_intact(root, cfg):
        return root
    if verbose:
        marker = read_marker(root, cfg.name)
        why = "missing" if marker is None else "made with another configuration" \
            if marker.get("config") != cfg.to_dict() else "incomplete"
        print(f"synthetic devkit at {root} is {why}: generating ({variant}, mode {mode}) ...", flush=True)
    return generate_synthetic_voc(root, cfg, overwrite=True, verbose=verbose)
