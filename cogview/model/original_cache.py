"""A KV cache that decodes as the released CogView's hidden-state cache ("mems", SPEC 1.3-1.4, 3.1).

The released code caches each layer's *input* hidden states and, at every step, recomputes K/V
over them with ``input_layernorm(mem)``: its LayerNorm first divides by one ``max|x| / 8`` taken
over *all* cached positions, which equals a plain LayerNorm whose eps is multiplied by that
scale squared. A plain KV cache keeps each position's K/V at the scale of the step that wrote it,
so once a larger activation has entered the cache the two differ (benchmarks/original_cache.py
measures by how much). Because LayerNorm is ``gamma * (x - mean) / sqrt(var + eps s^2) + beta``,
K/V at another scale are an exact per-slot rescaling of the cached ones around
``c = W (beta) + b``:

    K(s) - c = (K(s_t) - c) * sqrt(var_t + eps s_t^2) / sqrt(var_t + eps s^2)

so this cache stores, beside K/V, each slot's input variance, its max|x| and the denominator it
was written with, and rescales the slots before the current ones on every read: the original's
recompute at the cost of one elementwise pass over the cache.
"""

from __future__ import annotations

import torch
from torch import nn

from cogview.model.kv_cache import KVCache

# The released LayerNorm divides its input by max|x| / ORIGINAL_LN_DIVISOR (mpu/sparse_transformer.py).
ORIGINAL_LN_DIVISOR = 8.0


class OriginalMemsCache(KVCache):
    """:class:`KVCache` whose reads equal K/V recomputed over the cache at one LayerNorm scale.

    Built by :meth:`CogViewTransformer.new_cache` for models with ``ln_input_scaling="original"``.
    ``offsets`` ``[L, 2, H, D]`` are the K and V of a zero-variance input (``W beta + b`` of each
    layer's ``attention_norm`` and ``wqkv``); ``eps`` is the LayerNorm epsilon.
    """

    records_inputs = True

    def __init__(
        self,
        *shape: int,
        offsets: torch.Tensor,
        eps: float,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        """``shape``: :class:`KVCache`'s ``n_layers, batch_size, n_heads, max_len, head_dim``."""
        super().__init__(*shape, dtype=dtype, device=device)
        n_layers, batch_size, _, max_len, _ = shape
        stats, exact = (n_layers, batch_size, max_len), torch.promote_types(dtype, torch.float32)
        self.var = torch.zeros(stats, dtype=exact, device=device)  # [L, B, S] input variance
        self.amax = torch.zeros(stats, dtype=exact, device=device)  # [L, B, S] input max|x|
        self.denom = torch.ones(stats, dtype=exact, device=device)  # [L, B, S] var + eps s_t^2
        self.offsets = offsets.to(device=device, dtype=exact)  # [L, 2, H, D]
        self.eps = float(eps)

    @staticmethod
    def offsets_of(layers: nn.ModuleList, n_heads: int) -> torch.Tensor:
        """``[L, 2, H, D]``: each layer's K and V for an input whose normalised part is zero."""
        out = []
        for layer in layers:
            exact = torch.promote_types(layer.attention.wqkv.weight.dtype, torch.float32)
            beta = layer.attention_norm.bias.detach().to(exact)  # [dim]
            w, b = (t.detach().to(exact) for t in (layer.attention.wqkv.weight, layer.attention.wqkv.bias))
            kv = (w @ beta + b).view(3, n_heads, -1)[1:]  # [2, H, D]
            out.append(kv)
        return torch.stack(out)  # [L, 2, H, D]

    def record_inputs(self, layer_idx: int, cache_positions: torch.Tensor, x: torch.Tensor) -> None:
        """Note the statistics of the hidden states ``x`` ``[B, T, dim]`` entering layer ``layer_idx``."""
        xf = x.detach().to(self.var.dtype)
        var = xf.var(dim=-1, unbiased=False)  # [B, T]
        amax = xf.abs().amax(dim=-1)  # [B, T]
        scale = amax.amax() / ORIGINAL_LN_DIVISOR  # one scale over the whole input, as the LayerNorm
        denom = var + self.eps * scale * scale  # [B, T]
        for buf, value in ((self.var, var), (self.amax, amax), (self.denom, denom)):
            layer = buf[layer_idx]  # [B, S] view
            if cache_positions.dim() == 1:
                layer.index_copy_(1, cache_positions, value)
            else:
                rows = torch.arange(value.shape[0], device=value.device)[:, None]  # [B, 1]
                layer[rows, cache_positions] = value

    def update(
        self, layer_idx: int, cache_positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write as :meth:`KVCache.update`; return K/V with the slots before the new ones rescaled to
        one LayerNorm scale over them (all rows), as the original recomputes its mems."""
        k_all, v_all = super().update(layer_idx, cache_positions, k, v)  # [B, H, S, D]
        first = cache_positions if cache_positions.dim() == 1 else cache_positions.amin(dim=-1, keepdim=True)
        slots = torch.arange(self.max_len, device=k_all.device)  # [S]
        mem = slots < first.min() if cache_positions.dim() == 1 else slots < first  # [S] or [B, S]
        mem = mem.expand(k_all.shape[0], -1)  # [B, S]
        scale = torch.where(mem, self.amax[layer_idx], 0.0).amax() / ORIGINAL_LN_DIVISOR
        ratio = (self.denom[layer_idx] / (self.var[layer_idx] + self.eps * scale * scale)).sqrt()  # [B, S]
        ratio = ratio[:, None, :, None]  # [B, 1, S, 1]
        keep = mem[:, None, :, None]  # [B, 1, S, 1]
        out = []
        for buf, c in ((k_all, self.offsets[layer_idx, 0]), (v_all, self.offsets[layer_idx, 1])):
            c = c[None, :, None, :]  # [1, H, 1, D]
            rescaled = (c + (buf.to(c.dtype) - c) * ratio).to(buf.dtype)  # [B, H, S, D]
            out.append(torch.where(keep, rescaled, buf))
        return out[0], out[1]

    def reset(self) -> None:
        super().reset()
        self.var.zero_()
        self.amax.zero_()
        self.denom.fill_(1.0)

    def select(self, rows: torch.Tensor) -> OriginalMemsCache:
        rows = rows.to(self.k.device)
        cache = OriginalMemsCache.__new__(OriginalMemsCache)
        cache.k, cache.v = self.k.index_select(1, rows), self.v.index_select(1, rows)
        cache.var, cache.amax = self.var.index_select(1, rows), self.amax.index_select(1, rows)
        cache.denom = self.denom.index_select(1, rows)
        cache.offsets, cache.eps = self.offsets, self.eps
        return cache
