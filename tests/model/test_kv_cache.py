"""KVCache: slot writes (shared and per-row), reset, batch expansion and selection."""

from __future__ import annotations

import pytest
import torch

from cogview.model import KVCache


def _cache(batch_size: int = 2) -> KVCache:
    return KVCache(n_layers=3, batch_size=batch_size, n_heads=2, max_len=8, head_dim=4)


def test_shapes_and_properties() -> None:
    cache = _cache()
    assert cache.k.shape == cache.v.shape == (3, 2, 2, 8, 4)
    assert (cache.n_layers, cache.batch_size, cache.max_len) == (3, 2, 8)


def test_update_writes_the_given_slots_of_one_layer() -> None:
    cache = _cache()
    k, v = torch.randn(2, 2, 3, 4), torch.randn(2, 2, 3, 4)
    k_all, v_all = cache.update(1, torch.tensor([2, 3, 4]), k, v)
    assert k_all.shape == (2, 2, 8, 4)
    torch.testing.assert_close(k_all[:, :, 2:5], k)
    torch.testing.assert_close(v_all[:, :, 2:5], v)
    assert cache.k[1, :, :, :2].abs().sum() == 0 and cache.k[1, :, :, 5:].abs().sum() == 0
    assert cache.k[0].abs().sum() == 0 and cache.k[2].abs().sum() == 0


def test_update_with_per_row_slots() -> None:
    cache = _cache()
    k = torch.randn(2, 2, 2, 4)
    cache.update(0, torch.tensor([[0, 1], [5, 6]]), k, k)
    torch.testing.assert_close(cache.k[0, 0, :, 0:2], k[0])
    torch.testing.assert_close(cache.k[0, 1, :, 5:7], k[1])
    assert cache.k[0, 1, :, 0:2].abs().sum() == 0


def test_update_casts_to_the_cache_dtype() -> None:
    cache = KVCache(1, 1, 1, 4, 2, dtype=torch.bfloat16)
    k_all, _ = cache.update(0, torch.tensor([0]), torch.ones(1, 1, 1, 2), torch.ones(1, 1, 1, 2))
    assert k_all.dtype == torch.bfloat16


def test_update_rejects_a_wrong_batch_size() -> None:
    cache = _cache(batch_size=1)
    with pytest.raises(ValueError, match="KVCache.expand"):
        cache.update(0, torch.tensor([0]), torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4))


def test_reset_zeroes_everything() -> None:
    cache = _cache()
    cache.update(0, torch.tensor([0]), torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4))
    cache.reset()
    assert cache.k.abs().sum() == 0 and cache.v.abs().sum() == 0


def test_expand_repeats_rows_and_keeps_the_source() -> None:
    cache = _cache(batch_size=1)
    k = torch.randn(1, 2, 3, 4)
    cache.update(0, torch.arange(3), k, k)
    big = cache.expand(4)
    assert big.batch_size == 4
    for row in range(4):
        torch.testing.assert_close(big.k[:, row], cache.k[:, 0])
    big.update(0, torch.tensor([3]), torch.ones(4, 2, 1, 4), torch.ones(4, 2, 1, 4))
    assert cache.k[0, :, :, 3].abs().sum() == 0  # writes to the copy do not reach the source
    with pytest.raises(ValueError):
        cache.expand(0)


def test_select_keeps_the_given_rows() -> None:
    cache = _cache(batch_size=3)
    cache.k.normal_()
    kept = cache.select(torch.tensor([2, 0]))
    torch.testing.assert_close(kept.k[:, 0], cache.k[:, 2])
    torch.testing.assert_close(kept.k[:, 1], cache.k[:, 0])


def test_invalid_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="max_len=0"):
        KVCache(1, 1, 1, 0, 2)


def test_the_compile_friendly_update_writes_what_update_writes() -> None:
    g = torch.Generator().manual_seed(0)
    for slots in (torch.tensor([3, 4]), torch.tensor([[1, 2], [5, 6], [0, 7]])):
        a, b = KVCache(2, 3, 2, 8, 4), KVCache(2, 3, 2, 8, 4)
        k, v = torch.randn(3, 2, 2, 4, generator=g), torch.randn(3, 2, 2, 4, generator=g)
        ka, va = a.update(1, slots, k, v)
        kb, vb = b._update_in_place(1, slots, k, v)
        assert torch.equal(a.k, b.k) and torch.equal(a.v, b.v)
        assert torch.equal(ka, kb) and torch.equal(va, vb)
