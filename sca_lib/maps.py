"""Attention maps: read what the attention modules of a model computed on a batch.

:func:`record_attention` switches map recording on for every :class:`~sca_lib.attention.DualAttention`
in a model for the duration of a ``with`` block and collects each module's last channel weights
and spatial map by module name. Outside the block nothing is stored.
"""

from __future__ import annotations

import contextlib
from typing import Dict, Iterator, Optional

import torch
from torch import nn

from .attention import DualAttention

__all__ = ["record_attention"]


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
