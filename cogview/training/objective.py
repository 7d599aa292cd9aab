"""The training objective: weighted next-token cross-entropy (SPEC 4.2), as pure functions.

Each target position i gets a weight ``w_i = loss_mask_i * (s if text_i else 1)``, where a
position is "text" when its *input* token is a text piece or command token and ``s`` is the
text-loss weight (the original's ``--txt-loss-scale``). The loss is ``sum(w * CE) / sum(w)`` with
CE computed in fp32 over the full logits. The normaliser can be passed in, so that gradient
accumulation over micro-batches divides by the weight of the whole optimizer step and equals one
big batch. Image and text losses are returned as sums and counts, to be averaged over any span.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def loss_weights(
    loss_mask: torch.Tensor, text_mask: torch.Tensor, text_loss_weight: float = 1.0
) -> torch.Tensor:
    """Per-target weights ``[B, T]``: ``loss_mask * (text_loss_weight if text else 1)`` (SPEC 4.2)."""
    scale = torch.where(text_mask, text_loss_weight, 1.0)  # [B, T]
    return loss_mask.float() * scale


@dataclass(frozen=True)
class LossOutput:
    """The differentiable loss and detached per-kind sums for logging."""

    loss: torch.Tensor  # scalar: sum(w * CE) / normaliser
    image_sum: torch.Tensor  # sum of CE over unmasked positions whose input is an image code
    image_count: torch.Tensor
    text_sum: torch.Tensor  # sum of CE over unmasked positions whose input is text or a command
    text_count: torch.Tensor


def next_token_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    loss_mask: torch.Tensor,
    text_mask: torch.Tensor,
    text_loss_weight: float = 1.0,
    normalizer: torch.Tensor | float | None = None,
) -> LossOutput:
    """Weighted cross-entropy of ``logits`` ``[B, T, V]`` against ``targets`` ``[B, T]`` (SPEC 4.2).

    Args:
        loss_mask: ``[B, T]``, 1 where the target counts (not padding), 0 elsewhere.
        text_mask: ``[B, T]`` bool, True where the *input* token is text or a command token.
        normalizer: divide ``sum(w * CE)`` by this instead of ``sum(w)`` (e.g. the summed weight
            of all micro-batches of one step). A zero total weight gives a zero loss.
    """
    if (
        logits.shape[:2] != targets.shape
        or targets.shape != loss_mask.shape
        or text_mask.shape != targets.shape
    ):
        raise ValueError(
            f"shape mismatch: logits {tuple(logits.shape)}, targets {tuple(targets.shape)}, "
            f"loss_mask {tuple(loss_mask.shape)}, text_mask {tuple(text_mask.shape)}; "
            "expected [B, T, V] and three [B, T]"
        )
    B, T, V = logits.shape
    # fp32 cross-entropy even under autocast: the softmax over the full vocabulary is where
    # half precision loses the most (SPEC 4.2 computes it in fp32 too).
    ce = F.cross_entropy(logits.float().reshape(B * T, V), targets.reshape(B * T), reduction="none")
    ce = ce.view(B, T)  # [B, T]
    weights = loss_weights(loss_mask, text_mask, text_loss_weight)  # [B, T]
    total = weights.sum() if normalizer is None else torch.as_tensor(normalizer, dtype=torch.float32)
    loss = (weights * ce).sum() / total.clamp_min(torch.finfo(torch.float32).tiny)
    with torch.no_grad():
        mask = loss_mask > 0
        is_text = mask & text_mask
        is_image = mask & ~text_mask
        return LossOutput(
            loss=loss,
            image_sum=ce.masked_fill(~is_image, 0.0).sum(),
            image_count=is_image.sum(),
            text_sum=ce.masked_fill(~is_text, 0.0).sum(),
            text_count=is_text.sum(),
        )


__all__ = ["LossOutput", "loss_weights", "next_token_loss"]
