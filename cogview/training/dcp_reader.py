"""Reading a distributed checkpoint (``dcp/``) without letting the files run code.

torch's ``FileSystemReader`` unpickles ``dcp/.metadata`` with plain :mod:`pickle`, and its
default load planner reads non-tensor entries with ``torch.load(weights_only=False)``: a shared
checkpoint folder could run any command on ``cogview consolidate`` or ``train --resume``. Here
the metadata goes through an unpickler that builds only the classes a DCP metadata file holds
(dataclasses of ``torch.distributed.checkpoint.metadata``, dtypes, sizes, paths), the byte
entries through ``weights_only=True``, and every data file a metadata names must lie inside the
checkpoint folder.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import torch
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.planner import ReadItem

from cogview.serialization import CheckpointError

_METADATA_CLASSES = {
    "Metadata",
    "MetadataIndex",
    "StorageMeta",
    "TensorProperties",
    "TensorStorageMetadata",
    "BytesStorageMetadata",
    "ChunkStorageMetadata",
    "_MEM_FORMAT_ENCODING",
}
_PATH_CLASSES = {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"}


class _MetadataUnpickler(pickle.Unpickler):
    """Builds only what torch writes into ``.metadata``; anything else is refused by name."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch.distributed.checkpoint.metadata" and name in _METADATA_CLASSES:
            return getattr(dcp_metadata, name)
        if module == "torch.distributed.checkpoint.filesystem" and name == "_StorageInfo":
            from torch.distributed.checkpoint.filesystem import _StorageInfo

            return _StorageInfo
        if module == "torch" and name == "Size":
            return torch.Size
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module == "torch.serialization" and name == "_get_layout":
            return torch.serialization._get_layout  # maps a layout's name to torch's own object
        if module == "pathlib" and name in _PATH_CLASSES:
            import pathlib

            return getattr(pathlib, name)
        if module == "collections" and name == "OrderedDict":
            import collections

            return collections.OrderedDict
        raise pickle.UnpicklingError(f"global {module}.{name} is not part of a checkpoint's metadata")


def load_metadata(path: str | Path) -> dcp_metadata.Metadata:
    """Unpickle a DCP ``.metadata`` file with the allow-list, and check where its data files lie."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            metadata = _MetadataUnpickler(f).load()
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refusing to load {path}: {e}. A distributed checkpoint's metadata holds only torch's "
            "checkpoint dataclasses, and unpickling anything else can run arbitrary code"
        ) from None
    except (EOFError, OSError, ValueError, TypeError, AttributeError, KeyError, IndexError) as e:
        raise CheckpointError(
            f"{path} is not a readable checkpoint metadata file ({type(e).__name__}: {str(e)[:200]}); "
            "it may be truncated or damaged"
        ) from None
    if not isinstance(metadata, dcp_metadata.Metadata) or not isinstance(metadata.state_dict_metadata, dict):
        raise CheckpointError(f"{path} does not hold a distributed checkpoint's metadata")
    for info in (metadata.storage_data or {}).values():
        _check_relative(getattr(info, "relative_path", None), path)
    return metadata


def _check_relative(name: Any, metadata_path: Path) -> None:
    """A data file named by the metadata must be a plain file name in the checkpoint folder."""
    ok = isinstance(name, str) and name not in ("", ".", "..")
    ok = ok and PurePosixPath(name).name == name and PureWindowsPath(name).name == name
    if not ok:
        raise CheckpointError(
            f"refusing to load {metadata_path}: it names the data file {name!r}, which is not a file in "
            "its own folder"
        )


class SafeFileSystemReader(FileSystemReader):
    """``FileSystemReader`` whose metadata goes through :func:`load_metadata`."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> dcp_metadata.Metadata:
        rank = kwargs.get("rank")
        metadata = load_metadata(Path(self._get_metadata_path(rank)))
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = dcp_metadata.StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """The default planner, but non-tensor entries load as plain data (``weights_only=True``)."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        try:
            obj = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as e:
            raise CheckpointError(
                f"refusing to load the checkpoint entry {read_item.dest_index.fqn!r}: it pickles an object "
                f"that is not plain data ({str(e).strip().splitlines()[-1][:200]})"
            ) from None
        fqn = read_item.dest_index.fqn
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[fqn], obj)
        else:
            self.state_dict[fqn] = obj


__all__ = ["SafeFileSystemReader", "SafeLoadPlanner", "load_metadata"]
