"""OriginalMemsCache decodes as the released code's hidden-state cache (one LayerNorm scale over mems)."""

from __future__ import annotations

import pytest
import torch
from original_files import reference_mems_logits

from cogview.model import CogViewTransformer, KVCache, TransformerConfig, original_key_map
from cogview.model.original_cache import OriginalMemsCache

PROMPT, STEPS = 6, 10


def large_model() -> CogViewTransformer:
    """An original-layout model in float64 whose hidden states reach the hundreds, with a much larger
    activation at token 0 (where the released cache's LayerNorm scale and a per-step one part)."""
    torch.manual_seed(0)
    config = TransformerConfig(
        vocab_size=64, dim=32, n_layers=2, n_heads=4, max_seq_len=32, ln_input_scaling="original"
    )
    model = CogViewTransformer(config).double().eval()
    with torch.no_grad():
        model.tok_embeddings.weight.mul_(50.0)
        model.tok_embeddings.weight[0].mul_(8.0)
        for layer in model.layers:
            layer.attention_out_norm.weight.mul_(40.0)
            layer.ffn_out_norm.weight.mul_(40.0)
            layer.attention_norm.bias.normal_(0.0, 0.5)  # the K/V offsets W beta + b matter
    return model


@torch.no_grad()
def decode(model: CogViewTransformer, tokens: torch.Tensor, cache: KVCache, static: bool) -> torch.Tensor:
    B = tokens.shape[0]
    first = model(tokens[:1, :PROMPT], torch.arange(PROMPT), cache, kv_len=PROMPT)[:, -1]  # batch-1 prefill
    cache = cache.expand(B)  # shared across the rows, as the original's 1 -> nb expansion
    out = [first.expand(B, -1)]
    for t in range(PROMPT, tokens.shape[1]):
        slots = torch.tensor([[t]] * B) if t % 2 else torch.tensor([t])  # per-row and shared slots
        kv_len = None if static else t + 1
        out.append(model(tokens[:, t : t + 1], torch.tensor([t]), cache, slots, kv_len=kv_len)[:, -1])
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("static", [False, True])
def test_cached_decoding_equals_the_released_mems(static: bool) -> None:
    model = large_model()
    names = original_key_map(model.config.n_layers)
    state = {names[k]: v for k, v in model.state_dict().items()}
    tokens = torch.randint(1, 64, (3, PROMPT + STEPS), generator=torch.Generator().manual_seed(0))
    tokens[:, :PROMPT] = tokens[0, :PROMPT]
    tokens[:, 0] = 0
    reference = reference_mems_logits(state, tokens, PROMPT, model.config.n_heads, torch.float64)
    c = model.config
    max_len = PROMPT + STEPS
    plain = decode(
        model, tokens, KVCache(c.n_layers, 1, c.n_heads, max_len, c.head_dim, dtype=torch.float64), static
    )
    model.original_mems = True
    cache = model.new_cache(1, max_len)
    assert isinstance(cache, OriginalMemsCache)
    exact = decode(model, tokens, cache, static)
    assert reference.abs().max() > 10
    assert (plain - reference).abs().max() > 1e-6  # a plain KV cache differs: the test can see it
    assert (exact - reference).abs().max() < 1e-9


def test_original_mems_needs_the_original_scaling() -> None:
    model = CogViewTransformer(TransformerConfig())
    model.original_mems = True
    with pytest.raises(ValueError, match="ln_input_scaling='original'"):
        model.new_cache(1)
