"""Losses for the classifiers: multi-label BCE that respects VOC's ignore mask, and the single-label
cross-entropy used to pre-train the stand-in backbone on the synthetic source set."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

__all__ = ["masked_bce_with_logits", "single_label_cross_entropy"]


def masked_bce_with_logits(
    logits: torch.Tensor, targets: torch.Tensor, ignore: Optional[torch.Tensor] = None,
    reduction: str = "sum_per_image",
) -> torch.Tensor:
    """Multi-label BCE-with-logits over the labels that are not ignored.

    Args:
        logits: (N, C) raw scores.
        targets: (N, C) 1 = positive, 0 = negative.
        ignore: (N, C) bool, True for difficult-only labels (they add nothing to the loss).
        reduction: ``"sum_per_image"`` (default): summed over an image's labels, averaged over
            images, i.e. C times the element mean. With the element mean (``"mean"``) each class
            logit gets 1/C of the gradient. Summing is a common multi-label convention, but with it
            C7's clip at norm 2.0 sets most steps' length (notebook 05, section 3b); the cpu
            protocol therefore uses ``"mean"``, where the clip stays a guard.

    Returns:
        scalar loss (fp32).
    """
    if reduction not in ("sum_per_image", "mean"):
        raise ValueError(f"reduction must be 'sum_per_image' or 'mean', got {reduction!r}")
    if logits.shape != targets.shape:
        raise ValueError(
            f"masked_bce_with_logits: logits {tuple(logits.shape)} and targets {tuple(targets.shape)} "
            f"differ; the model's head must output one logit per class"
        )
    loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
    keep = torch.ones_like(loss) if ignore is None else (~ignore.bool()).float()
    if reduction == "mean":
        return (loss * keep).sum() / keep.sum().clamp_min(1.0)
    return (loss * keep).sum() / max(loss.shape[0], 1)


def single_label_cross_entropy(logits: torch.Tensor, targets: torch.Tensor,
                               ignore: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Softmax cross-entropy for the single-label source set: (N, C) logits, (N, C) one-hot targets.

    Images without a (non-ignored) positive label (their object is "difficult") are left out.
    """
    pos = targets > 0.5
    if ignore is not None:
        pos = pos & ~ignore.bool()
    keep = pos.any(dim=1)
    if not bool(keep.any()):
        return logits.float().sum() * 0.0
    return nn.functional.cross_entropy(logits[keep].float(), pos[keep].float().argmax(dim=1))
