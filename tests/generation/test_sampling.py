"""Logits processors and samplers: top-k/top-p per row, masked ids, guidance, seeded draws."""

from __future__ import annotations

import pytest
import torch

from cogview.generation.sampling import (
    SamplingConfig,
    apply_temperature,
    cfg_combine,
    min_p_filter,
    process_logits,
    resolve_sampling,
    sample_from_uniform,
    top_k_filter,
    top_p_filter,
)


def _logits(B: int = 4, V: int = 50, seed: int = 0) -> torch.Tensor:
    return torch.randn(B, V, generator=torch.Generator().manual_seed(seed)) * 3


def _only(logits: torch.Tensor, allowed: range) -> torch.Tensor:
    """-inf outside ``allowed``, as a job masks ids before processing (decode, captioning)."""
    keep = torch.zeros(logits.shape[-1], dtype=torch.bool)
    keep[allowed.start : allowed.stop] = True
    return logits.masked_fill(~keep, float("-inf"))


def test_processors_do_not_modify_their_input() -> None:
    logits = _logits()
    before = logits.clone()
    for out in (
        apply_temperature(logits, 0.5),
        top_k_filter(logits, 3),
        top_p_filter(logits, 0.5),
        min_p_filter(logits, logits.flip(0), 0.5),
        cfg_combine(logits, logits.flip(0), 2.0),
    ):
        assert out.shape == logits.shape
    torch.testing.assert_close(logits, before, rtol=0, atol=0)


def test_top_k_1_equals_argmax() -> None:
    logits = _logits(B=8)
    for seed in range(5):
        u = torch.rand(8, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(sample_from_uniform(top_k_filter(logits, 1), u), logits.argmax(-1))


def test_samples_stay_inside_top_k_and_the_allowed_range() -> None:
    logits = _logits(B=16, V=100)
    allowed = range(30, 60)
    filtered = top_k_filter(_only(logits, allowed), 5)
    top5 = _only(logits, allowed).topk(5, dim=-1).indices  # [B, 5]
    g = torch.Generator().manual_seed(0)
    for _ in range(100):
        ids = sample_from_uniform(filtered, torch.rand(16, generator=g))
        assert ((ids >= 30) & (ids < 60)).all()
        assert (top5 == ids[:, None]).any(-1).all()


def test_top_p_works_per_row_at_any_batch_size() -> None:
    # Row 0 is peaked (one id holds > 0.9), row 1 flat: p=0.9 keeps 1 id and all ids respectively.
    logits = torch.stack([torch.tensor([10.0, 0, 0, 0, 0]), torch.zeros(5)])
    out = top_p_filter(logits, 0.9)
    assert torch.isfinite(out[0]).sum() == 1 and torch.isfinite(out[0, 0])
    assert torch.isfinite(out[1]).all()
    # Each row alone gives the same result as in the batch.
    for row in range(2):
        torch.testing.assert_close(top_p_filter(logits[row : row + 1], 0.9), out[row : row + 1])


def test_top_p_keeps_the_id_that_crosses_p() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    out = top_p_filter(probs.log(), 0.6)  # 0.5 < 0.6, so 0.3 is needed too (shift right)
    assert torch.isfinite(out).tolist() == [[True, True, False, False]]
    assert torch.isfinite(top_p_filter(probs.log(), 0.0)).all()  # 0 switches it off (the original's flag)
    assert torch.isfinite(top_p_filter(probs.log(), 1.0)).all()


def test_the_same_generator_seed_gives_the_same_tokens() -> None:
    logits = _logits(B=6, V=40)
    a = [
        sample_from_uniform(logits, torch.rand(6, generator=torch.Generator().manual_seed(7)))
        for _ in range(2)
    ]
    assert torch.equal(a[0], a[1])


def test_inverse_cdf_sampling_matches_the_distribution() -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0, float("-inf")]])
    u = torch.rand(20000, generator=torch.Generator().manual_seed(0))
    ids = sample_from_uniform(logits.expand(20000, 4), u)
    freq = torch.bincount(ids, minlength=4).float() / 20000
    torch.testing.assert_close(freq, logits.softmax(-1)[0], atol=0.015, rtol=0)
    assert freq[3] == 0


def test_inverse_cdf_never_returns_a_masked_id_at_the_edges() -> None:
    logits = torch.full((3, 10), float("-inf"))
    logits[:, 4] = 0.0
    logits[:, 6] = 1.0
    u = torch.tensor([0.0, 1.0 - 2**-24, 0.5])
    ids = sample_from_uniform(logits, u)
    assert set(ids.tolist()) <= {4, 6} and ids[0] == 4 and ids[1] == 6


def test_cfg_combine_formula_scale_one_and_masked_ids() -> None:
    cond, uncond = _logits(seed=1), _logits(seed=2)
    assert cfg_combine(cond, uncond, 1.0) is cond  # bit for bit: guidance off
    torch.testing.assert_close(cfg_combine(cond, uncond, 3.0), uncond + 3.0 * (cond - uncond))
    torch.testing.assert_close(cfg_combine(cond, uncond, 0.0), uncond)
    masked_c, masked_u = _only(cond, range(0, 10)), _only(uncond, range(0, 10))
    out = cfg_combine(masked_c, masked_u, 2.5)
    assert not out.isnan().any() and torch.isneginf(out[:, 10:]).all()


def test_min_p_keeps_ids_plausible_under_the_reference_distribution() -> None:
    logits, reference = _logits(seed=3), _logits(seed=4)
    out = min_p_filter(logits, reference, 0.2)
    probs = reference.softmax(-1)
    keep = probs >= 0.2 * probs.max(-1, keepdim=True).values  # [B, V]
    assert torch.equal(torch.isfinite(out), keep)
    torch.testing.assert_close(out[keep], logits[keep])  # kept ids keep their own logits
    assert bool(keep[torch.arange(4), reference.argmax(-1)].all())  # the reference's best survives
    assert min_p_filter(logits, reference, 0.0) is logits
    # Guided: an id that guidance would make the favourite but the conditional model finds
    # implausible (cond 1e-3 of the best, uncond far lower) is dropped.
    cond = torch.tensor([[0.0, -7.0, -1.0]])
    uncond = torch.tensor([[0.0, -20.0, -1.0]])
    guided = cfg_combine(cond, uncond, 2.0)
    assert guided.argmax().item() == 1
    assert min_p_filter(guided, cond, 0.05).argmax().item() == 0


def test_process_logits_applies_temperature_then_filters() -> None:
    logits = _logits()
    cfg = SamplingConfig(temperature=0.5, top_k=3)
    torch.testing.assert_close(process_logits(logits, cfg), top_k_filter(logits / 0.5, 3))
    assert process_logits(logits.to(torch.bfloat16), cfg).dtype == torch.float32
    # min-p comes first, on the raw logits (or a reference's), so every job's loop honours it.
    cfg = SamplingConfig(temperature=0.5, top_k=3, min_p=0.5)
    torch.testing.assert_close(
        process_logits(logits, cfg), top_k_filter(min_p_filter(logits, logits, 0.5) / 0.5, 3)
    )
    reference = _logits(seed=9)
    torch.testing.assert_close(
        process_logits(logits, cfg, reference), top_k_filter(min_p_filter(logits, reference, 0.5) / 0.5, 3)
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"temperature": 0.0},
        {"temperature": float("nan")},
        {"top_k": -1},
        {"top_k": 2.5},
        {"top_p": 1.5},
        {"guidance_scale": -1.0},
        {"min_p": 1.0},
        {"min_p": -0.1},
        {"beam_width": 3},
    ],
)
def test_sampling_config_refuses_bad_values(bad: dict) -> None:
    with pytest.raises(ValueError):
        SamplingConfig.from_dict(bad)


def test_sampling_config_round_trip_and_replace() -> None:
    cfg = SamplingConfig(temperature=0.9, top_k=50, top_p=0.95, guidance_scale=2.0)
    assert SamplingConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.replace(top_k=None, guidance_scale=1.0) == SamplingConfig(0.9, 50, 0.95, 1.0)
    assert cfg.guided and not cfg.replace(guidance_scale=1).guided


def test_resolve_sampling_takes_a_config_then_per_field_overrides() -> None:
    defaults, given = SamplingConfig(top_k=20), SamplingConfig(temperature=0.5)
    assert resolve_sampling(defaults, None, {}) == defaults
    assert resolve_sampling(defaults, given, {}) == given  # a whole config replaces the defaults
    assert resolve_sampling(defaults, given, {"top_k": 3, "top_p": None}) == given.replace(top_k=3)
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['top_kk'\]"):
        resolve_sampling(defaults, None, {"top_kk": 3})
    with pytest.raises(TypeError, match="min_p"):  # a job that takes only some fields one by one
        resolve_sampling(defaults, None, {"min_p": 0.1}, accepted=("temperature", "top_k", "top_p"))
    with pytest.raises(TypeError, match="sampling must be a SamplingConfig"):
        resolve_sampling(defaults, {"top_k": 3}, {})  # type: ignore[arg-type]
