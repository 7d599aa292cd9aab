"""CogView's GPT-style causal transformer (paper Sec. 2.3-2.4; SPEC 1.2-1.6).

Word + learned absolute position embeddings, N blocks with optional Sandwich-LN (SPEC 1.3),
optional PB-relax attention and LayerNorm input scaling (SPEC 1.4), a final LayerNorm and an
output head tied to the word embedding (SPEC 1.6). One ``forward`` serves training (no cache,
causal mask by sequence order) and inference (a :class:`KVCache`, masked by cache slot).
Parameter names follow llama/gpt-fast; ``keys.original_key_map`` maps them to the released weights.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cogview.model.config import TransformerConfig
from cogview.model.kv_cache import KVCache
from cogview.model.original_cache import OriginalMemsCache
from cogview.serialization import (
    CONFIG_NAME,
    CheckpointError,
    assign_weights,
    load_folder_weights,
    read_json,
    save_folder_weights,
    write_json,
)

# ---------------------------------------------------------------------------------------------
# helpers


class LayerNorm(nn.LayerNorm):
    """LayerNorm that may first rescale its input (PB-relax, SPEC 1.4); parameters as nn.LayerNorm.

    ``"max"`` divides each row by its detached max|x| (the paper's LN(x / max x)); ``"original"``
    divides the whole tensor by one detached max|x| / 8 (the released code). Both equal a plain
    LayerNorm whose eps is multiplied by the squared divisor.
    """

    def __init__(self, dim: int, eps: float, input_scaling: str = "none") -> None:
        super().__init__(dim, eps=eps)
        self.input_scaling = input_scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_scaling == "max":
            x = x / _nonzero(x.detach().abs().amax(dim=-1, keepdim=True))  # [..., 1] per row
        elif self.input_scaling == "original":
            x = x / _nonzero(x.detach().abs().amax() / 8)  # one scalar over batch, sequence, hidden
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


def _dropout(p: float) -> nn.Module:
    # Without dropout, no module call at all: a decode step runs ~13 of them for nothing.
    return nn.Dropout(p) if p > 0 else nn.Identity()


def _nonzero(scale: torch.Tensor) -> torch.Tensor:
    # An all-zero row would divide by zero; any positive divisor leaves it zero.
    return scale.clamp_min(torch.finfo(scale.dtype).tiny)


def one_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention of one query per row (a decode step) as two batched products around a softmax.

    Only compiled CPU steps use it (:func:`_compiling_for_cpu`): inductor fuses the scale, the
    additive ``mask`` and the softmax between the products, where SDPA's CPU flash kernel pays a
    blocking overhead per row and head that is most of its cost at one query (measured: a compiled
    batch-16 decode step of the shipped model 15% faster, docs/generation.md). Eager steps keep
    SDPA, so their logits keep their bits.
    """
    scores = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5 + mask  # [B, H, 1, S]
    return torch.matmul(torch.softmax(scores, dim=-1), v)  # [B, H, 1, D]


def _compiling_for_cpu(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and torch.compiler.is_compiling()


def pb_relax_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    alpha: float,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Softmax attention by the paper's PB-relax formula (SPEC 1.4), exact up to rounding.

    ``softmax(QK^T/sqrt(d)) = softmax((Q/(a*sqrt(d)) K^T - max_keys) * a)``: Q is scaled before
    the matmul so the scores are a times smaller, and the detached per-(head, query) max over the
    allowed keys is removed before the exponent. q: [B, H, T, D]; k, v: [B, H, S, D]; mask: bool,
    broadcastable to [B, H, T, S], True = may attend, None = causal by index (T == S).
    """
    T, S, D = q.shape[-2], k.shape[-2], q.shape[-1]
    if mask is None:
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril()  # [T, S]
    scores = (q * (1.0 / (alpha * math.sqrt(D)))) @ k.transpose(-2, -1)  # [B, H, T, S]
    scores = scores.masked_fill(~mask, float("-inf"))
    shift = scores.detach().amax(dim=-1, keepdim=True)  # [B, H, T, 1], over allowed keys only
    probs = torch.softmax((scores - shift) * alpha, dim=-1)  # [B, H, T, S]
    probs = F.dropout(probs, p=dropout_p, training=dropout_p > 0)
    return probs @ v  # [B, H, T, D]


# ---------------------------------------------------------------------------------------------
# layers


class Attention(nn.Module):
    """Multi-head causal self-attention with a fused Q|K|V projection (rows ordered as the original)."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.dim, self.n_heads, self.head_dim = config.dim, config.n_heads, config.head_dim
        self.pb_relax_alpha = config.pb_relax_alpha
        self.dropout_p = config.dropout
        self.wqkv = nn.Linear(config.dim, 3 * config.dim)
        self.wo = nn.Linear(config.dim, config.dim)
        self.resid_dropout = _dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | None,
        layer_idx: int,
        cache_positions: torch.Tensor | None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        # Q | K | V parts, head i using channels [i*D, (i+1)*D) of each, as in the original
        # (SPEC 1.3); one view + permute instead of a split and three reshapes (fewer ops per step).
        qkv = self.wqkv(x).view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # 3 x [B, H, T, D]
        if cache is not None:
            k, v = cache.update(layer_idx, cache_positions, k, v)  # [B, H, S_max, D]
            S = mask.shape[-1]  # kv_len: only the first S slots can be attended
            k, v = k[:, :, :S], v[:, :, :S]  # [B, H, S, D]
            if k.dtype != q.dtype:  # a cache kept in another precision
                k, v = k.to(q.dtype), v.to(q.dtype)
        dropout_p = self.dropout_p if self.training else 0.0
        if self.pb_relax_alpha is None and T == 1 and mask is not None and not dropout_p and _compiling_for_cpu(q):
            y = one_query_attention(q, k, v, mask)
        elif self.pb_relax_alpha is None:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=mask is None
            )
        else:
            y = pb_relax_attention(q, k, v, mask, self.pb_relax_alpha, dropout_p)  # [B, H, T, D]
        y = y.transpose(1, 2).reshape(B, T, self.dim)  # [B, T, dim]
        return self.resid_dropout(self.wo(y))


class FeedForward(nn.Module):
    """Two-layer MLP with tanh-approximated GELU (SPEC 1.3)."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(config.dim, config.ffn_dim)
        self.w2 = nn.Linear(config.ffn_dim, config.dim)
        self.dropout = _dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.w2(F.gelu(self.w1(x), approximate="tanh")))  # [B, T, dim]


# ---------------------------------------------------------------------------------------------
# block


class Block(nn.Module):
    """One layer: ``x + LN_3(Attn(LN_in(x)))`` then ``x + LN_4(MLP(LN_post(x)))`` (SPEC 1.3).

    Without Sandwich-LN, LN_3 and LN_4 are identities (plain pre-LN) and hold no parameters.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()

        def norm() -> LayerNorm:
            return LayerNorm(config.dim, config.norm_eps, config.ln_input_scaling)

        self.attention_norm = norm()
        self.attention = Attention(config)
        self.attention_out_norm = norm() if config.sandwich_ln else nn.Identity()
        self.ffn_norm = norm()
        self.feed_forward = FeedForward(config)
        self.ffn_out_norm = norm() if config.sandwich_ln else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | None,
        layer_idx: int,
        cache_positions: torch.Tensor | None,
    ) -> torch.Tensor:
        if cache is not None and cache.records_inputs:  # the released code's mems (OriginalMemsCache)
            cache.record_inputs(layer_idx, cache_positions, x)
        x = x + self.attention_out_norm(
            self.attention(self.attention_norm(x), mask, cache, layer_idx, cache_positions)
        )
        x = x + self.ffn_out_norm(self.feed_forward(self.ffn_norm(x)))
        return x  # [B, T, dim]


# ---------------------------------------------------------------------------------------------
SOURCE_OFFSETS = 9  # the 3x3 low-res neighbourhood of cell_sources (cogview.data.sequences.sr_sources)


def _check_per_token(name: str, ids: torch.Tensor, T: int) -> None:
    if ids.dim() not in (1, 2) or ids.shape[-1] != T:
        raise ValueError(f"{name} must be [T] or [B, T] with T={T}, got shape {tuple(ids.shape)}")


# model


class CogViewTransformer(nn.Module):
    """The CogView decoder: ``forward(tokens, positions, cache=None) -> logits``."""

    # Decode as the released code's hidden-state cache (exact LayerNorm scale over cached positions,
    # OriginalMemsCache) instead of a plain KV cache; off by default: it costs an extra pass over
    # the cache per layer and step, for differences below fp16 rounding (docs/original_weights.md).
    original_mems: bool = False

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        # Learned 1-D positions over the mixed text+image sequence, as the original (SPEC 1.2).
        self.pos_embeddings = nn.Embedding(config.max_seq_len, config.dim)
        # Optional 2-D cell ids of super-resolution codes (ours; see TransformerConfig).
        n_cells = config.cell_embeddings
        self.cell_embeddings = nn.Embedding(n_cells, config.dim, padding_idx=0) if n_cells else None
        # One linear map per offset of the 3x3 low-res neighbourhood, as one matrix over the nine
        # concatenated embeddings (a 3x3 convolution over the low-res code embeddings).
        self.cell_sources = (
            nn.Linear(SOURCE_OFFSETS * config.dim, config.dim, bias=False) if config.cell_sources else None
        )
        self.dropout = _dropout(config.dropout)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = LayerNorm(config.dim, config.norm_eps, config.ln_input_scaling)
        # Tied head (SPEC 1.6): logits use tok_embeddings.weight, so no duplicate tensor is saved.
        self.output = None if config.tied_head else nn.Linear(config.dim, config.vocab_size, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise as SPEC 1.6: N(0, 0.02); output projections N(0, 0.02/sqrt(2L)); biases 0; LN 1/0."""
        std, out_std = 0.02, 0.02 / math.sqrt(2 * self.config.n_layers)
        for name, module in self.named_modules():
            if name == "cell_sources":  # zero: a model that gains it computes what it did before
                nn.init.zeros_(module.weight)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(
                    module.weight, 0.0, out_std if name.endswith(("attention.wo", "feed_forward.w2")) else std
                )
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, 0.0, std)
                if module.padding_idx is not None:
                    module.weight[module.padding_idx].zero_()
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        cache: KVCache | None = None,
        cache_positions: torch.Tensor | None = None,
        kv_len: int | None = None,
        cells: torch.Tensor | None = None,
        sources: torch.Tensor | None = None,
        logit_ids: range | None = None,
    ) -> torch.Tensor:
        """Logits ``[B, T, V]`` for ``tokens`` ``[B, T]`` at position ids ``positions`` (``[T]`` or ``[B, T]``).

        Without a cache, attention is causal over the sequence order (training, scoring).
        With a cache, K/V are written at ``cache_positions`` (slots; default ``positions``) and each
        query attends to the cache slots ``<= its own slot``. This one call does both a many-token
        prefill and a one-token decode step. Position ids may restart (CogView super-resolution
        recounts from [ROI2], SPEC 1.2) while slots keep counting: pass both in that case.
        ``kv_len`` (cache only) limits attention to the first ``kv_len`` slots, which must include
        every slot in ``cache_positions``: a decode step then reads only the filled part of a
        preallocated cache (attention cost grows with the text so far, not with ``max_len``).
        ``cells`` (``[T]`` or ``[B, T]``) are 2-D cell ids for a model built with
        ``cell_embeddings``; ``sources`` (``[T, 9]`` or ``[B, T, 9]``) the low-res token ids of a 3x3
        neighbourhood (-1: none) for one built with ``cell_sources``: at each position, those of
        the token it predicts (cogview.data.sequences.sr_cells / sr_sources of the next token).
        None adds nothing. ``logit_ids`` (a contiguous range) computes only those logits, ``[B, T,
        len(logit_ids)]``: a decode step that may only sample image codes skips the other rows of
        the output layer (the same values as slicing the full logits, bit for bit).
        """
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [B, T], got shape {tuple(tokens.shape)}")
        B, T = tokens.shape
        if tuple(positions.shape) not in ((T,), (B, T)):
            raise ValueError(
                f"positions must be [T]={T} or [B, T]=[{B}, {T}], got shape {tuple(positions.shape)}"
            )
        mask = None  # None = causal by sequence index (fused SDPA path)
        if cache is None:
            if cache_positions is not None:
                raise ValueError(
                    "cache_positions were given without a cache; pass cache=model.new_cache(...)"
                )
            if kv_len is not None:
                raise ValueError("kv_len limits the attended cache slots; it needs a cache")
        else:
            cache_positions = positions if cache_positions is None else cache_positions
            if tuple(cache_positions.shape) not in ((T,), (B, T)):
                raise ValueError(
                    f"cache_positions must be [T] or [B, T], got shape {tuple(cache_positions.shape)}"
                )
            if cache.batch_size != B:
                raise ValueError(
                    f"cache holds {cache.batch_size} rows but tokens have {B}; "
                    "use cache.expand(n) to share a batch-1 prefill across n rows"
                )
            S = cache.max_len if kv_len is None else kv_len
            if not 0 < S <= cache.max_len:
                raise ValueError(f"kv_len={kv_len} must lie in [1, cache.max_len={cache.max_len}]")
            slots = torch.arange(S, device=tokens.device)  # [S]
            mask = slots <= cache_positions[..., None]  # [T, S] or [B, T, S]
            # Always 4-D: SDPA's fused CPU kernel takes a [B|1, 1, T, S] mask; a 3-D one falls back
            # to the unfused math path (2-3x slower per decode step).
            mask = mask.view(mask.shape[0] if mask.dim() == 3 else 1, 1, T, S)  # [B|1, 1, T, S]
            if self.config.pb_relax_alpha is None:
                # Additive form, made once: SDPA would otherwise convert the bool mask in every layer.
                dtype = self.tok_embeddings.weight.dtype
                mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(
                    ~mask, float("-inf")
                )

        x = self.tok_embeddings(tokens) + self.pos_embeddings(positions)  # [B, T, dim]
        if cells is not None:
            x = x + self._cells(cells, T)  # [B, T, dim]
        if sources is not None:
            x = x + self._sources(sources, T)  # [B, T, dim]
        x = self.dropout(x)
        for i, layer in enumerate(self.layers):
            x = layer(x, mask, cache, i, cache_positions)  # [B, T, dim]
        x = self.norm(x)
        head = self.tok_embeddings.weight if self.output is None else self.output.weight  # [V, dim]
        if logit_ids is not None:
            if logit_ids.step != 1 or not 0 <= logit_ids.start < logit_ids.stop <= head.shape[0]:
                raise ValueError(f"logit_ids {logit_ids} must be a non-empty contiguous range inside [0, {head.shape[0]})")
            head = head[logit_ids.start : logit_ids.stop]  # [V', dim], a view of whole rows
        return F.linear(x, head)  # [B, T, V] or [B, T, V']

    def _cells(self, cells: torch.Tensor, T: int) -> torch.Tensor:
        if self.cell_embeddings is None:
            raise ValueError(
                "cell ids were given but this model has no cell table (config.cell_embeddings=0); "
                "train a super-resolution model with model.cell_embeddings set"
            )
        _check_per_token("cells", cells, T)
        return self.cell_embeddings(cells)

    def _sources(self, sources: torch.Tensor, T: int) -> torch.Tensor:
        if self.cell_sources is None:
            raise ValueError(
                "source ids were given but this model has no source map (config.cell_sources=false); "
                "train a super-resolution model with model.cell_sources set"
            )
        if sources.dim() not in (2, 3) or sources.shape[-2:] != (T, SOURCE_OFFSETS):
            raise ValueError(
                f"sources must be [T, {SOURCE_OFFSETS}] or [B, T, {SOURCE_OFFSETS}] with T={T}, "
                f"got shape {tuple(sources.shape)}"
            )
        given = (sources >= 0).unsqueeze(-1)  # [(B,) T, 9, 1]
        embedded = self.tok_embeddings(sources.clamp(min=0)) * given  # [(B,) T, 9, dim]
        return self.cell_sources(embedded.flatten(-2))  # [(B,) T, dim]

    def new_cache(
        self,
        batch_size: int,
        max_len: int | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> KVCache:
        """An empty KV cache for this model (default: ``max_seq_len`` slots, the weights' dtype and device).

        With :attr:`original_mems` set (a model with the released LayerNorm scaling) it is an
        :class:`OriginalMemsCache`, which decodes as the released code's cache of hidden states.
        """
        weight = self.tok_embeddings.weight
        shape = (self.config.n_layers, batch_size, self.config.n_heads)
        shape += (self.config.max_seq_len if max_len is None else max_len, self.config.head_dim)
        placed = {"dtype": dtype or weight.dtype, "device": device or weight.device}
        if self.original_mems:
            if self.config.ln_input_scaling != "original":
                raise ValueError("original_mems needs a model with ln_input_scaling='original'")
            offsets = OriginalMemsCache.offsets_of(self.layers, self.config.n_heads)
            return OriginalMemsCache(*shape, offsets=offsets, eps=self.config.norm_eps, **placed)
        return KVCache(*shape, **placed)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Number of parameters (the tied head is counted once)."""
        skip = (
            {id(self.tok_embeddings.weight), id(self.pos_embeddings.weight)} if exclude_embeddings else set()
        )
        return sum(p.numel() for p in self.parameters() if id(p) not in skip)

    def save_pretrained(self, directory: str | os.PathLike, max_shard_bytes: int | None = None) -> None:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (atomically); with
        ``max_shard_bytes``, weights larger than that go into shards and an index
        (:func:`~cogview.serialization.save_folder_weights`)."""
        directory = Path(directory)
        write_json(directory / CONFIG_NAME, self.config.to_dict())
        metadata = {"format": "pt", "class": type(self).__name__}
        save_folder_weights(directory, self.state_dict(), metadata, max_shard_bytes)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> CogViewTransformer:
        """Build from ``config.json`` on the meta device, then load ``model.safetensors`` (or its
        shards) strictly.

        Returns the model in eval mode. Raises :class:`CheckpointError` for a missing, damaged or
        mismatched file (missing/unexpected keys, wrong shapes).
        """
        directory = Path(directory)
        try:
            config = TransformerConfig.from_dict(read_json(directory / CONFIG_NAME))
        except CheckpointError:
            raise
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"{directory / CONFIG_NAME} is not a valid transformer config: {e}") from e
        with torch.device("meta"):
            model = cls(config)
        if dtype is not None:
            model = model.to(dtype)  # free on meta; assign_weights then casts the file's tensors to it
        assign_weights(model, load_folder_weights(directory), str(directory))
        if device is not None:
            model = model.to(device)
        return model.eval()
