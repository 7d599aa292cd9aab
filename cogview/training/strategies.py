"""The replica a run trains: the strategy's wrapper around the model, with its optimizer.

:func:`build_replica` is the one place that turns ``strategy`` into a replica: the plain model
(``none``), DDP or FSDP2 (:mod:`cogview.training.parallel`) or DeepSpeed ZeRO
(:mod:`cogview.training.deepspeed_replica`). :func:`checkpoint_activations` trades compute for
memory on the model before any strategy wraps it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cogview.training.config import TrainConfig
from cogview.training.deepspeed_replica import DeepSpeedReplica
from cogview.training.distributed import DistEnv
from cogview.training.parallel import DataParallel, FullyShardedParallel, Local

REPLICAS: dict[str, type[Local]] = {
    "none": Local,
    "ddp": DataParallel,
    "fsdp": FullyShardedParallel,
    "deepspeed": DeepSpeedReplica,
}


def checkpoint_activations(module: torch.nn.Module) -> None:
    """Recompute each block's activations in the backward pass instead of keeping them.

    Composable activation checkpointing: the parameter names (and so the checkpoints) stay the
    same. It must come before the strategy wraps the blocks (``fully_shard``, DDP, DeepSpeed).
    """
    from torch.distributed._composable import checkpoint as recompute_in_backward

    for block in module.layers:
        recompute_in_backward(block)


def build_replica(
    module: torch.nn.Module,
    cfg: TrainConfig,
    env: DistEnv,
    on_model: Callable[[torch.nn.Module], None] | None = None,
    checkpoint: Path | None = None,
    state: dict[str, Any] | None = None,
) -> Local:
    """The replica of ``cfg.strategy`` around ``module``, with its optimizer.

    ``batch_size`` is the global micro-batch and must split evenly over the ranks. With
    ``checkpoint`` (and its ``state.pt`` contents ``state``) the replica resumes from it.
    """
    if cfg.batch_size % env.world_size:
        raise ValueError(
            f"batch_size={cfg.batch_size} is the global micro-batch and must be a multiple of the "
            f"{env.world_size} processes; set batch_size to a multiple of {env.world_size}"
        )
    if cfg.activation_checkpointing:
        checkpoint_activations(module)
    return REPLICAS[cfg.strategy](module, cfg, env, on_model, checkpoint, state)


__all__ = ["REPLICAS", "build_replica", "checkpoint_activations"]
