"""Learning-rate schedule and optimiser parameter groups shared by every trainer.

The schedule is a pure function of the step (linear warmup, then cosine decay to
``min_ratio`` x the peak, SPEC.md 4.3), so resuming needs only the step, not a scheduler object.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def lr_at(step: int, peak: float, warmup: int, total: int, min_ratio: float = 0.1) -> float:
    """Learning rate at ``step`` (0-based): linear warmup to ``peak``, cosine to ``min_ratio * peak`` at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on every weight matrix, conv kernel and embedding table; none on biases and norms.

    SPEC 4.3: the original decays "all weights except biases and LayerNorm parameters", which
    includes the word and position embeddings (the word table is also the tied output head). In
    these models every bias and norm parameter is 1-D and every other parameter is not.
    """
    decay, no_decay = _split(model)
    return [
        {"params": [p for _, p in decay], "weight_decay": weight_decay},
        {"params": [p for _, p in no_decay], "weight_decay": 0.0},
    ]


def param_group_names(model: nn.Module) -> list[str]:
    """Parameter names in the order an optimizer built from :func:`param_groups` numbers them.

    ``optimizer.state_dict()`` keys its state by these positions; the names make it portable
    between wrappings (DDP, FSDP, DeepSpeed) that own the same parameters.
    """
    decay, no_decay = _split(model)
    return [name for name, _ in decay + no_decay]


def _split(model: nn.Module) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append((name, p))
    return decay, no_decay
