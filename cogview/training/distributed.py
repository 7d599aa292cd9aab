"""The process environment of a training run and its collectives: who am I, init/teardown, sums.

A run with ``strategy`` other than ``"none"`` is started by ``torchrun`` (which sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous); :func:`setup` joins the group with NCCL on
CUDA and gloo on CPU. Every helper is a no-op on one process, so the training loop calls them
unconditionally. The replica around the model is built in :mod:`cogview.training.strategies`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

_LAUNCH_HINT = (
    "launch it with torchrun, e.g. `torchrun --nproc_per_node 2 -m cogview train --config CFG "
    "--out OUT --strategy ddp` (docs/scaling.md), or use strategy none for one process"
)


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: its rank, the world size, its device, and who owns the group."""

    strategy: str
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False  # True when setup() created the process group (teardown destroys it)

    @property
    def distributed(self) -> bool:
        return self.strategy != "none"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; each process of a group takes ``cuda:local_rank``."""
    if name == "auto":
        return resolve_device("cuda" if torch.cuda.is_available() else "cpu", local_rank)
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but no CUDA device is available; use device=cpu or auto")
    if name == "cuda" and local_rank is not None:
        return torch.device("cuda", local_rank)
    return torch.device(name)


def setup(strategy: str, device: str) -> DistEnv:
    """Join (or reuse) the process group for ``strategy``; strategy ``"none"`` is one plain process.

    The backend follows the device: NCCL for CUDA, gloo for CPU. A group that already exists
    (e.g. created by a test harness or another library) is reused and left open by :func:`teardown`.
    """
    if strategy == "none":
        return DistEnv("none", 0, 1, 0, resolve_device(device))
    if not dist.is_available():
        raise ValueError(f"strategy {strategy!r} needs torch.distributed, which this torch build lacks")
    owns = False
    if not dist.is_initialized():
        missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise ValueError(
                f"strategy {strategy!r} runs one process per device ({missing} unset): {_LAUNCH_HINT}"
            )
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(minutes=30))
        owns = True
    env = DistEnv(strategy, dist.get_rank(), dist.get_world_size(), local_rank, dev, owns)
    log.info("rank %d of %d on %s (%s, %s)", env.rank, env.world_size, dev, strategy, dist.get_backend())
    return env


def teardown(env: DistEnv) -> None:
    """Destroy the process group if :func:`setup` created it."""
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


# --- collectives (no-ops on one process) --------------------------------------------------------


def all_reduce_sum(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum ``t`` over the ranks (in place, also returned)."""
    if env.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def broadcast_object(obj: Any, env: DistEnv) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def rank_seed(seed: int, step: int, rank: int) -> int:
    """The dropout seed of ``rank`` from ``step`` on: distinct per rank, a pure function of the three."""
    return int(np.random.SeedSequence([seed, step, rank, 0xD15]).generate_state(1)[0])


class RankZeroFilter(logging.Filter):
    """Keeps the log to rank 0: other ranks pass only errors (added by the CLI, not by the library)."""

    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        return self.rank == 0 or record.levelno >= logging.ERROR


def launched_rank() -> int:
    """The rank torchrun gave this process (0 when not launched by torchrun)."""
    return int(os.environ.get("RANK", 0))


__all__ = [
    "DistEnv",
    "RankZeroFilter",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "gather_objects",
    "launched_rank",
    "rank_seed",
    "resolve_device",
    "setup",
    "teardown",
]
