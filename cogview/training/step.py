"""One optimizer step: forward and backward over the step's micro-batches, clip, then update.

:func:`train_step` divides the loss by the summed loss weight of the whole step (every
micro-batch on every rank), so any ``grad_accum`` and world size give the gradient of one big
batch; a NaN/inf loss or gradient skips the step on every rank (SPEC 4.2), and the
:class:`StepResult` says why. The run around it is :mod:`cogview.training.loop`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from cogview.training.batches import Batch
from cogview.training.objective import loss_weights, next_token_loss
from cogview.training.parallel import Local

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class StepResult:
    """What one optimizer step did; sums are over its micro-batches (see :func:`next_token_loss`)."""

    loss: float
    image_sum: float
    image_count: int
    text_sum: float
    text_count: int
    grad_norm: float
    tokens: int
    skipped: str | None = None  # why the step was skipped (NaN/inf), None if it was taken


@contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """Autocast to bf16/fp16 for ``precision`` (SPEC 4.4 uses fp16); fp32 runs as is."""
    if precision == "fp32":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=_AUTOCAST_DTYPES[precision]):
        yield


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: list[Batch],
    *,
    text_loss_weight: float = 1.0,
    grad_clip: float = 0.0,
    precision: str = "fp32",
    scaler: torch.amp.GradScaler | None = None,
    replica: Local | None = None,
) -> StepResult:
    """Forward/backward every micro-batch, clip, and step, unless a loss or gradient is NaN/inf.

    The loss of each micro-batch is divided by the summed loss weight of the whole step, so
    ``grad_accum`` micro-batches of ``b`` rows give the gradient of one batch of ``grad_accum * b``.
    A skipped step leaves parameters and optimizer state untouched (a ``scaler`` still lowers
    its scale on overflow, as dynamic loss scaling does).

    ``replica`` (cogview.training.parallel) is the data-parallel wrapper of ``model`` and
    ``optimizer``; ``batches`` are then this rank's blocks, the normaliser and the returned sums
    cover all ranks, and a NaN/inf loss skips the step on every rank together.
    """
    rep = replica if replica is not None else Local.of(model, optimizer)
    config = rep.module.config  # super-resolution models of ours take cell inputs
    uses_cells, uses_sources = config.cell_embeddings > 0, config.cell_sources
    device = next(model.parameters()).device
    batches = [b.to(device) for b in batches]
    total_weight = rep.all_reduce(
        sum(loss_weights(b.loss_mask, b.text_mask, text_loss_weight).sum() for b in batches)
    )
    tokens = sum(b.n_tokens for b in batches) * rep.env.world_size
    rep.zero_grad()
    loss = torch.zeros((), device=device)
    sums = torch.zeros(4, device=device)  # image_sum, image_count, text_sum, text_count
    for i, b in enumerate(batches):
        with rep.accumulating(last=i == len(batches) - 1):
            with autocast(device, precision):
                logits = model(
                    b.inputs,
                    b.positions,
                    cells=b.cells if uses_cells else None,
                    sources=b.sources if uses_sources else None,
                )  # [B, T, V]
            out = next_token_loss(logits, b.targets, b.loss_mask, b.text_mask, text_loss_weight, total_weight)
            if not rep.distributed and not torch.isfinite(out.loss):  # ranks must all run the backward
                rep.zero_grad()
                return StepResult(
                    float(out.loss.detach()), math.nan, 0, math.nan, 0, math.nan, tokens, "non-finite loss"
                )
            rep.backward(out.loss, scaler)
        loss += out.loss.detach()
        sums += torch.stack([out.image_sum, out.image_count, out.text_sum, out.text_count]).float()
    if rep.distributed:
        totals = rep.all_reduce(torch.cat([loss.view(1), sums]))  # [5]
        loss, sums = totals[0], totals[1:]
    grad_norm = rep.clip_grad_norm(grad_clip, scaler)
    finite = bool(torch.isfinite(grad_norm))
    loss_finite = bool(torch.isfinite(loss))
    rep.step(scaler, finite and loss_finite)
    if not loss_finite:
        rep.zero_grad()
        return StepResult(float(loss), math.nan, 0, math.nan, 0, math.nan, tokens, "non-finite loss")
    image_sum, image_count, text_sum, text_count = sums.tolist()
    return StepResult(
        loss=float(loss),
        image_sum=image_sum,
        image_count=int(image_count),
        text_sum=text_sum,
        text_count=int(text_count),
        grad_norm=float(grad_norm),
        tokens=tokens,
        skipped=None if finite else "non-finite gradient",
    )


__all__ = ["StepResult", "autocast", "train_step"]
