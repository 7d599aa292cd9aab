"""Sharded training checkpoints that outlive the cluster, and their consolidation for inference.

Under a distributed strategy every rank writes its part of the weights and AdamW state with
``torch.distributed.checkpoint`` (DCP) into ``step_N/dcp/``, keyed by parameter name; rank 0
adds ``state.pt`` (step, config, data identity, metric sums, every rank's RNG state),
``config.json`` and ``cogview.json``. DCP records each tensor's global shape and every shard's
place in it, so the same folder loads at any world size, under any strategy, and in one plain
process (``strategy: none``). The folder is written under a temporary name and renamed by rank 0
once all ranks are done, like the single-process checkpoints (cogview.training.checkpoint).
:func:`consolidate` turns a checkpoint into a ``config.json`` + ``model.safetensors`` folder.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from cogview.model import CogViewTransformer, TransformerConfig
from cogview.serialization import (
    CONFIG_NAME,
    MODEL_INFO_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    read_json,
    write_json,
)
from cogview.training.checkpoint import (
    STATE_NAME,
    begin_checkpoint,
    commit_checkpoint,
    rng_state,
)
from cogview.training.dcp_reader import SafeFileSystemReader, SafeLoadPlanner, load_metadata
from cogview.training.distributed import DistEnv, barrier, broadcast_object, gather_objects

log = logging.getLogger(__name__)
DCP_DIR = "dcp"


def is_sharded(checkpoint: str | os.PathLike) -> bool:
    """True for a checkpoint written by a distributed strategy (its tensors are in ``dcp/``)."""
    return (Path(checkpoint) / DCP_DIR).is_dir()


def read_sharded(checkpoint: str | os.PathLike, state_dict: dict[str, Any]) -> None:
    """Fill ``state_dict`` in place from ``checkpoint/dcp`` (resharding to the tensors' layout).

    Every key asked for must be in the checkpoint. Collective when a process group exists;
    a plain single-process read otherwise. The files are read without running code from them
    (:mod:`cogview.training.dcp_reader`): a shared checkpoint is untrusted input.
    """
    path = Path(checkpoint) / DCP_DIR
    if not (path / ".metadata").is_file():
        raise CheckpointError(f"{path} is not a complete sharded checkpoint (.metadata is missing)")
    load_metadata(path / ".metadata")  # refused here, before torch's reader sees the file
    with warnings.catch_warnings():  # a single-process read is intended here, not a mistake
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        try:
            dcp.load(
                state_dict,
                storage_reader=SafeFileSystemReader(path),
                planner=SafeLoadPlanner(),
                no_dist=not dist.is_initialized(),
            )
        except CheckpointException as e:
            ours = [f[0] for f in e.failures.values() if isinstance(f[0], CheckpointError)]
            if ours:
                raise ours[0] from None
            raise


def save_sharded(
    out_dir: str | os.PathLike,
    step: int,
    tensors: Callable[[], dict[str, Any]],
    write_meta: Callable[[Path], None],
    state: dict[str, Any],
    keep_last: int,
    env: DistEnv,
) -> Path:
    """Write the checkpoint of ``step`` from all ranks; collective.

    Args:
        tensors: returns this rank's ``{"model": ..., "optim": ...}`` (called on every rank).
        write_meta: writes ``config.json`` and ``cogview.json`` into the folder (rank 0).
        state: the rest of the training state, written by rank 0 to ``state.pt``.
    """
    tmp = broadcast_object(begin_checkpoint(out_dir, step) if env.is_main else None, env)
    dcp.save(tensors(), checkpoint_id=tmp / DCP_DIR)
    rngs = [_from_bytes(b) for b in gather_objects(_to_bytes(rng_state()), env)]
    final = Path(out_dir) / "checkpoints" / f"step_{step:08d}"
    if env.is_main:
        write_meta(tmp)
        full_state = {"step": step, "rng": rngs[0], "rank_rngs": rngs, "world_size": env.world_size, **state}
        torch.save(full_state, tmp / STATE_NAME)
        final = commit_checkpoint(out_dir, step, tmp, keep_last)
    barrier(env)  # nobody goes on (or reads it) before the rename
    return final


def _to_bytes(obj: Any) -> bytes:
    # Tensors go through torch.save: all_gather_object cannot unpickle tensor storages in torch 2.13.
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _from_bytes(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), weights_only=True)


def consolidate(checkpoint: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """A checkpoint (sharded or not) -> ``config.json`` + ``model.safetensors`` (+ ``cogview.json``).

    The output loads with :meth:`CogViewTransformer.from_pretrained` and, with ``cogview.json``,
    with ``CogViewPipeline.from_components``. Needs the full weights in CPU memory once (4 bytes
    per parameter: 15.7 GB for cogview-4b).
    """
    ckpt, out = Path(checkpoint), Path(out_dir)
    if not (ckpt / CONFIG_NAME).is_file():
        raise ValueError(
            f"{ckpt} is not a training checkpoint (no {CONFIG_NAME}); pass OUT/checkpoints/step_N"
        )
    if is_sharded(ckpt):
        config = TransformerConfig.from_dict(read_json(ckpt / CONFIG_NAME))
        with torch.device("meta"):
            model = CogViewTransformer(config)
        model = model.to_empty(device="cpu")
        weights = model.state_dict()
        read_sharded(ckpt, {"model": weights})
        model.load_state_dict(weights, strict=True)
    elif (ckpt / WEIGHTS_NAME).is_file():
        model = CogViewTransformer.from_pretrained(ckpt)
    else:
        raise ValueError(f"{ckpt} holds neither {DCP_DIR}/ nor {WEIGHTS_NAME}; is it a training checkpoint?")
    if out.resolve() == ckpt.resolve():
        raise ValueError("--out must be a new folder, not the checkpoint itself")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    if (ckpt / MODEL_INFO_NAME).is_file():
        write_json(out / MODEL_INFO_NAME, read_json(ckpt / MODEL_INFO_NAME))
    log.info("consolidated %s (%s parameters) into %s", ckpt, f"{model.num_parameters():,}", out)
    return out


__all__ = ["DCP_DIR", "consolidate", "is_sharded", "read_sharded", "save_sharded"]
