"""Preallocated key/value cache for incremental decoding (SPEC 3.1, step 5).

The original CogView caches the hidden states entering each layer ("mems") and recomputes
K/V over them at every step; caching K/V instead gives the same result with one projection per
token. The cache knows shapes only: ``update`` writes K/V at given slots (``index_copy_``, as in
gpt-fast) and returns the full buffers; the model masks slots beyond each query's own slot.
"""

from __future__ import annotations

import torch


class KVCache:
    """K/V buffers of shape ``[L, B, H, S_max, D]`` for all layers of one model.

    Slots are filled by the caller's ``cache_positions``; the attention mask lets a query at slot
    p see slots ``<= p``, so slots must be filled contiguously from 0 before they are attended to.
    """

    # Whether the model should call ``record_inputs`` with each layer's input (OriginalMemsCache).
    records_inputs = False

    def __init__(
        self,
        n_layers: int,
        batch_size: int,
        n_heads: int,
        max_len: int,
        head_dim: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        for name, value in (
            ("n_layers", n_layers),
            ("batch_size", batch_size),
            ("n_heads", n_heads),
            ("max_len", max_len),
            ("head_dim", head_dim),
        ):
            if value <= 0:
                raise ValueError(f"KVCache {name}={value} must be positive")
        shape = (n_layers, batch_size, n_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)  # [L, B, H, S, D]
        self.v = torch.zeros(shape, dtype=dtype, device=device)  # [L, B, H, S, D]

    @classmethod
    def _from_buffers(cls, k: torch.Tensor, v: torch.Tensor) -> KVCache:
        cache = cls.__new__(cls)
        cache.k, cache.v = k, v
        return cache

    @property
    def n_layers(self) -> int:
        return self.k.shape[0]

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def update(
        self, layer_idx: int, cache_positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k, v`` (``[B, H, T, D]``) at slots ``cache_positions`` and return the layer's buffers.

        ``cache_positions`` is ``[T]`` (same slots for every row) or ``[B, T]`` (per row).
        Returns ``(k_all, v_all)``, each ``[B, H, S_max, D]``.
        """
        k_buf, v_buf = self.k[layer_idx], self.v[layer_idx]  # [B, H, S, D] views
        if (
            k.shape != v.shape
            or k.dim() != 4
            or k.shape[0] != k_buf.shape[0]
            or k.shape[1] != k_buf.shape[1]
            or k.shape[3] != k_buf.shape[3]
        ):
            raise ValueError(
                f"k/v of shape {tuple(k.shape)}/{tuple(v.shape)} do not fit a cache of "
                f"[B={k_buf.shape[0]}, H={k_buf.shape[1]}, S, D={k_buf.shape[3]}]; "
                "was the cache built for another batch size (see KVCache.expand) or model?"
            )
        k, v = k.to(k_buf.dtype), v.to(v_buf.dtype)
        if cache_positions.dim() in (1, 2) and torch.compiler.is_compiling():
            return self._update_in_place(layer_idx, cache_positions, k, v)
        if cache_positions.dim() == 1:
            k_buf.index_copy_(2, cache_positions, k)
            v_buf.index_copy_(2, cache_positions, v)
        elif cache_positions.dim() == 2:
            rows = torch.arange(k.shape[0], device=k.device)[:, None]  # [B, 1]
            # Mixed advanced indexing puts the indexed dims first: targets are [B, T, H, D].
            k_buf[rows, :, cache_positions] = k.transpose(1, 2)
            v_buf[rows, :, cache_positions] = v.transpose(1, 2)
        else:
            raise ValueError(
                f"cache_positions must be [T] or [B, T], got shape {tuple(cache_positions.shape)}"
            )
        return k_buf, v_buf

    def _update_in_place(
        self, layer_idx: int, cache_positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``update`` as one ``index_put_`` into the whole ``[L, B, H, S, D]`` buffers, for ``torch.compile``.

        Writing through the per-layer view instead makes the compiled graph copy the whole cache
        back into its input every step (measured: 5x slower than eager at batch 16 on a CPU);
        an ``index_put_`` on the buffer itself is kept in place.
        """
        B, H = k.shape[0], k.shape[1]
        device = k.device
        layer = torch.full((1, 1, 1), layer_idx, device=device)  # [1, 1, 1]
        rows = torch.arange(B, device=device)[:, None, None]  # [B, 1, 1]
        heads = torch.arange(H, device=device)[None, :, None]  # [1, H, 1]
        slots = cache_positions[None, None, :] if cache_positions.dim() == 1 else cache_positions[:, None, :]
        self.k.index_put_((layer, rows, heads, slots), k)  # indices broadcast to [B, H, T]; k is [B, H, T, D]
        self.v.index_put_((layer, rows, heads, slots), v)
        return self.k[layer_idx], self.v[layer_idx]

    def reset(self) -> None:
        """Zero all slots (a new prompt can then be prefilled from slot 0)."""
        self.k.zero_()
        self.v.zero_()

    def select(self, rows: torch.Tensor) -> KVCache:
        """New cache holding the given batch rows (in that order), e.g. to keep the best sample."""
        rows = rows.to(self.k.device)
        return KVCache._from_buffers(self.k.index_select(1, rows), self.v.index_select(1, rows))

    def expand(self, n: int) -> KVCache:
        """New cache with every row repeated ``n`` times (row i -> rows ``i*n .. i*n+n-1``).

        CogView prefills the prompt once at batch 1 and shares it across the samples (SPEC 3.1,
        step 4); the source cache is left untouched, so it can seed further batches.
        """
        if n <= 0:
            raise ValueError(f"expand(n={n}) needs n >= 1")
        rows = torch.arange(self.batch_size, device=self.k.device).repeat_interleave(n)  # [B*n]
        return self.select(rows)
