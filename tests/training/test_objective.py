"""The training objective: SPEC 4.2's weighted next-token cross-entropy, image and text parts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cogview.training.objective import loss_weights, next_token_loss


def example() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=g)
    targets = torch.randint(0, 11, (2, 5), generator=g)
    loss_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.float32)
    text_mask = torch.tensor([[1, 1, 0, 0, 0], [1, 0, 0, 0, 1]], dtype=torch.bool)
    return logits, targets, loss_mask, text_mask


def test_loss_is_the_weighted_mean_of_cross_entropy() -> None:
    logits, targets, loss_mask, text_mask = example()
    ce = F.cross_entropy(logits.reshape(10, 11), targets.reshape(10), reduction="none").view(2, 5)
    for s in (0.0, 1.0, 5.0):
        w = loss_mask * torch.where(text_mask, s, 1.0)
        out = next_token_loss(logits, targets, loss_mask, text_mask, text_loss_weight=s)
        assert out.loss.item() == pytest.approx(float((w * ce).sum() / w.sum()), rel=1e-6)
    # weight 1 is the plain mean over unmasked targets
    plain = next_token_loss(logits, targets, loss_mask, text_mask).loss
    assert plain.item() == pytest.approx(float(ce[loss_mask.bool()].mean()), rel=1e-6)
    # image and text parts: means over unmasked positions of each kind, whatever the weight
    out = next_token_loss(logits, targets, loss_mask, text_mask, text_loss_weight=5.0)
    image = loss_mask.bool() & ~text_mask
    text = loss_mask.bool() & text_mask
    assert int(out.image_count) == int(image.sum()) == 5 and int(out.text_count) == int(text.sum()) == 3
    assert float(out.image_sum / out.image_count) == pytest.approx(float(ce[image].mean()), rel=1e-6)
    assert float(out.text_sum / out.text_count) == pytest.approx(float(ce[text].mean()), rel=1e-6)


def test_text_loss_weight_changes_the_loss_and_its_gradient() -> None:
    logits, targets, loss_mask, text_mask = example()
    logits.requires_grad_(True)
    out0 = next_token_loss(logits, targets, loss_mask, text_mask, text_loss_weight=0.0)
    (grad0,) = torch.autograd.grad(out0.loss, logits)
    assert torch.all(grad0[text_mask] == 0) and grad0[~text_mask & loss_mask.bool()].abs().sum() > 0
    out5 = next_token_loss(logits, targets, loss_mask, text_mask, text_loss_weight=5.0)
    assert out5.loss.item() != pytest.approx(out0.loss.item())
    (grad_masked,) = torch.autograd.grad(out5.loss, logits)
    assert torch.all(grad_masked[~loss_mask.bool()] == 0)  # padding never contributes


def test_normalizer_makes_micro_batch_losses_add_up() -> None:
    logits, targets, loss_mask, text_mask = example()
    total = loss_weights(loss_mask, text_mask, 2.0).sum()
    parts = [
        next_token_loss(
            logits[i : i + 1], targets[i : i + 1], loss_mask[i : i + 1], text_mask[i : i + 1], 2.0, total
        )
        for i in range(2)
    ]
    whole = next_token_loss(logits, targets, loss_mask, text_mask, 2.0)
    assert float(sum(p.loss for p in parts)) == pytest.approx(whole.loss.item(), rel=1e-6)


def test_fp32_cross_entropy_from_half_logits_and_shape_errors() -> None:
    logits, targets, loss_mask, text_mask = example()
    out = next_token_loss(logits.bfloat16(), targets, loss_mask, text_mask)
    assert out.loss.dtype == torch.float32 and math.isfinite(out.loss.item())
    empty = next_token_loss(logits, targets, torch.zeros_like(loss_mask), text_mask)
    assert empty.loss.item() == 0.0  # no counted tokens: zero, not NaN
    with pytest.raises(ValueError, match="shape mismatch"):
        next_token_loss(logits, targets[:, :4], loss_mask, text_mask)
