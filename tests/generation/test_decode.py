"""The decode loop: cached decoding equals uncached recomputation, guidance rows, per-row streams."""

from __future__ import annotations

import pytest
import torch

from cogview.generation.batching import image_uniforms
from cogview.generation.decode import prefill, sample_tokens
from cogview.generation.sampling import SamplingConfig, cfg_combine
from cogview.model import PRESETS, CogViewTransformer

ALLOWED = range(0, 100)


@pytest.fixture(scope="module")
def model() -> CogViewTransformer:
    torch.manual_seed(0)
    return CogViewTransformer(PRESETS["tiny"]).eval()


PROMPT = torch.tensor([300, 301, 302, 303, 304, 305])
UNCOND = torch.tensor([300, 304, 305])


def _tokens(
    model: CogViewTransformer,
    prompt: torch.Tensor,
    uniforms: torch.Tensor,
    config: SamplingConfig,
    allowed: range | torch.Tensor = ALLOWED,
    uncond: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[N, steps]`` tokens of one prefill and ``uniforms`` ``[N, steps]`` (the jobs' path)."""
    state = prefill(model, [prompt] if uncond is None else [prompt, uncond], uniforms.shape[1])
    return torch.stack(list(sample_tokens(model, state, uniforms, config, allowed)), dim=1)


@torch.no_grad()
def _full_logits(model: CogViewTransformer, seq: torch.Tensor) -> torch.Tensor:
    return model(seq[None], torch.arange(len(seq)))[0, -1, ALLOWED.start : ALLOWED.stop]  # [V']


def test_kv_len_reads_a_prefix_of_the_cache_with_the_same_result(model: CogViewTransformer) -> None:
    tokens = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(0))
    outs = []
    for kv_len in (None, "exact"):
        cache = model.new_cache(2, max_len=40)
        steps = [model(tokens[:, :8], torch.arange(8), cache, kv_len=None if kv_len is None else 8)]
        for t in range(8, 12):
            n = None if kv_len is None else t + 1
            steps.append(model(tokens[:, t : t + 1], torch.tensor([t]), cache, kv_len=n))
        outs.append(torch.cat(steps, dim=1))
    torch.testing.assert_close(outs[0], outs[1])
    torch.testing.assert_close(outs[0], model(tokens, torch.arange(12)), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="kv_len"):
        model(tokens, torch.arange(12), model.new_cache(2, max_len=40), kv_len=41)
    with pytest.raises(ValueError, match="needs a cache"):
        model(tokens, torch.arange(12), kv_len=12)


def test_cached_greedy_decoding_equals_uncached_recomputation(model: CogViewTransformer) -> None:
    out = _tokens(model, PROMPT, torch.rand(1, 12), SamplingConfig(top_k=1))
    seq = PROMPT.clone()
    for t in range(12):
        nxt = _full_logits(model, seq).argmax() + ALLOWED.start
        assert out[0, t] == nxt, f"step {t}"
        seq = torch.cat([seq, nxt[None]])


def test_guided_rows_use_their_own_prompt_positions(model: CogViewTransformer) -> None:
    # Greedy guided decoding must equal argmax of uncond + s (cond - uncond) where both logits come
    # from uncached forwards over each prompt followed by the generated tokens.
    scale = 3.0
    out = _tokens(
        model, PROMPT, torch.rand(1, 10), SamplingConfig(top_k=1, guidance_scale=scale), uncond=UNCOND
    )
    generated = torch.tensor([], dtype=torch.long)
    for t in range(10):
        cond = _full_logits(model, torch.cat([PROMPT, generated]))
        uncond = _full_logits(model, torch.cat([UNCOND, generated]))
        nxt = cfg_combine(cond, uncond, scale).argmax() + ALLOWED.start
        assert out[0, t] == nxt, f"step {t}"
        generated = torch.cat([generated, nxt[None]])


def test_guidance_scale_one_equals_the_unguided_path(model: CogViewTransformer) -> None:
    uniforms = torch.rand(4, 20, generator=torch.Generator().manual_seed(3))
    cfg = SamplingConfig(temperature=1.0, top_k=40)
    plain = torch.stack(list(sample_tokens(model, prefill(model, [PROMPT], 20), uniforms, cfg, ALLOWED)), 1)
    with_uncond_rows = torch.stack(
        list(sample_tokens(model, prefill(model, [PROMPT, UNCOND], 20), uniforms, cfg, ALLOWED)), 1
    )
    assert torch.equal(plain, with_uncond_rows)
    guided = torch.stack(
        list(
            sample_tokens(
                model,
                prefill(model, [PROMPT, UNCOND], 20),
                uniforms,
                cfg.replace(guidance_scale=4.0),
                ALLOWED,
            )
        ),
        1,
    )
    assert not torch.equal(plain, guided)


def test_guided_min_p_samples_only_ids_the_conditional_model_finds_plausible(
    model: CogViewTransformer,
) -> None:
    steps, min_p = 6, 0.9
    uniforms = torch.rand(3, steps, generator=torch.Generator().manual_seed(5))
    cfg = SamplingConfig(temperature=1.0, guidance_scale=30.0, min_p=min_p)
    out = torch.stack(
        list(sample_tokens(model, prefill(model, [PROMPT, UNCOND], steps), uniforms, cfg, ALLOWED)), 1
    )  # [3, steps]
    unfiltered = torch.stack(
        list(
            sample_tokens(
                model, prefill(model, [PROMPT, UNCOND], steps), uniforms, cfg.replace(min_p=0.0), ALLOWED
            )
        ),
        1,
    )
    assert not torch.equal(out, unfiltered)  # strong guidance picks implausible ids without it
    for row in out:
        for i, token in enumerate(row.tolist()):
            probs = _full_logits(model, torch.cat([PROMPT, row[:i]])).softmax(-1)  # conditional model
            assert probs[token] >= min_p * probs.max() * (1 - 1e-5)


def test_samples_stay_in_the_allowed_range(model: CogViewTransformer) -> None:
    uniforms = torch.rand(5, 30, generator=torch.Generator().manual_seed(0))
    out = _tokens(model, PROMPT, uniforms, SamplingConfig(), allowed=range(40, 50))
    assert ((out >= 40) & (out < 50)).all()
    keep = torch.zeros(512, dtype=torch.bool)
    keep[[3, 7, 11]] = True
    out = _tokens(model, PROMPT, uniforms, SamplingConfig(), allowed=keep)
    assert set(out.unique().tolist()) <= {3, 7, 11}


def test_seeded_and_each_row_depends_only_on_its_own_stream(model: CogViewTransformer) -> None:
    config = SamplingConfig(temperature=1.2)
    batch = _tokens(model, PROMPT, image_uniforms([1, 2, 3], 16), config)
    assert torch.equal(batch, _tokens(model, PROMPT, image_uniforms([1, 2, 3], 16), config))
    alone = _tokens(model, PROMPT, image_uniforms([2], 16), config)
    assert torch.equal(batch[1:2], alone)
    assert not torch.equal(batch[0], batch[1])


def test_the_prompt_state_is_shared_not_consumed(model: CogViewTransformer) -> None:
    state = prefill(model, [PROMPT], 8)
    before = state.cache.k.clone()
    u = torch.rand(2, 8, generator=torch.Generator().manual_seed(0))
    a = torch.stack(list(sample_tokens(model, state, u, SamplingConfig(), ALLOWED)), 1)
    b = torch.stack(list(sample_tokens(model, state, u, SamplingConfig(), ALLOWED)), 1)
    assert torch.equal(a, b) and torch.equal(state.cache.k, before)


def test_clear_errors(model: CogViewTransformer) -> None:
    with pytest.raises(ValueError, match="max_seq_len"):
        prefill(model, [torch.arange(100)], 29)
    with pytest.raises(ValueError, match="prefilled"):
        next(
            sample_tokens(
                model,
                prefill(model, [PROMPT], 4),
                torch.rand(1, 4),
                SamplingConfig(guidance_scale=2),
                ALLOWED,
            )
        )
    state, u = prefill(model, [PROMPT], 4), torch.rand(1, 4)
    for bad, message in (
        (range(0, 600), "contiguous"),
        (range(3, 3), "contiguous"),
        (torch.zeros(512, dtype=torch.bool), "bool mask"),
        (torch.ones(9, dtype=torch.bool), "bool mask"),
    ):
        with pytest.raises(ValueError, match=message):
            next(sample_tokens(model, state, u, SamplingConfig(), bad))
