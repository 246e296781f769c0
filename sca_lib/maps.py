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

from .attention import DualAttention

__all__ = ["record_attention", "attention_maps", "gradcam_maps", "default_cam_layer"]


@contextlib.contextmanager
def record_attention(model: nn.Module) -> Iterator[Dict[str, Dict[str, Optional[torch.Tensor]]]]:
    """Record the attention maps of every :class:`DualAttention` in ``model`` during forwards.

    Usage::

        with record_attention(model) as maps:
            model(images)
        maps["features.30"]["spatial"]   # (N, 1, H, W)
        maps["features.30"]["channel"]   # (N, C)

    The dict maps each module's name (``""`` when ``model`` itself is the attention module) to its
    last maps. Recording is switched off again on exit; outside the block nothing is stored.
    """
    mods = {n: m for n, m in model.named_modules() if isinstance(m, DualAttention)}
    if not mods:
        raise ValueError(
            f"record_attention found no DualAttention module in {type(model).__name__}; "
            f"build the model with an attention (e.g. build_classifier(..., attention='dual'))"
        )
    maps: Dict[str, Dict[str, Optional[torch.Tensor]]] = {}
    handles = []
    previous = {n: m.record_maps for n, m in mods.items()}
    for n, m in mods.items():
        m.record_maps = True

        def hook(mod, _inp, _out, _name=n):
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
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"images must be one (N, 3, H, W) tensor, got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    n = images.shape[0]
    if sizes is None:
        sizes = [tuple(images.shape[-2:])] * n
    if len(sizes) != n:
        raise ValueError(f"sizes must give one (height, width) per image: {n} images, {len(sizes)} sizes")
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
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"images must be one (N, 3, H, W) tensor, got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
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
    sizes = [tuple(images.shape[-2:])] * n if sizes is None else list(sizes)
    if len(sizes) != n:
        raise ValueError(f"sizes must give one (height, width) per image: {n} images, {len(sizes)} sizes")
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
