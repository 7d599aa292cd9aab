"""Safe, atomic reading and writing of model folders (``config.json`` + ``model.safetensors``).

Every component (image tokenizer, transformer, ...) saves through these helpers so that a
kill in the middle of a save never destroys the last good file (write to a temporary file in
the same folder, fsync, then ``os.replace``), and so that a truncated, foreign or mismatched
file is refused with a message that names what is wrong instead of a bare traceback.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# Written by training next to a transformer's config.json + weights: the vocabulary, tokenizer
# fingerprints, tasks and sequence length it was trained with (read by CogViewPipeline.from_components).
MODEL_INFO_NAME = "cogview.json"


class CheckpointError(ValueError):
    """A model folder or weights file that cannot be used, with the reason in the message."""


class DiskFullError(OSError):
    """A save that found (or would find) no room on the disk; nothing was replaced."""


def raise_if_disk_full(error: BaseException, path: str | os.PathLike) -> None:
    """Re-raise a write failure that means "no space left" (ENOSPC, or safetensors' or torch's
    wording of it) as a :class:`DiskFullError` naming the file and the free space."""
    message = str(error)
    if getattr(error, "errno", None) == errno.ENOSPC or "No space left" in message or "disk full" in message:
        try:
            free = f"{shutil.disk_usage(Path(path).parent).free / 2**20:.0f} MiB free"
        except OSError:
            free = "free space unknown"
        raise DiskFullError(
            errno.ENOSPC,
            f"no space left on the device to write {path} ({free}); the previous file is untouched",
        ) from error


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` and then move the temporary file onto ``path`` atomically.

    The temporary file sits in the destination folder so that ``os.replace`` is a rename on
    one file system; a crash before the rename leaves the old file untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        try:
            write(tmp)
        except (OSError, SafetensorError, RuntimeError) as e:
            raise_if_disk_full(e, path)
            raise
        # mkstemp creates 0600 and some writers (safetensors) replace the file: make it readable
        # like any other saved file, after writing
        os.chmod(tmp, 0o644)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` as UTF-8 JSON, atomically; indented unless ``indent`` is None (big tables)."""

    def _write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=indent, ensure_ascii=False, sort_keys=True)
            f.write("\n")

    atomic_write(path, _write)


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON object, turning a missing or malformed file into a :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; expected a model folder with {CONFIG_NAME}")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); the file is damaged") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} must hold a JSON object, found {type(obj).__name__}")
    return obj


def save_weights(
    path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Save tensors as safetensors, atomically (contiguous, detached CPU copies)."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata or {}))


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a safetensors file; a truncated or non-safetensors file raises :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({e}); it may be truncated or in another format"
        ) from e


def check_state_dict(
    expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor], source: str, limit: int = 5
) -> None:
    """Raise :class:`CheckpointError` naming the first missing, unexpected and mis-shaped keys."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [
        f"{k}: file {tuple(found[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in found and tuple(found[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s), e.g. {missing[:limit]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:limit]}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es), e.g. {shapes[:limit]}")
    if problems:
        raise CheckpointError(f"{source} does not match the model: " + "; ".join(problems))


def load_into(module: torch.nn.Module, path: str | os.PathLike, *, buffers: bool = True) -> None:
    """Strictly load safetensors weights into ``module`` (keys and shapes checked first).

    Works for modules built on the meta device: tensors are assigned, not copied.
    """
    assign_weights(module, load_weights(path), str(path))


def assign_weights(module: torch.nn.Module, found: Mapping[str, torch.Tensor], source: str) -> None:
    """Strictly load ``found`` into ``module`` (keys and shapes checked first against ``source``)."""
    expected = module.state_dict()
    check_state_dict(expected, found, source)
    on_meta = any(t.is_meta for t in expected.values())
    found = {
        k: v.to(expected[k].dtype) if expected[k].dtype.is_floating_point else v for k, v in found.items()
    }
    module.load_state_dict(found, strict=True, assign=on_meta)


# --- a folder's weights: one file, or shards and an index ----------------------------------------

INDEX_NAME = "model.safetensors.index.json"
# model-00001-of-00003-<8 hex of the saved tensors' hash>.safetensors: a new save never writes
# over a file the current index names, so a kill at any point leaves one complete set indexed.
_SHARD_NAME = re.compile(r"model-(\d{5})-of-(\d{5})(-[0-9a-f]{8})?\.safetensors")


def save_folder_weights(
    directory: str | os.PathLike,
    state_dict: Mapping[str, torch.Tensor],
    metadata: dict[str, str] | None = None,
    max_shard_bytes: int | None = None,
) -> list[str]:
    """Save a model folder's tensors: ``model.safetensors``, or, when they are larger than
    ``max_shard_bytes``, ``model-0000i-of-0000n-HASH.safetensors`` shards and
    ``model.safetensors.index.json`` naming each tensor's shard (Hugging Face's layout; HASH, 8 hex
    of the tensors' contents, keeps a new save from writing over the shards the index names).
    Returns the files written.

    Kill-safe: new shards first, the index last (atomically), then the files of the previous save
    that the new one does not name are removed; until the index is replaced the old weights load.
    """
    directory = Path(directory)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    sizes = {k: v.numel() * v.element_size() for k, v in tensors.items()}
    if max_shard_bytes is not None and max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    if max_shard_bytes is None or sum(sizes.values()) <= max_shard_bytes:
        save_weights(directory / WEIGHTS_NAME, tensors, metadata)
        _remove_stale(directory, {WEIGHTS_NAME})
        return [WEIGHTS_NAME]
    groups: list[list[str]] = [[]]
    used = 0
    for k in tensors:  # in order; a tensor larger than the limit gets a shard of its own
        if groups[-1] and used + sizes[k] > max_shard_bytes:
            groups.append([])
            used = 0
        groups[-1].append(k)
        used += sizes[k]
    digest = hashlib.blake2b(digest_size=4)
    for k, v in tensors.items():
        digest.update(f"{k}:{v.dtype}:{tuple(v.shape)};".encode())
        if v.numel():
            digest.update(v.reshape(-1).view(torch.uint8).numpy())  # no copy: the buffer is read
    tag = digest.hexdigest()
    names = [f"model-{i + 1:05d}-of-{len(groups):05d}-{tag}.safetensors" for i in range(len(groups))]
    for name, keys in zip(names, groups, strict=True):
        save_weights(directory / name, {k: tensors[k] for k in keys}, metadata)
    index = {
        "metadata": {"total_size": sum(sizes.values()), **(metadata or {})},
        "weight_map": {k: name for name, keys in zip(names, groups, strict=True) for k in keys},
    }
    write_json(directory / INDEX_NAME, index)
    _remove_stale(directory, {*names, INDEX_NAME})
    return [*names, INDEX_NAME]


def load_folder_weights(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A model folder's tensors, from its index and shards if it has an index, else from
    ``model.safetensors``. An index may only name shard files of this folder
    (``model-0000i-of-0000n.safetensors``), and each shard must hold exactly the tensors it names."""
    directory = Path(directory)
    index_path = directory / INDEX_NAME
    if not index_path.is_file():
        return load_weights(directory / WEIGHTS_NAME)
    index = read_json(index_path)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_path} has no weight_map of tensor names to shard files")
    wanted: dict[str, set[str]] = {}
    for key, name in weight_map.items():
        if not isinstance(name, str) or not _SHARD_NAME.fullmatch(name):
            raise CheckpointError(
                f"{index_path} maps {key!r} to {name!r}; shards are model-0000i-of-0000n[-HASH].safetensors "
                "files of the folder"
            )
        wanted.setdefault(name, set()).add(key)
    tensors: dict[str, torch.Tensor] = {}
    for name, keys in sorted(wanted.items()):
        found = load_weights(directory / name)
        if set(found) != keys:
            extra, missing = sorted(set(found) - keys)[:3], sorted(keys - set(found))[:3]
            raise CheckpointError(
                f"{directory / name} does not hold what {INDEX_NAME} says: missing {missing}, extra {extra}"
            )
        tensors.update(found)
    return tensors


def folder_weights_metadata(directory: str | os.PathLike) -> dict[str, str]:
    """The safetensors metadata of a folder's weights (its first shard's, when sharded)."""
    directory = Path(directory)
    path = directory / WEIGHTS_NAME
    if (directory / INDEX_NAME).is_file():
        shards = sorted(set(read_json(directory / INDEX_NAME).get("weight_map", {}).values()))
        path = directory / str(shards[0]) if shards else path
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from e


def _remove_stale(directory: Path, keep: set[str]) -> None:
    """Weight files of an earlier save that the latest one does not name."""
    for path in [
        directory / WEIGHTS_NAME,
        directory / INDEX_NAME,
        *directory.glob("model-*-of-*.safetensors"),
    ]:
        if path.name not in keep and path.is_file():
            path.unlink()
