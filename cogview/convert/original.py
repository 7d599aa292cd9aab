"""The released CogView state dicts -> our transformer and VQ-VAE (SPEC 1.7, 2.2; docs/checkpoint_keys.md).

Conversion is renaming plus a dtype cast, tensor by tensor: the original and our layouts agree
on every orientation (``[out, in]`` linears, the fused Q|K|V rows, ``embed`` [D, K]), so nothing
is transposed or split. Exact original numerics come from configuration
(``PRESETS["cogview-4b"]``: Sandwich-LN, tied head, tanh-GELU, ``ln_input_scaling="original"``),
not from a second model. Every key and shape is checked before anything is converted.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

import torch

from cogview.model import CogViewTransformer, TransformerConfig, original_key_map
from cogview.serialization import CheckpointError, check_state_dict
from cogview.tokenizers.vqvae import VQVAE, VQVAEConfig

logger = logging.getLogger(__name__)

# Rows of the position table of the super-resolution finetune length (SPEC 1.1): accepted besides
# the config's own ``max_seq_len`` (1089), since the table size is the one shape a finetune changes.
SR_FINETUNE_POSITIONS = 1345
WORD_KEYS = {"original": "word_embeddings.weight", "sat": "transformer.word_embeddings.weight"}
POSITION_KEY = "transformer.position_embeddings.weight"


def key_layout(state: Mapping[str, torch.Tensor], source: str) -> str:
    """``"original"`` (top-level ``word_embeddings``) or ``"sat"`` (SwissArmyTransformer's
    ``transformer.word_embeddings``), from which word-table key the state dict has."""
    found = [layout for layout, key in WORD_KEYS.items() if key in state]
    if len(found) != 1:
        raise CheckpointError(
            f"{source} must hold exactly one of {sorted(WORD_KEYS.values())} (the word table of the "
            f"original or the SwissArmyTransformer layout), found {len(found)}"
        )
    return found[0]


def transformer_config(
    state: Mapping[str, torch.Tensor], base: TransformerConfig, source: str
) -> TransformerConfig:
    """``base`` with ``max_seq_len`` set to the file's position-table rows when they are ``base``'s
    or the super-resolution finetune's 1345; every other shape must match ``base`` exactly."""
    if not (base.sandwich_ln and base.tied_head):
        raise ValueError(
            "the released checkpoints have Sandwich-LN and a tied head: use a config with "
            "sandwich_ln=true and tied_head=true (e.g. the cogview-4b preset)"
        )
    pos = state.get(POSITION_KEY)
    if pos is None or pos.dim() != 2:
        return base  # check_state_dict names the missing or mis-shaped key
    rows = int(pos.shape[0])
    if rows not in (base.max_seq_len, SR_FINETUNE_POSITIONS):
        raise CheckpointError(
            f"{source}: {POSITION_KEY} has {rows} rows; expected {base.max_seq_len} "
            f"(the config's max_seq_len) or {SR_FINETUNE_POSITIONS} (the super-resolution finetune)"
        )
    return dataclasses.replace(base, max_seq_len=rows)


def _check_floats(state: Mapping[str, torch.Tensor], source: str) -> None:
    bad = [f"{k} ({v.dtype})" for k, v in state.items() if not v.dtype.is_floating_point]
    if bad:
        raise CheckpointError(f"{source}: weights must be floating point, found {bad[:5]}")


def transformer_from_original(
    state: Mapping[str, torch.Tensor],
    config: TransformerConfig,
    dtype: torch.dtype = torch.bfloat16,
    source: str = "checkpoint",
) -> CogViewTransformer:
    """Our transformer (eval mode) with the weights of an original or SAT ``module`` state dict.

    ``state`` may hold memory-mapped tensors: each one is read, cast to ``dtype`` into its own new
    tensor and assigned to a model built on the meta device, so the peak memory is the converted
    model plus the tensor being read. Raises :class:`CheckpointError` naming the first missing,
    unexpected and mis-shaped original keys.
    """
    layout = key_layout(state, source)
    names = original_key_map(config.n_layers, sat=layout == "sat")  # ours -> theirs
    with torch.device("meta"):
        model = CogViewTransformer(config)
    ours = model.state_dict()
    check_state_dict({theirs: ours[k] for k, theirs in names.items()}, state, source)
    _check_floats(state, source)
    converted = {k: state[theirs].to(dtype=dtype, copy=True).contiguous() for k, theirs in names.items()}
    model.load_state_dict(converted, strict=True, assign=True)
    logger.info(
        "converted %d tensors (%s layout, %d parameters) from %s to %s",
        len(converted),
        layout,
        model.num_parameters(),
        source,
        dtype,
    )
    return model.eval()


def vqvae_from_original(
    state: Mapping[str, torch.Tensor], config: VQVAEConfig, source: str = "VQ-VAE file"
) -> VQVAE:
    """Our VQ-VAE (eval mode, float32) with the weights of ``vqvae_hard_biggerset_011.pt``.

    Key names are the original's (``enc_b.blocks.*``, ``quantize_t.embed`` [D, K], ``dec.blocks.*``,
    SPEC 2.2); a leading ``module.`` on every key is stripped, as the original loader did.
    """
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    model = VQVAE(config)
    check_state_dict(model.state_dict(), state, source)
    _check_floats(state, source)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval()
