"""Attention maps: read what the attention modules of a model computed on a batch.

:func:`record_attention` switches map recording on for every :class:`~sca_lib.attention.DualAttention`
in a model for the duration of a ``with`` block and collects each module's last channel weights
and spatial map by module name. Outside the block nothing is stored.

:func:`attention_maps` runs a classifier on a batch and returns every module's spatial map
upsampled to the images' pixels (bilinear, each cell of the map covering its share of the image, as
the classifiers' squash-resize maps the whole image onto the input), ready for an overlay with the
ground-truth boxes or for :mod:`sca_lib.localisation`.
"""

from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .attention import DualAttention

__all__ = ["record_attention", "attention_maps"]


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
