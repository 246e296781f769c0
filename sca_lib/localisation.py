"""Does a map point at the object? Localisation scores for attention maps and CAMs.

Two scores, both computed in the original image's pixel grid from a non-negative saliency map
``(H, W)`` (an attention map or a Grad-CAM, upsampled to the image) and the ground-truth boxes of
one class in that image:

* **Pointing game** (Zhang et al., "Top-down neural attention by excitation backprop", ECCV 2016;
  the definition of TorchRay's benchmark): the map's maximum is a *hit* when some pixel of the
  class's boxes lies strictly within ``tolerance`` pixels (default 15) of it, else a *miss*. The
  score of a class is hits / (hits + misses) over every (image, class present) pair; the score of
  a model is the mean over classes. A pair whose boxes of the class are all VOC-``difficult`` is
  skipped. The *difficult* subset keeps the pairs where the class's boxes cover less than a
  quarter of the image and at least one other class is present (the excitation-backprop paper's
  rule, computed here from the annotations instead of read from its published list).
  One difference from TorchRay, stated: TorchRay averages over *all* classes, so a class that never
  occurs counts as accuracy 0; :class:`PointingGame` averages over the classes that were scored
  (identical whenever every class occurs, as in VOC's test sets).
* **Energy inside the boxes**: the share of the map's total mass that falls inside the union of
  the class's boxes, beside the share of the image's area those boxes cover. A map no better
  than uniform scores its area share; a map that localises scores more.

The trivial baseline for both: a map that always peaks at the image centre (:func:`centre_map`).

Boxes are ``xyxy`` pixel *edges* as :class:`sca_lib.data.VOCDetection` returns them
(``(xmin - 1, ymin - 1, xmax, ymax)`` of the XML): the box covers pixel columns ``x0 .. x1 - 1``
and rows ``y0 .. y1 - 1``, the mask TorchRay draws from the same XML.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = ["box_mask", "peak", "pointing_hit", "pointing_chance", "is_flat", "energy_inside", "centre_map", "is_difficult_pair",
           "PointingGame", "LocalisationScorer", "localisation_scores", "METHODS", "evaluate_classifier",
           "evaluate_detector",
           "VOC_DIAGONAL", "scaled_tolerance"]

#: The diagonal in pixels of VOC2012's most common image size (500 x 375), the images TorchRay's
#: 15-pixel tolerance was set for; :func:`scaled_tolerance` carries that tolerance to other sizes.
VOC_DIAGONAL = 625.0

#: What :func:`evaluate_classifier` can score: the attention module's spatial map (class-agnostic:
#: the same map for every class of an image), Grad-CAM (one map per positive class), the centre.
METHODS = ("attention", "gradcam", "centre")

ArrayLike = Any  # numpy array or torch tensor


def _np(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _check_map(saliency: ArrayLike, name: str = "saliency") -> np.ndarray:
    s = _np(saliency).astype(np.float64)
    if s.ndim == 3 and s.shape[0] == 1:
        s = s[0]
    if s.ndim != 2:
        raise ValueError(f"{name} must be one map of shape (H, W) (or (1, H, W)) in image pixels, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError(f"{name} holds NaN or inf values; compute the map again (shape {s.shape})")
    return s


def box_mask(boxes: ArrayLike, size: Tuple[int, int]) -> np.ndarray:
    """Boolean ``(H, W)`` union of ``boxes`` ``(K, 4)`` xyxy pixel edges in an image of ``size = (H, W)``."""
    h, w = int(size[0]), int(size[1])
    b = _np(boxes).reshape(-1, 4)  # an empty list or (0, 4) array gives no box
    mask = np.zeros((h, w), dtype=bool)
    for x0, y0, x1, y1 in b:
        c0, r0 = max(int(math.floor(x0)), 0), max(int(math.floor(y0)), 0)
        c1, r1 = min(int(math.ceil(x1)), w), min(int(math.ceil(y1)), h)
        if c1 > c0 and r1 > r0:
            mask[r0:r1, c0:c1] = True
    return mask


def peak(saliency: ArrayLike) -> Tuple[int, int]:
    """``(u, v)`` = (column, row) of the map's maximum (the first one in row-major order on ties)."""
    s = _check_map(saliency)
    v, u = np.unravel_index(int(np.argmax(s)), s.shape)
    return int(u), int(v)


def pointing_hit(point: Tuple[int, int], mask: np.ndarray, tolerance: float = 15) -> bool:
    """True when a pixel of ``mask`` lies strictly within ``tolerance`` pixels of ``point = (u, v)``."""
    m = _np(mask).astype(bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {m.shape}")
    rows, cols = np.nonzero(m)
    if rows.size == 0:
        return False
    u, v = point
    return bool((((cols - u) ** 2 + (rows - v) ** 2) < float(tolerance) ** 2).any())


def pointing_chance(mask: np.ndarray, tolerance: float = 15) -> float:
    """The hit probability of a point drawn uniformly over the image: the share of pixels
    strictly within ``tolerance`` of a pixel of ``mask`` (the pointing game's chance level for
    that pair; 0 for an empty mask)."""
    from scipy.ndimage import distance_transform_edt

    m = _np(mask).astype(bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {m.shape}")
    if not m.any():
        return 0.0
    return float((distance_transform_edt(~m) < float(tolerance)).mean())


def scaled_tolerance(sizes: Iterable[Tuple[int, int]], tolerance: float = 15) -> float:
    """``tolerance`` carried from VOC's images to images of ``sizes`` ``(H, W)``: the same share of the
    median image diagonal (15 px on VOC's 625-px diagonal is 2.4 %; on 180-px images, 4.3 px)."""
    diags = [math.hypot(float(h), float(w)) for h, w in sizes]
    if not diags:
        raise ValueError("scaled_tolerance needs at least one image size")
    return float(tolerance) * float(np.median(diags)) / VOC_DIAGONAL


def energy_inside(saliency: ArrayLike, mask: np.ndarray) -> Tuple[float, float]:
    """``(energy share, area share)``: the map's mass inside ``mask`` over its total mass, and the mask's
    share of the image. The map must be non-negative (a CAM after ReLU, a sigmoid gate)."""
    s = _check_map(saliency)
    m = _np(mask).astype(bool)
    if m.shape != s.shape:
        raise ValueError(f"mask shape {m.shape} differs from the map's {s.shape}; upsample the map to the image first")
    if (s < 0).any():
        raise ValueError(f"energy_inside expects a non-negative map, got a minimum of {s.min():.4g}; "
                         f"clip it (np.maximum(map, 0)) or shift it first")
    total = s.sum()
    area = float(m.mean())
    if total <= 0:
        return area, area  # a map with no mass says nothing: counted as uniform
    return float(s[m].sum() / total), area


def centre_map(size: Tuple[int, int]) -> np.ndarray:
    """The trivial baseline: a map peaking at the image centre (a cone, so it also has an energy)."""
    h, w = int(size[0]), int(size[1])
    rows, cols = np.mgrid[0:h, 0:w]
    d = np.hypot((rows - (h - 1) / 2) / h, (cols - (w - 1) / 2) / w)
    return (d.max() - d) + 1e-12


def is_difficult_pair(boxes: ArrayLike, labels: ArrayLike, label: int, size: Tuple[int, int]) -> bool:
    """The pointing game's *difficult* subset: the class's boxes cover under a quarter of the image
    and another class is present."""
    lab = _np(labels).reshape(-1)
    others = set(lab.tolist()) - {label}
    if not others:
        return False
    area = box_mask(_np(boxes).reshape(-1, 4)[lab == label], size).mean()
    return bool(area < 0.25)


class PointingGame:
    """Hits and misses per class; ``accuracy`` is the mean of the per-class accuracies over the
    classes scored at least once (see the module docstring for TorchRay's all-class mean)."""

    def __init__(self, num_classes: int, tolerance: float = 15) -> None:
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.tolerance = float(tolerance)
        self.hits = np.zeros(self.num_classes, dtype=np.int64)
        self.misses = np.zeros(self.num_classes, dtype=np.int64)

    def add(self, class_index: int, hit: bool) -> None:
        if not 0 <= int(class_index) < self.num_classes:
            raise ValueError(f"class_index must be in 0..{self.num_classes - 1}, got {class_index}")
        if hit:
            self.hits[class_index] += 1
        else:
            self.misses[class_index] += 1

    def evaluate(self, saliency: ArrayLike, mask: np.ndarray, class_index: int) -> bool:
        """Score one (image, class) pair and count it; returns the hit."""
        hit = pointing_hit(peak(saliency), mask, self.tolerance)
        self.add(class_index, hit)
        return hit

    @property
    def scored(self) -> np.ndarray:
        return (self.hits + self.misses) > 0

    @property
    def class_accuracies(self) -> np.ndarray:
        """Per class, hits / (hits + misses); NaN for a class never scored."""
        n = self.hits + self.misses
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, self.hits / np.maximum(n, 1), np.nan)

    @property
    def accuracy(self) -> float:
        acc = self.class_accuracies
        return float(np.nanmean(acc)) if self.scored.any() else float("nan")

    @property
    def pairs(self) -> int:
        return int((self.hits + self.misses).sum())


def _class_mean(sums: np.ndarray) -> float:
    """Mean over classes with pairs of (sum / pairs): a chance level averaged like the game."""
    seen = sums[:, 1] > 0
    return float(np.mean(sums[seen, 0] / sums[seen, 1])) if seen.any() else float("nan")


def is_flat(saliency: ArrayLike, rtol: float = 1e-6) -> bool:
    """True for a map with no usable peak: its range is at most ``rtol`` of its largest magnitude (an
    all-zero Grad-CAM; a sigmoid gate saturated at 1 everywhere, where float32 leaves ~1e-7 of
    noise). Its maximum is then wherever ``argmax``'s tie-breaking puts it (the first pixel)."""
    s = _check_map(saliency)
    top = float(np.abs(s).max())
    return float(s.max() - s.min()) <= rtol * top


class LocalisationScorer:
    """Accumulates the scores of :func:`localisation_scores` one image at a time (nothing of the
    maps is kept, so a whole split streams through in constant memory); :meth:`result` gives them."""

    def __init__(self, num_classes: int, tolerance: float = 15, extra_tolerances: Sequence[float] = ()) -> None:
        self.num_classes, self.tolerance = int(num_classes), float(tolerance)
        self.all_game = PointingGame(num_classes, tolerance)
        self.hard_game = PointingGame(num_classes, tolerance)
        self.sharp_game = PointingGame(num_classes, tolerance)  # pairs whose map is not flat
        self.extra = {float(t): PointingGame(num_classes, t) for t in extra_tolerances}
        self.chance_all = np.zeros((num_classes, 2))  # per class: sum of pair chances, pairs
        self.chance_hard = np.zeros((num_classes, 2))
        self.chance_extra = {t: np.zeros((num_classes, 2)) for t in self.extra}
        self.energies: List[float] = []
        self.areas: List[float] = []
        self.skipped = self.flat = 0

    def add(self, maps: Dict[int, ArrayLike], target: Dict[str, Any]) -> None:
        """Score one image: ``maps`` and ``target`` as in :func:`localisation_scores`."""
        boxes = _np(target["boxes"]).reshape(-1, 4)
        labels = _np(target["labels"]).reshape(-1).astype(int)
        difficult = _np(target.get("difficult", np.zeros(len(labels), dtype=bool))).reshape(-1).astype(bool)
        for label in sorted(set(labels.tolist())):
            cls = label - 1
            if cls not in maps:
                raise KeyError(f"no map for class index {cls} (label {label}) present in this image; "
                               f"maps has {sorted(maps)}")
            sel = labels == label
            if difficult[sel].all():
                self.skipped += 1
                continue
            s = _check_map(maps[cls], f"the map of class {cls}")
            flat = is_flat(s)
            self.flat += int(flat)
            mask = box_mask(boxes[sel], s.shape)
            hit = self.all_game.evaluate(s, mask, cls)
            if not flat:
                self.sharp_game.add(cls, hit)
            p = pointing_chance(mask, self.tolerance)
            self.chance_all[cls] += (p, 1)
            if is_difficult_pair(boxes, labels, label, s.shape):
                self.hard_game.add(cls, hit)
                self.chance_hard[cls] += (p, 1)
            for t, game in self.extra.items():
                game.evaluate(s, mask, cls)
                self.chance_extra[t][cls] += (pointing_chance(mask, t), 1)
            e, a = energy_inside(s, mask)
            self.energies.append(e)
            self.areas.append(a)

    def result(self) -> Dict[str, Any]:
        ratio = [e / a for e, a in zip(self.energies, self.areas) if a > 0]
        extra_keys: Dict[str, float] = {}
        for t, game in self.extra.items():
            extra_keys[f"pointing@{t:g}px"] = game.accuracy
            extra_keys[f"pointing_chance@{t:g}px"] = _class_mean(self.chance_extra[t])
        return {
            "pointing_chance": _class_mean(self.chance_all), "pointing_difficult_chance": _class_mean(self.chance_hard),
            **extra_keys,
            "pointing": self.all_game.accuracy, "pointing_difficult": self.hard_game.accuracy,
            "pointing_not_flat": self.sharp_game.accuracy,
            "pointing_per_class": self.all_game.class_accuracies.tolist(),
            "pairs": self.all_game.pairs, "pairs_difficult": self.hard_game.pairs, "skipped_difficult": self.skipped,
            "flat_maps": self.flat,
            "energy": float(np.mean(self.energies)) if self.energies else float("nan"),
            "area": float(np.mean(self.areas)) if self.areas else float("nan"),
            "energy_over_area": float(np.mean(ratio)) if ratio else float("nan"),
        }


def localisation_scores(items: Iterable[Tuple[Dict[int, ArrayLike], Dict[str, Any]]], num_classes: int,
                        tolerance: float = 15, extra_tolerances: Sequence[float] = ()) -> Dict[str, Any]:
    """Pointing game (all and difficult) and energy share over a split.

    ``items`` yields ``(maps, target)`` per image: ``maps`` maps a 0-based class index to that
    class's saliency map ``(H, W)`` in the image's pixels (one map for every class present, or the
    same map under every class for a class-agnostic attention map); ``target`` holds ``boxes``
    ``(K, 4)`` xyxy, ``labels`` ``(K,)`` **1-based** (as the detection loaders give them) and
    optionally ``difficult`` ``(K,)``. A generator streams (:class:`LocalisationScorer`).

    Returns ``{"pointing": accuracy, "pointing_difficult": accuracy, "pointing_per_class",
    "pairs", "pairs_difficult", "skipped_difficult", "energy": mean energy share,
    "area": mean area share, "energy_over_area": mean of the per-pair ratio,
    "pointing_chance", "pointing_difficult_chance", "flat_maps", "pointing_not_flat"}``:
    ``flat_maps`` counts the pairs whose map is flat (:func:`is_flat`: it points at the top-left
    pixel, as TorchRay's argmax would, and scores about the area share as energy); ``pointing_not_flat`` is the game
    over the other pairs only (a sensitivity check for methods with many flat maps); the chance keys
    are what a uniformly random point scores (:func:`pointing_chance` per pair, averaged like the
    game: per class, then over classes). Each of ``extra_tolerances`` ``t`` adds
    ``"pointing@<t>px"`` and ``"pointing_chance@<t>px"`` (all pairs) with that tolerance.
    """
    scorer = LocalisationScorer(num_classes, tolerance, extra_tolerances)
    for maps, target in items:
        scorer.add(maps, target)
    return scorer.result()


def _batches(dataset: Any, limit: Optional[int], batch_size: int, progress: bool):
    """``(samples, targets, present)`` per batch of the first ``limit`` items: the raw ``(image, target)``
    pairs, their boxes/labels/difficult, and each image's 0-based classes present."""
    n = len(dataset) if limit is None else min(int(limit), len(dataset))
    starts = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="localisation", unit="batch")
    for start in starts:
        samples = [dataset[i] for i in range(start, min(start + batch_size, n))]
        targets = [{k: t[k] for k in ("boxes", "labels", "difficult")} for _, t in samples]
        yield samples, targets, [sorted({int(v) - 1 for v in t["labels"]}) for t in targets]


def evaluate_classifier(model: torch.nn.Module, dataset: Any, image_size: int,
                        methods: Sequence[str] = METHODS, module: Optional[str] = None,
                        limit: Optional[int] = None, batch_size: int = 16, tolerance: float = 15,
                        extra_tolerances: Sequence[float] = (), progress: bool = False) -> Dict[str, Dict[str, Any]]:
    """Localisation scores of a trained classifier's maps over a VOC-format split.

    Args:
        model: a classifier (:func:`sca_lib.build_classifier`); ``"attention"`` needs an attention
            module in it.
        dataset: a :class:`sca_lib.data.VOCDetection` with its default transforms (images at their
            own size, boxes, labels, ``difficult``).
        image_size: the classifier's input size; each image is squashed to it and normalised as in
            training (``classification_transforms(image_size, normalize=True)``), its maps upsampled back.
        methods: any of :data:`METHODS`.
        module: which attention module's map (a name from :func:`sca_lib.attention_maps`); default
            the only one, an error when there are several.
        limit: score the first ``limit`` images.
        tolerance, extra_tolerances: the pointing game's (see :func:`localisation_scores`).

    Returns ``{method: localisation_scores(...)}``.
    """
    from .data.transforms import classification_transforms
    from .maps import attention_maps, gradcam_maps

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown localisation methods {unknown}; expected from {', '.join(METHODS)}")
    classes = getattr(dataset, "classes", None)
    num_classes = len(classes) if classes else 20
    prep = classification_transforms(image_size, normalize=True)  # the training pipeline, on a float image
    scorers = {m: LocalisationScorer(num_classes, tolerance, extra_tolerances) for m in methods}
    for samples, targets, present in _batches(dataset, limit, batch_size, progress):
        sizes = [tuple(img.shape[-2:]) for img, _ in samples]
        x = torch.stack([prep(img).as_subclass(torch.Tensor) for img, _ in samples])
        if "attention" in methods:
            maps = attention_maps(model, x, sizes)
            name = _pick_module([k for k, v in maps.items() if v["spatial"] is not None], module)
            for i, t in enumerate(targets):
                scorers["attention"].add({c: maps[name]["spatial"][i] for c in present[i]}, t)
        if "gradcam" in methods:
            cams = gradcam_maps(model, x, present, sizes=sizes)
            for i, t in enumerate(targets):
                scorers["gradcam"].add(cams[i], t)
        if "centre" in methods:
            for i, t in enumerate(targets):
                centre = centre_map(sizes[i])
                scorers["centre"].add({c: centre for c in present[i]}, t)
    return {m: sc.result() for m, sc in scorers.items()}


def _pick_module(names: Sequence[str], module: Optional[str]) -> str:
    if module is None and len(names) != 1:
        raise ValueError(f"the model has {len(names)} attention maps ({list(names)}); pass module=<one of them>")
    name = module if module is not None else names[0]
    if name not in names:
        raise ValueError(f"no spatial map called {name!r}; maps: {list(names)}")
    return name


def evaluate_detector(model: torch.nn.Module, dataset: Any, methods: Sequence[str] = ("attention", "centre"),
                      module: Optional[str] = None, limit: Optional[int] = None, batch_size: int = 4,
                      tolerance: float = 15, extra_tolerances: Sequence[float] = (),
                      progress: bool = False) -> Dict[str, Dict[str, Any]]:
    """Localisation scores of a trained detector's attention maps over a VOC-format split.

    The detector's maps come from :func:`sca_lib.maps.detector_attention_maps` (the image as the
    detector sees it, padding cropped, back in the original pixels); a map is class-agnostic, so it
    is scored under every class of its image. ``methods``: ``"attention"`` and/or ``"centre"``;
    ``module``: which map (a key of ``detector_attention_maps``, e.g. ``"backbone.body.features.12.attn"``
    or an FPN level ``"...attn[0]"``), default the only one. ``dataset``: a
    :class:`sca_lib.data.VOCDetection` with its default transforms (images in [0, 1]).
    Returns ``{method: localisation_scores(...)}``.
    """
    from .maps import detector_attention_maps

    unknown = [m for m in methods if m not in ("attention", "centre")]
    if unknown:
        raise ValueError(f"unknown detector localisation methods {unknown}; expected attention, centre")
    classes = getattr(dataset, "classes", None)
    num_classes = len(classes) if classes else 20
    scorers = {m: LocalisationScorer(num_classes, tolerance, extra_tolerances) for m in methods}
    for samples, targets, present in _batches(dataset, limit, batch_size, progress):
        images = [img.as_subclass(torch.Tensor).float() for img, _ in samples]
        if "attention" in methods:
            maps = detector_attention_maps(model, images)
            name = _pick_module([k for k, v in maps.items() if v["spatial"] is not None], module)
            for i, t in enumerate(targets):
                scorers["attention"].add({c: maps[name]["spatial"][i] for c in present[i]}, t)
        if "centre" in methods:
            for i, t in enumerate(targets):
                centre = centre_map(tuple(images[i].shape[-2:]))
                scorers["centre"].add({c: centre for c in present[i]}, t)
    return {m: sc.result() for m, sc in scorers.items()}
