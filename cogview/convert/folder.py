"""Released CogView files -> one of our model folders, written atomically (SPEC 4.5, 7).

:func:`convert_original` reads the DeepSpeed checkpoint folder, the VQ-VAE file and the text
tokenizer, converts the weights (:mod:`cogview.convert.original`) and saves a
:class:`~cogview.pipeline.CogViewPipeline` whose ``pipeline.json`` records the job the weights
serve, ``"semantics": "original"`` (the jobs are served as the released code served them,
:mod:`cogview.generation.original`) and that job's sampling defaults from the original scripts.
The folder appears under its name only when complete.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from cogview.convert.original import (
    key_layout,
    transformer_config,
    transformer_from_original,
    vqvae_from_original,
)
from cogview.convert.safe_load import model_states, resolve_checkpoint, safe_torch_load
from cogview.generation.original import ORIGINAL_SAMPLING, ORIGINAL_SR_WINDOW
from cogview.generation.text_to_image import PROMPT_OVERHEAD
from cogview.model import PRESETS, TransformerConfig
from cogview.pipeline import JOBS, CogViewPipeline
from cogview.serialization import write_json
from cogview.tokenizers.image import ImageTokenizer
from cogview.tokenizers.text import TextTokenizer
from cogview.tokenizers.vocab import Vocabulary
from cogview.tokenizers.vqvae import VQVAEConfig, original_config

logger = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# The release is fp16: fp16 keeps every weight bit for bit (bf16 would round each one).
DEFAULT_DTYPE = "fp16"
CONVERSION_NAME = "conversion.json"


def convert_original(
    checkpoint: str | os.PathLike,
    vqvae: str | os.PathLike,
    text_tokenizer: str | os.PathLike,
    out: str | os.PathLike,
    *,
    dtype: str = DEFAULT_DTYPE,
    job: str = "text_to_image",
    config: TransformerConfig = PRESETS["cogview-4b"],
    vqvae_config: VQVAEConfig | None = None,
    max_shard_bytes: int | None = None,
) -> dict[str, Any]:
    """Write the model folder ``out`` from the released files; returns what ``conversion.json`` holds.

    Args:
        checkpoint: the checkpoint folder (with ``latest_checkpointed_iteration.txt``), an
            iteration folder, or the ``mp_rank_00_model_states.pt`` file; original or SAT keys.
        vqvae: ``vqvae_hard_biggerset_011.pt``.
        text_tokenizer: ``cog-pretrain.model`` (or a text tokenizer folder).
        out: a new (or empty) folder.
        max_shard_bytes: save the transformer in shards of at most this size with an index
            (e.g. 5 GB for a model hub); None: one ``model.safetensors``.
        dtype: ``fp16`` (default: the release's own precision, bit-exact), ``bf16`` (every weight
            rounded to 8 mantissa bits) or ``fp32`` (exact, twice the size).
        job: the job these weights serve, recorded in ``pipeline.json``: one of :data:`JOBS`, as the
            three released checkpoints (cogview-base, cogview-caption, cogview-sr; SPEC 0, 3.7).
        config, vqvae_config: the architectures the files must match exactly (defaults: the 4B
            preset and the original VQ-VAE).

    Raises:
        ValueError: bad arguments; :class:`~cogview.serialization.CheckpointError` (a ValueError)
        for unreadable, refused or mismatched files. Nothing is left under ``out`` on error.
    """
    started = time.perf_counter()
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} already exists and is not an empty folder; choose a new --out or remove it")
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
    if job not in JOBS:
        raise ValueError(f"job {job!r} is not one of {list(JOBS)}")
    vqvae_config = vqvae_config or original_config()
    file, tag = resolve_checkpoint(checkpoint)

    text = TextTokenizer.from_pretrained(text_tokenizer)
    vq_state = model_states(safe_torch_load(vqvae), str(vqvae))
    image = ImageTokenizer(vqvae_from_original(vq_state, vqvae_config, str(vqvae)))
    vocab = Vocabulary(image_size=image.codebook_size, text_size=text.vocab_size, extra_tokens=())
    if vocab.size != config.vocab_size:
        raise ValueError(
            f"the text tokenizer ({text.vocab_size} pieces) and the VQ-VAE ({image.codebook_size} codes) "
            f"make a vocabulary of {vocab.size} ids, but the transformer has {config.vocab_size}: the "
            "released weights need cog-pretrain.model (50000 pieces) and the 8192-code VQ-VAE (SPEC 2.3)"
        )
    text_budget = config.max_seq_len - PROMPT_OVERHEAD - image.grid_size**2  # 1089 - 3 - 1024 = 62
    if text_budget < 1:
        raise ValueError(f"max_seq_len={config.max_seq_len} leaves no room for text next to the image")

    state = model_states(safe_torch_load(file), str(file))
    layout = key_layout(state, str(file))
    model_config = transformer_config(state, config, str(file))
    transformer = transformer_from_original(state, model_config, DTYPES[dtype], str(file))
    del state  # drop the memory map before writing
    try:
        pipe = CogViewPipeline(
            transformer,
            text,
            image,
            vocab,
            text_budget=text_budget,
            sampling={"default": ORIGINAL_SAMPLING["text_to_image"]},
            jobs=(job,),
            job_sampling={j: ORIGINAL_SAMPLING[j] for j in ("image_to_text", "super_resolution")},
            sr_window=ORIGINAL_SR_WINDOW,
            semantics="original",
        )
    except ValueError as e:  # e.g. a job module that needs a token the original vocabulary lacks
        raise ValueError(
            f"the converted weights cannot be served as {job} by this CogViewPipeline: {e}"
        ) from e
    record = {
        "format": "cogview.conversion",
        "checkpoint": str(file),
        "iteration": tag,
        "key_layout": layout,
        "vqvae": str(vqvae),
        "text_tokenizer": str(text_tokenizer),
        "dtype": dtype,
        "job": job,
        "max_seq_len": model_config.max_seq_len,
        "parameters": transformer.num_parameters(),
    }
    _save_atomically(pipe, record, out, max_shard_bytes)
    logger.info("wrote %s in %.1f s", out, time.perf_counter() - started)
    return record


def _save_atomically(
    pipe: CogViewPipeline, record: dict[str, Any], out: Path, max_shard_bytes: int | None = None
) -> None:
    """Save into a hidden sibling folder, then rename it to ``out`` (removed on any error)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    os.chmod(tmp, 0o755)  # mkdtemp creates 0700; a model folder should be readable like any other
    try:
        pipe.save_pretrained(tmp, max_shard_bytes=max_shard_bytes)
        write_json(tmp / CONVERSION_NAME, record)
        if out.is_dir():
            out.rmdir()  # empty (checked on entry); rename cannot replace a folder everywhere
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
