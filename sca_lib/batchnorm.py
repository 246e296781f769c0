"""BatchNorm during staged fine-tuning: frozen layers keep their running statistics, and
:func:`recalibrate_batchnorm` re-estimates them exactly when they lag behind the weights."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

__all__ = ["freeze_frozen_bn", "recalibrate_batchnorm"]


def freeze_frozen_bn(model: nn.Module) -> None:
    """Put BatchNorm layers whose affine parameters are frozen in eval mode (running stats fixed)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if _is_frozen(m):
                m.eval()


def _is_frozen(bn: nn.Module) -> bool:
    params = list(bn.parameters(recurse=False))
    return bool(params) and not any(p.requires_grad for p in params)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, dataset: Dataset, batch_size: int = 64,
                          max_batches: Optional[int] = None, device: Optional[torch.device] = None) -> int:
    """Recompute every BatchNorm's running mean/var as the exact average over ``dataset``.

    torchvision's MobileNetV3 uses BatchNorm momentum 0.01, so after a short training from scratch
    the running statistics still lag far behind the weights and eval-mode predictions can collapse
    to chance. One pass with
    ``momentum=None`` (cumulative average) over the training images fixes that. Returns the number
    of batches used. Items are ``(image, ...)``; only images are used.

    BatchNorm layers whose parameters are frozen (``requires_grad=False``, e.g. by
    ``sca_lib.groups.set_trainable``) keep their statistics: they belong to the frozen pretrained
    network, and ``set_trainable`` keeps them in eval mode, where they could not be re-estimated.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and not _is_frozen(m)]
    if not bns:
        return 0
    device = device or next(model.parameters()).device
    saved = [(m, m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    was = model.training
    model.train()
    n = 0
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            x = batch[0] if isinstance(batch, (list, tuple)) else batch
            model(x.to(device))
            n += 1
            if max_batches is not None and n >= max_batches:
                break
    finally:
        for m, mom, tr in saved:
            m.momentum = mom
        model.train(was)
    return n


