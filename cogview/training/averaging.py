"""Weight averaging of model folders (a "model soup", Wortsman et al. 2022).

Two fine-tunes of one ancestor often sit in one basin of the loss: their weighted mean keeps
what each learned. The shipped emoji transformer is such a mean (docs/emoji_model.md): one stage
trained towards emoji, the next towards shapes and digits, and the mean is at least as good as
either on every family. Averaging is only meaningful for folders of the same architecture, the
same vocabulary and the same tokenizers, so everything but the weights must agree exactly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from cogview.serialization import (
    CONFIG_NAME,
    MODEL_INFO_NAME,
    CheckpointError,
    check_state_dict,
    folder_weights_metadata,
    load_folder_weights,
    read_json,
    save_folder_weights,
    write_json,
)

# Keys of cogview.json that describe one training run rather than the model: they may differ.
RUN_KEYS = ("step", "averaged_from")


def _model_info(folder: Path) -> dict[str, Any] | None:
    path = folder / MODEL_INFO_NAME
    if not path.exists():
        return None
    return {k: v for k, v in read_json(path).items() if k not in RUN_KEYS}


def _check_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    if weights is None:
        return [1.0 / n] * n
    if len(weights) != n:
        raise ValueError(f"{len(weights)} weight(s) for {n} model folders: give one per folder")
    if any(not (w >= 0) for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights must be >= 0 with a positive sum, got {list(weights)}")
    total = float(sum(weights))
    return [float(w) / total for w in weights]


def average_models(
    folders: Sequence[str | os.PathLike], out: str | os.PathLike, weights: Sequence[float] | None = None
) -> Path:
    """Write the weighted mean of model folders into ``out``; return its path.

    Weights are normalised to sum 1 (default: equal). Floating-point tensors are averaged in
    float32 and stored in the first folder's dtype; any other tensor must be equal in all
    folders. ``config.json`` must match exactly, and ``cogview.json`` (tokenizers, vocabulary,
    tasks) too except for the training step; the result records its sources in
    ``cogview.json["averaged_from"]``.
    """
    paths = [Path(f) for f in folders]
    if len(paths) < 2:
        raise ValueError("averaging needs at least two model folders")
    share = _check_weights(weights, len(paths))
    out = Path(out)
    if out.resolve() in {p.resolve() for p in paths}:
        raise ValueError(f"--out {out} is one of the inputs: write the average to a new folder")
    config = read_json(paths[0] / CONFIG_NAME)
    info = _model_info(paths[0])
    for p in paths[1:]:
        if read_json(p / CONFIG_NAME) != config:
            raise CheckpointError(
                f"{p / CONFIG_NAME} differs from {paths[0] / CONFIG_NAME}: not the same model"
            )
        found = _model_info(p)
        if (found is None) != (info is None):
            has, lacks = (p, paths[0]) if info is None else (paths[0], p)
            raise CheckpointError(
                f"{has} has a {MODEL_INFO_NAME} (its tokenizers and vocabulary) and {lacks} has none: "
                "average folders of one kind"
            )
        if found != info:
            raise CheckpointError(
                f"{p / MODEL_INFO_NAME} differs from {paths[0] / MODEL_INFO_NAME} (tokenizers, vocabulary or "
                "tasks): averaging needs models of one vocabulary"
            )
    first = load_folder_weights(paths[0])
    total = {
        k: v.to(torch.float32) * share[0] if v.dtype.is_floating_point else v.clone()
        for k, v in first.items()
    }
    for p, w in zip(paths[1:], share[1:], strict=True):
        found = load_folder_weights(p)
        check_state_dict(first, found, str(p))
        for k, v in found.items():
            if v.dtype != first[k].dtype:
                raise CheckpointError(f"{p}: {k} is {v.dtype}, {first[k].dtype} in {paths[0]}")
            if v.dtype.is_floating_point:
                total[k] += v.to(torch.float32) * w
            elif not torch.equal(v, first[k]):
                raise CheckpointError(f"{p}: {k} ({v.dtype}) differs and cannot be averaged")
    mean = {k: v.to(first[k].dtype) for k, v in total.items()}
    out.mkdir(parents=True, exist_ok=True)
    save_folder_weights(out, mean, {**folder_weights_metadata(paths[0]), "averaged_from": str(len(paths))})
    write_json(out / CONFIG_NAME, config)
    if info is not None:
        sources = [{"path": str(p), "weight": w} for p, w in zip(paths, share, strict=True)]
        write_json(out / MODEL_INFO_NAME, {**read_json(paths[0] / MODEL_INFO_NAME), "averaged_from": sources})
    return out
