"""Reading the released CogView pickles without running code from them (SPEC 4.5, 8).

The original checkpoints are ``torch.save`` pickles: the DeepSpeed folder
``<dir>/latest_checkpointed_iteration.txt`` + ``<dir>/<iter>/mp_rank_00_model_states.pt`` (weights
under ``module``) and the VQ-VAE state dict ``vqvae_hard_biggerset_011.pt``. They are opened with
``torch.load(weights_only=True)``, memory-mapped where the file format allows, with a short
allow-list (:data:`ALLOWED_GLOBALS`) applied only around the call, never process-wide.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cogview.serialization import CheckpointError

logger = logging.getLogger(__name__)

TRACKER_NAME = "latest_checkpointed_iteration.txt"  # written by CogView (SPEC 4.5)
DEEPSPEED_TRACKER_NAME = "latest"  # written by DeepSpeed itself, holding the same tag
MODEL_STATES_NAME = "mp_rank_00_model_states.pt"
_TAG = re.compile(r"[A-Za-z0-9_.-]+")


def _numpy_reconstruct() -> Any:
    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core to numpy._core
    return core.multiarray._reconstruct


def allowed_globals() -> list[Any]:
    """What a DeepSpeed CogView checkpoint pickles beyond tensors and plain containers.

    - numpy's array reconstruction, ``ndarray``, ``dtype`` and the uint32 dtype class: the client
      state holds ``np_rng_state = numpy.random.get_state()`` (a uint32 array; SPEC 8). Files from
      numpy 1.x name the function ``numpy.core.multiarray._reconstruct``, numpy 2 ``numpy._core``:
      both names map to the one function. Rebuilding an array copies bytes; it calls nothing else.
    - ``argparse.Namespace``: Megatron-lineage trainers (SwissArmyTransformer, Megatron-LM) store
      their ``args`` in the checkpoint. It is a plain attribute bag: unpickling creates it and
      fills its ``__dict__``, with no constructor or ``__setstate__`` code of its own to run.
    Everything else (Python ints, floats, strings, tuples, lists, dicts, sets, None, OrderedDict
    with its ``_metadata``, tensors, RNG byte tensors) is allowed by ``weights_only`` already.
    Any other global, e.g. an object whose ``__reduce__`` calls a function, is refused.
    """
    reconstruct = _numpy_reconstruct()
    return [
        (reconstruct, "numpy._core.multiarray._reconstruct"),
        (reconstruct, "numpy.core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
        type(np.dtype(np.uint32)),  # numpy.dtypes.UInt32DType (numpy >= 1.25 names it so)
        argparse.Namespace,
    ]


def safe_torch_load(path: str | os.PathLike) -> Any:
    """``torch.load`` a pickle checkpoint with ``weights_only=True`` and the short allow-list.

    Zip-format files (``torch.save`` since torch 1.6, so the released ones) are memory-mapped:
    tensors are read from disk when touched, so a 7.9 GB file costs page cache, not 7.9 GB of
    process memory. Legacy (non-zip) pickles cannot be mapped and are read whole, with a warning.

    Raises:
        CheckpointError: missing, truncated or damaged file, or one that pickles anything beyond
            tensors, plain containers and :func:`allowed_globals` (named in the message).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    mmap = zipfile.is_zipfile(path)
    if not mmap:
        with open(path, "rb") as f:
            head = f.read(4)
        if head.startswith(b"PK"):
            raise CheckpointError(
                f"{path} starts like a zip-format torch checkpoint but has no readable zip directory: "
                "the file is truncated or damaged; download or copy it again"
            )
        if not head.startswith(b"\x80"):  # a legacy torch file opens with a pickle protocol header
            raise CheckpointError(
                f"{path} is not a torch checkpoint (neither zip format nor a pickle): is it the right file?"
            )
        logger.warning(
            "%s is a legacy (non-zip) torch pickle: it cannot be memory-mapped and is read whole", path
        )
    try:
        with torch.serialization.safe_globals(allowed_globals()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise CheckpointError(_refusal(path, e)) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError) as e:
        raise CheckpointError(
            f"{path} is not a readable torch checkpoint ({type(e).__name__}: {str(e)[:300]}); "
            "it may be truncated or damaged: download or copy it again"
        ) from None


def _refusal(path: Path, error: Exception) -> str:
    message = str(error)
    # torch words a refused global in several ways across versions: match each of them.
    found = re.search(
        r"(Unsupported global: GLOBAL [\w.]+|unsupported GLOBAL [\w.]+[^\n]*|Can only build [^\n]*)", message
    )
    if found is None:  # not an allow-list refusal: a damaged pickle stream
        return (
            f"{path} is not a readable torch checkpoint ({message.strip().splitlines()[-1][:300]}); "
            "it may be truncated or damaged: download or copy it again"
        )
    return (
        f"refusing to load {path}: it pickles an object that is not plain data ({found.group(1)}). "
        "cogview reads checkpoints with torch.load(weights_only=True) and allows tensors, plain "
        "containers, numpy RNG arrays and argparse.Namespace only, because unpickling anything else "
        "can run arbitrary code. If you trust the file, load it yourself and save its 'module' "
        "state dict with torch.save(state_dict, path)"
    )


def resolve_checkpoint(path: str | os.PathLike) -> tuple[Path, str | None]:
    """The model-states file of a CogView/DeepSpeed checkpoint folder, and its iteration tag.

    ``path`` may be the training folder (``latest_checkpointed_iteration.txt`` or DeepSpeed's
    ``latest`` names the tag; a tag of ``release`` means the folder ``release/``, where the
    original code wrongly looked in ``0/``, SPEC 6), an iteration folder holding
    ``mp_rank_00_model_states.pt``, or that file itself.
    """
    path = Path(path)
    if path.is_file():
        return path, None
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the folder holding {TRACKER_NAME}")
    if (path / MODEL_STATES_NAME).is_file():
        folder, tag = path, path.name
    else:
        tracker = next(
            (path / n for n in (TRACKER_NAME, DEEPSPEED_TRACKER_NAME) if (path / n).is_file()), None
        )
        if tracker is None:
            raise CheckpointError(
                f"{path} has neither {TRACKER_NAME} nor {DEEPSPEED_TRACKER_NAME} nor {MODEL_STATES_NAME}: "
                "pass the folder a released archive unpacks to (e.g. pretrained/cogview/cogview-base)"
            )
        tag = tracker.read_text(encoding="utf-8", errors="replace").strip()
        if tag.isdigit():
            tag = str(int(tag))  # the original writes str(iteration) and reads '{:d}'
        elif not _TAG.fullmatch(tag) or tag in (".", ".."):
            raise CheckpointError(f"{tracker} holds {tag[:80]!r}, not an iteration number or a tag")
        folder = path / tag
    file = folder / MODEL_STATES_NAME
    if not file.is_file():
        raise CheckpointError(f"{file} does not exist (the tracker names tag {tag!r})")
    if (folder / "mp_rank_01_model_states.pt").is_file():
        raise CheckpointError(
            f"{folder} holds a model-parallel checkpoint (mp_rank_01 exists): only MP=1 files can be "
            "converted, as in the original (SPEC 4.5); merge the model-parallel shards first"
        )
    return file, tag


def model_states(checkpoint: Any, source: str) -> Mapping[str, torch.Tensor]:
    """The state dict inside a loaded checkpoint: its ``module`` entry, or the dict itself when it
    holds tensors only (a bare ``torch.save(state_dict)``)."""
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{source} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    state = checkpoint.get("module", checkpoint)
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(f"{source} has no 'module' state dict (found keys {sorted(checkpoint)[:8]})")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"{source}: expected a state dict of tensors under 'module', but {bad[:5]} are not tensors "
            f"(top-level keys {sorted(map(str, checkpoint))[:8]})"
        )
    return state
