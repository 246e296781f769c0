"""Attention maps: read what the attention modules of a model computed on a batch.

:func:`record_attention` switches map recording on for every :class:`~sca_lib.attention.DualAttention`
in a model for the duration of a ``with`` block and collects each module's last channel weights
and spatial map by module name. Outside the block nothing is stored.

:func:`attention_maps` runs a classifier on a batch and returns every module's spatial map
upsampled to the images' pixels (bilinear, each cell of the map covering its share of the image, as
the classifiers' squash-resize maps the whole image onto the input), ready for an overlay with the
ground-truth boxes or for :mod:`sca_lib.localisation`.

:func:`gradcam_maps` puts Grad-CAM beside them: the ``grad-cam`` package's (pytorch-grad-cam)
``GradCAM``, one map per positive class of each image (multi-label targets), in the same pixels,
for any classifier with or without attention.
"""

from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .attention import AttentionModule

__all__ = ["record_attention", "attention_maps", "gradcam_maps", "default_cam_layer", "plot_overlays",
           "channel_profiles", "detector_attention_maps"]


@contextlib.contextmanager
def record_attention(model: nn.Module, every_call: bool = False) -> Iterator[Dict[str, object]]:
    """Record the attention maps of every attention module in ``model`` during forwards.

    Every :class:`~sca_lib.attention.AttentionModule` (the article's module and the family in
    :mod:`sca_lib.family`) records ``{"channel": (N, C) or None, "spatial": (N, 1, H, W) or None}``;
    each module's docstring says what its two entries hold.

    Usage::

        with record_attention(model) as maps:
            model(images)
        maps["features.30"]["spatial"]   # (N, 1, H, W)
        maps["features.30"]["channel"]   # (N, C)

    The dict maps each module's name (``""`` when ``model`` itself is the attention module) to its
    last maps; with ``every_call=True``, to the list of the maps of every call in order (a module
    run several times per forward: C13's shared module, once per pyramid level). Recording is
    switched off again on exit; outside the block nothing is stored.
    """
    mods = {n: m for n, m in model.named_modules() if isinstance(m, AttentionModule)}
    if not mods:
        raise ValueError(
            f"record_attention found no attention module in {type(model).__name__}; "
            f"build the model with an attention (e.g. build_classifier(..., attention='dual'))"
        )
    maps: Dict[str, object] = {}
    handles = []
    previous = {n: m.record_maps for n, m in mods.items()}
    for n, m in mods.items():
        m.record_maps = True

        def hook(mod, _inp, _out, _name=n):
            if every_call:
                maps.setdefault(_name, []).append(mod.last_maps)  # type: ignore[union-attr]
            else:
                maps[_name] = mod.last_maps

        handles.append(m.register_forward_hook(hook))
    try:
        yield maps
    finally:
        for h in handles:
            h.remove()
        for n, m in mods.items():
            m.record_maps = previous[n]
            m.last_maps = None


def _batch_sizes(images: torch.Tensor, sizes: Optional[Sequence[Tuple[int, int]]]) -> List[Tuple[int, int]]:
    """Check a classifier's batch ``(N, 3, H, W)``; each image's original ``(height, width)`` (default the input's)."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"images must be one (N, 3, H, W) tensor, got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    n = images.shape[0]
    sizes = [tuple(images.shape[-2:])] * n if sizes is None else [tuple(v) for v in sizes]
    if len(sizes) != n:
        raise ValueError(f"sizes must give one (height, width) per image: {n} images, {len(sizes)} sizes")
    return sizes


@torch.no_grad()
def attention_maps(model: nn.Module, images: torch.Tensor,
                   sizes: Optional[Sequence[Tuple[int, int]]] = None) -> Dict[str, Dict[str, object]]:
    """Every attention module's maps for a classifier's batch, the spatial ones in image pixels.

    Args:
        model: a classifier holding :class:`~sca_lib.attention.DualAttention` modules (run in eval
            mode here; its mode is restored afterwards).
        images: ``(N, 3, H, W)``, the input exactly as the model takes it.
        sizes: each image's original ``(height, width)`` to upsample its map to (default: the
            input's ``(H, W)``); the classifiers' transforms squash the whole image into the input,
            so the map covers the whole original image.

    Returns:
        ``{module name: {"spatial": list of N (h_i, w_i) tensors or None, "channel": (N, C) or
        None, "grid": (h, w) of the module's own map}}``, spatial values the gate's (in [0, 1]).
    """
    sizes = _batch_sizes(images, sizes)
    was_training = model.training
    model.eval()
    try:
        with record_attention(model) as recorded:
            model(images)
    finally:
        model.train(was_training)
    out: Dict[str, Dict[str, object]] = {}
    for name, maps in recorded.items():
        spatial = maps.get("spatial") if maps else None
        resized: Optional[List[torch.Tensor]] = None
        if spatial is not None:
            resized = [F.interpolate(spatial[i:i + 1].float(), size=(int(h), int(w)), mode="bilinear",
                                     align_corners=False)[0, 0] for i, (h, w) in enumerate(sizes)]
        out[name] = {"spatial": resized, "channel": maps.get("channel") if maps else None,
                     "grid": None if spatial is None else tuple(spatial.shape[-2:])}
    return out


@torch.no_grad()
def detector_attention_maps(model: nn.Module, images: Sequence[torch.Tensor]) -> Dict[str, Dict[str, object]]:
    """Every attention module's maps in a torchvision detector, the spatial ones in image pixels.

    The detector's transform resizes each image and pads the batch to a common size; each map is
    upsampled to the padded batch, cropped to the image's resized area (the padding is no part of
    the image) and resized to the original image. ``images``: a list of ``(3, H_i, W_i)`` in
    [0, 1], as the detector takes them.

    Returns ``{name: {"spatial": list of (H_i, W_i) or None, "channel": (N, C) or None, "grid": (h, w)}}``;
    C13's shared module runs once per pyramid level and gets one entry per level,
    ``"<name>[<level>]"`` with torchvision's level names (``"0"`` the finest).
    """
    from .detection import FPNAttention

    if isinstance(images, torch.Tensor) or not len(images) or any(
            not isinstance(im, torch.Tensor) or im.dim() != 3 for im in images):
        raise ValueError("images must be a non-empty list of (3, H, W) tensors, as torchvision's detectors take them")
    if not hasattr(model, "transform"):
        raise ValueError(f"{type(model).__name__} has no .transform: detector_attention_maps reads torchvision "
                         f"detectors (build_detector); use attention_maps for a classifier")
    seen: Dict[str, object] = {}

    def grab(_mod, _inp, out):
        seen["batch"] = out[0]  # ImageList: padded tensors and each image's resized size

    levels = {f"{n}.attn": tuple(reversed(m.levels)) for n, m in model.named_modules()
              if isinstance(m, FPNAttention) and m.shared}
    was_training = model.training
    model.eval()
    handle = model.transform.register_forward_hook(grab)
    try:
        with record_attention(model, every_call=True) as recorded:
            model(list(images))
    finally:
        handle.remove()
        model.train(was_training)
    batch = seen["batch"]
    hp, wp = batch.tensors.shape[-2:]
    out: Dict[str, Dict[str, object]] = {}
    for name, calls in recorded.items():
        labels = levels.get(name)
        for k, maps in enumerate(calls):
            key = name if len(calls) == 1 else f"{name}[{labels[k] if labels and k < len(labels) else f'call {k}'}]"
            spatial = maps.get("spatial") if maps else None
            resized = None
            if spatial is not None:
                full = F.interpolate(spatial.float(), size=(hp, wp), mode="bilinear", align_corners=False)
                resized = [F.interpolate(full[i:i + 1, :, :h, :w], size=tuple(im.shape[-2:]), mode="bilinear",
                                         align_corners=False)[0, 0]
                           for i, ((h, w), im) in enumerate(zip(batch.image_sizes, images))]
            out[key] = {"spatial": resized, "channel": maps.get("channel") if maps else None,
                        "grid": None if spatial is None else tuple(spatial.shape[-2:])}
    return out


def default_cam_layer(model: nn.Module) -> nn.Module:
    """The layer Grad-CAM reads by default: the last block of the convolutional trunk (``layer4[-1]``
    of a ResNet, ``features[-1]`` of a VGG or MobileNetV3), after any attention placed there."""
    if hasattr(model, "layer4"):
        return model.layer4[-1]
    if hasattr(model, "features"):
        return model.features[-1]
    raise ValueError(f"no default Grad-CAM layer for {type(model).__name__} (it has neither layer4 nor features); "
                     f"pass target_layer=<the last convolutional block>")


def gradcam_maps(model: nn.Module, images: torch.Tensor, labels: Union[torch.Tensor, Sequence[Sequence[int]]],
                 target_layer: Optional[nn.Module] = None,
                 sizes: Optional[Sequence[Tuple[int, int]]] = None) -> List[Dict[int, torch.Tensor]]:
    """Grad-CAM (the ``grad-cam`` package) for every positive class of each image of a multi-label batch.

    Args:
        model: a classifier returning ``(N, C)`` logits (run in eval mode here, mode restored).
        images: ``(N, 3, H, W)`` as the model takes them.
        labels: ``(N, C)`` targets (1 = present; 0 or the ignore values absent) or, per image, the
            list of its class indices.
        target_layer: the layer whose activations and gradients make the map (default
            :func:`default_cam_layer`).
        sizes: each image's original ``(height, width)`` (default: the input's ``(H, W)``).

    Returns:
        per image, ``{class index: (h_i, w_i) map}``: ReLU of the gradient-weighted activations,
        scaled to [0, 1] per map by the package, upsampled to the image.
    """
    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError as e:  # pragma: no cover - a dev dependency
        raise ImportError("gradcam_maps needs the grad-cam package: pip install grad-cam") from e
    sizes = _batch_sizes(images, sizes)
    n = images.shape[0]
    if isinstance(labels, torch.Tensor):
        if labels.dim() != 2 or labels.shape[0] != n:
            raise ValueError(f"labels must be (N, C) = ({n}, C) targets or one list of class indices per image, "
                             f"got shape {tuple(labels.shape)}")
        present = [[int(c) for c in torch.nonzero(labels[i] == 1).flatten()] for i in range(n)]
    else:
        present = [[int(c) for c in cls] for cls in labels]
        if len(present) != n:
            raise ValueError(f"labels must give one list of class indices per image: {n} images, {len(present)} lists")
    layer = target_layer if target_layer is not None else default_cam_layer(model)
    out: List[Dict[int, torch.Tensor]] = [dict() for _ in range(n)]
    was_training = model.training
    model.eval()
    try:
        with GradCAM(model=model, target_layers=[layer]) as cam:
            for c in sorted({c for cls in present for c in cls}):
                idx = [i for i in range(n) if c in present[i]]
                maps = cam(input_tensor=images[idx], targets=[ClassifierOutputTarget(c)] * len(idx))
                for j, i in enumerate(idx):
                    m = torch.from_numpy(maps[j]).float()[None, None]
                    out[i][c] = F.interpolate(m, size=tuple(int(v) for v in sizes[i]), mode="bilinear",
                                              align_corners=False)[0, 0]
    finally:
        model.train(was_training)
    return out


def plot_overlays(image: torch.Tensor, maps: Dict[str, torch.Tensor], target: Optional[Dict[str, torch.Tensor]] = None,
                  classes: Optional[Sequence[str]] = None, title: str = "", alpha: float = 0.5, axes=None,
                  colorbar: bool = True):
    """One row of panels: the image, then each map over it, with the ground-truth boxes.

    ``image`` ``(3, H, W)`` in [0, 1]; ``maps`` title -> ``(H, W)`` map in the image's pixels
    (e.g. from :func:`attention_maps` or :func:`gradcam_maps`); ``target`` (optional) holds
    ``boxes`` ``(K, 4)`` xyxy, ``labels`` 1-based and ``difficult``: solid boxes, dashed when
    ``difficult``, named after ``classes``. Each map keeps its own colour scale (shown by a colour
    bar): a gate's values and a CAM's are not on one scale; a flat map (:func:`sca_lib.localisation.is_flat`)
    is named, not drawn. ``axes``: ``1 + len(maps)`` axes to draw
    into (one row of a larger figure; ``title`` then goes to the first panel). ``colorbar=False``
    leaves the colour bars out and prints each map's range in its panel instead. Returns the figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be (3, H, W) in [0, 1], got shape {tuple(image.shape)}")
    h, w = image.shape[-2:]
    for name, m in maps.items():
        if tuple(m.shape) != (h, w):
            raise ValueError(f"map {name!r} has shape {tuple(m.shape)}, the image is {(h, w)}: "
                             f"upsample it to the image first (attention_maps / gradcam_maps do)")
    n = 1 + len(maps)
    own = axes is None
    if own:
        fig, grid = plt.subplots(1, n, figsize=(2.8 * n, 2.9), squeeze=False)
        axes = grid[0]
    else:
        axes = list(axes)
        if len(axes) != n:
            raise ValueError(f"axes must hold {n} panels (the image and {len(maps)} maps), got {len(axes)}")
        fig = axes[0].figure
    rgb = image.permute(1, 2, 0).clamp(0, 1).cpu().numpy()
    for k, ax in enumerate(axes):
        ax.imshow(rgb)
        if k == 0:
            ax.set_title("image" + (" + boxes" if target is not None else ""), fontsize=9)
        else:
            name, m = list(maps.items())[k - 1]
            from .localisation import is_flat

            arr = m.detach().float().cpu().numpy()
            if is_flat(arr):  # no structure to show: a colour scale over float noise would draw stripes
                ax.text(w / 2, h / 2, f"flat map\n(all {arr.max():.3g})", fontsize=8, color="white", ha="center",
                        va="center", bbox=dict(fc="black", alpha=0.6, pad=2, lw=0))
            else:
                im = ax.imshow(arr, cmap="jet", alpha=alpha)
                if colorbar:
                    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).formatter.set_useOffset(False)
                else:
                    ax.text(1, h - 2, f"{arr.min():.3g} to {arr.max():.3g}", fontsize=6, color="white", va="bottom",
                            bbox=dict(fc="black", alpha=0.6, pad=1, lw=0))
            ax.set_title(name, fontsize=9)
        if target is not None:
            difficult = target.get("difficult", torch.zeros(len(target["labels"]), dtype=torch.bool))
            for box, label, hard in zip(target["boxes"].tolist(), target["labels"].tolist(), difficult.tolist()):
                x0, y0, x1, y1 = box
                ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, lw=1.5,
                                       ls="--" if hard else "-", ec="white"))
                if k == 0 and classes is not None:
                    ax.text(x0, y0 - 1, classes[int(label) - 1] + (" (difficult)" if hard else ""),
                            fontsize=7, color="white", va="bottom", bbox=dict(fc="black", alpha=0.5, pad=1, lw=0))
        ax.set_axis_off()
    if title and own:
        fig.suptitle(title, fontsize=10)
    elif title:
        axes[0].set_title(title, fontsize=8)
    if own:
        fig.tight_layout()
    return fig


def channel_profiles(channel_weights: torch.Tensor, labels: torch.Tensor,
                     classes: Optional[Sequence[str]] = None):
    """Which channels each class turns up: the mean channel weight over the images of each class.

    ``channel_weights`` ``(N, C)`` (an attention module's ``"channel"`` from :func:`attention_maps`),
    ``labels`` ``(N, K)`` multi-label targets (1 = present). Returns a DataFrame, one row a class
    and one column a channel, each row minus the mean over all images (so a value says how much
    more, or less, that class turns the channel up than the average image); classes with no image
    are left out. ``seaborn.heatmap(channel_profiles(...), center=0)`` draws it.
    """
    import pandas as pd

    w = channel_weights.detach().float().cpu()
    y = labels.detach().cpu()
    if w.dim() != 2 or y.dim() != 2 or w.shape[0] != y.shape[0]:
        raise ValueError(f"channel_weights must be (N, C) and labels (N, K) for the same N images, got "
                         f"{tuple(w.shape)} and {tuple(y.shape)}")
    names = list(classes) if classes is not None else [str(k) for k in range(y.shape[1])]
    mean = w.mean(0)
    rows = {names[k]: (w[y[:, k] == 1].mean(0) - mean).numpy() for k in range(y.shape[1]) if (y[:, k] == 1).any()}
    return pd.DataFrame.from_dict(rows, orient="index", columns=[f"c{j}" for j in range(w.shape[1])])
