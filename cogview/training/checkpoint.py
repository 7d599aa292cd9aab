"""Training checkpoints that survive kills and resume exactly.

A checkpoint is a folder ``DIR/checkpoints/step_00001234/`` holding the component's
``save_pretrained`` output (``config.json`` + ``model.safetensors``) and ``state.pt`` (optimizer,
step, RNG states, anything else the trainer needs). It is written under a temporary name and
renamed when complete, so a kill during a save leaves the previous checkpoint as the latest.
``state.pt`` is our own file but is still read with ``weights_only=True``.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cogview.serialization import DiskFullError, raise_if_disk_full

log = logging.getLogger(__name__)
STATE_NAME = "state.pt"
_STEP_DIR = re.compile(r"^step_(\d{8})$")


def rng_state() -> dict[str, Any]:
    """Every global RNG a training step may touch (python, numpy, torch CPU, and CUDA once in use)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`; CUDA states are restored when saved and CUDA is available."""
    random.setstate(_to_tuple(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _to_tuple(x: Any) -> Any:
    return tuple(_to_tuple(v) for v in x) if isinstance(x, list | tuple) else x


def checkpoint_dirs(out_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``out_dir/checkpoints``, oldest first."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name))


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    dirs = checkpoint_dirs(out_dir)
    return dirs[-1] if dirs else None


def save_checkpoint(
    out_dir: str | os.PathLike,
    step: int,
    save_model: Callable[[Path], None],
    state: dict[str, Any],
    keep_last: int = 3,
) -> Path:
    """Write a complete checkpoint for ``step`` atomically and prune all but the last ``keep_last``."""
    tmp = begin_checkpoint(out_dir, step)
    try:
        save_model(tmp)
        try:
            torch.save({"step": step, "rng": rng_state(), **state}, tmp / STATE_NAME)
        except (OSError, RuntimeError) as e:
            raise_if_disk_full(e, tmp / STATE_NAME)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed save leaves no half-written folder
        raise
    return commit_checkpoint(out_dir, step, tmp, keep_last)


def begin_checkpoint(out_dir: str | os.PathLike, step: int) -> Path:
    """A fresh temporary folder for the checkpoint of ``step``; :func:`commit_checkpoint` publishes it."""
    root = Path(out_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    _check_room(root)
    tmp = root / f".tmp_step_{step:08d}_{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def _check_room(root: Path) -> None:
    """Refuse to start a save that cannot fit: the new checkpoint is written in full before the
    oldest is pruned, so it needs the size of the last one free on top of those kept."""
    dirs = sorted(root.glob("step_*"))
    if not dirs:
        return  # the first save: nothing to measure it by (a full disk still fails clearly)
    need = sum(f.stat().st_size for f in dirs[-1].rglob("*") if f.is_file())
    free = shutil.disk_usage(root).free
    if free < need * 1.05:
        raise DiskFullError(
            errno.ENOSPC,
            f"not enough free space in {root} for the next checkpoint: it needs about {need / 2**20:.0f} MiB "
            f"(the size of {dirs[-1].name}) and {free / 2**20:.0f} MiB are free. Checkpoints are pruned only "
            "after the new one is saved, so the disk briefly holds keep_last + 1 of them: free some space, "
            "lower keep_last or write to another disk",
        )


def commit_checkpoint(out_dir: str | os.PathLike, step: int, tmp: Path, keep_last: int = 3) -> Path:
    """fsync every file under ``tmp``, rename it to ``step_N`` and prune all but the last ``keep_last``."""
    root = Path(out_dir) / "checkpoints"
    final = root / f"step_{step:08d}"
    for f in sorted(tmp.rglob("*")):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    for d in [p for p in tmp.rglob("*") if p.is_dir()]:
        _fsync_dir(d)
    if final.exists():  # re-saving the same step (e.g. after a resume): replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)  # make the rename itself durable
    for old in checkpoint_dirs(out_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp_step_*"):  # leftovers of killed saves
        shutil.rmtree(stale, ignore_errors=True)
    return final


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_state(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """Read ``state.pt`` safely (tensors and plain containers only)."""
    path = Path(checkpoint) / STATE_NAME
    if not path.is_file():
        raise ValueError(f"{checkpoint} is not a training checkpoint: {STATE_NAME} is missing")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the file is unusable
        raise ValueError(f"{path} could not be read safely ({e}); the checkpoint is damaged") from e
