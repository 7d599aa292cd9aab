"""The decoding engine: cached decoding equals uncached recomputation, guidance rows, per-row streams,
hooks (forced tokens, stopping, masks) and the fixed-shape (compiled) step."""

from __future__ import annotations

import pytest
import torch

from cogview.generation.batching import image_uniforms
from cogview.generation.decode import DecodeStep, Hooks, as_rows, decode, prefill, sample_tokens
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


def test_a_range_inside_the_vocabulary_slices_the_output_layer(model: CogViewTransformer) -> None:
    # Image codes sit mid-vocabulary in some layouts: the step computes only those logits and the
    # ids come back shifted by the range's start; greedy still equals a full forward's argmax.
    allowed = range(200, 400)
    out = _tokens(model, PROMPT, torch.rand(2, 10), SamplingConfig(top_k=1), allowed=allowed)
    seq = PROMPT.clone()
    for t in range(10):
        logits = model(seq[None], torch.arange(len(seq)))[0, -1, allowed.start : allowed.stop]
        nxt = logits.argmax() + allowed.start
        assert out[0, t] == nxt and out[1, t] == nxt, f"step {t}"
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


def _greedy_reference(model: CogViewTransformer, prompt: torch.Tensor, out: torch.Tensor, allowed: torch.Tensor) -> list[int]:
    """Argmax over the allowed ids of an uncached forward after each prefix of ``out``."""
    ids = []
    for t in range(len(out)):
        logits = model(torch.cat([prompt, out[:t]])[None], torch.arange(len(prompt) + t))[0, -1]
        ids.append(int(logits.masked_fill(~allowed, float("-inf")).argmax()))
    return ids


@torch.no_grad()
def test_forced_runs_are_fed_and_the_rest_is_greedy(model: CogViewTransformer) -> None:
    steps = 10
    forced_steps = torch.tensor([True, True, False, False, True, False, True, True, True, False])
    forced = torch.randint(0, 100, (2, steps), generator=torch.Generator().manual_seed(4))
    prompts = torch.stack([PROMPT, PROMPT.flip(0)])  # two rows, each its own sample
    hooks = Hooks(allowed=ALLOWED, forced=forced, forced_steps=forced_steps)
    state = prefill(model, prompts, steps)
    out = torch.stack(list(decode(model, as_rows(state), torch.rand(2, steps), SamplingConfig(top_k=1), hooks)), 1)
    assert torch.equal(out[:, forced_steps], forced[:, forced_steps])
    mask = torch.zeros(512, dtype=torch.bool)
    mask[:100] = True
    for r in range(2):
        reference = torch.tensor(_greedy_reference(model, prompts[r], out[r], mask))
        assert torch.equal(out[r, ~forced_steps], reference[~forced_steps])


@torch.no_grad()
def test_stopped_rows_repeat_the_stop_id_and_the_loop_ends_early(model: CogViewTransformer) -> None:
    steps, stop = 20, 7
    uniforms = torch.rand(4, steps, generator=torch.Generator().manual_seed(2))
    allowed = torch.zeros(512, dtype=torch.bool)
    allowed[[stop, 8, 9, 10]] = True
    first = allowed.clone()
    first[stop] = False

    def run(every: int) -> torch.Tensor:
        hooks = Hooks(allowed=allowed, first_allowed=first, stop_id=stop, stop_check_every=every)
        state = prefill(model, PROMPT[None].expand(4, -1), steps)
        return torch.stack(list(decode(model, as_rows(state), uniforms, SamplingConfig(), hooks)), 1)

    full = run(every=steps + 1)  # never checked: all steps
    assert full.shape == (4, steps) and (full[:, 0] != stop).all()
    for row in full.tolist():
        if stop in row:
            assert set(row[row.index(stop) :]) == {stop}
    assert (full == stop).any(dim=1).all(), "every row should stop within 20 steps with 4 allowed ids"
    early = run(every=2)
    assert early.shape[1] < steps and torch.equal(early, full[:, : early.shape[1]])
    assert (early[:, -1] == stop).all()


def test_static_and_compiled_steps_give_the_eager_tokens(model: CogViewTransformer) -> None:
    # The fixed-shape step reads the whole cache under a slot mask; compiled with fullgraph=True
    # (aot_eager: the same graph capture as inductor, without minutes of code generation on a CPU),
    # on a batch of 3 padded to the bucket of 4, with guidance rows of different prompt lengths.
    uniforms = torch.rand(3, 12, generator=torch.Generator().manual_seed(6))
    config = SamplingConfig(temperature=0.8, top_k=20, guidance_scale=2.0, min_p=0.05)

    def run(step: DecodeStep | None) -> torch.Tensor:
        state = prefill(model, [PROMPT, UNCOND], 12)
        return torch.stack(list(sample_tokens(model, state, uniforms, config, ALLOWED, step)), 1)

    eager = run(None)
    assert torch.equal(run(DecodeStep(model, static=True)), eager)
    compiled = DecodeStep(model, compile=True, backend="aot_eager")
    assert torch.equal(run(compiled), eager)
    assert torch.equal(run(compiled)[1:2], run(None)[1:2])  # graphs are reused


def test_hook_errors_are_clear(model: CogViewTransformer) -> None:
    state = prefill(model, torch.stack([PROMPT, PROMPT]), 4)
    u, mask = torch.rand(2, 4), torch.ones(512, dtype=torch.bool)
    cases = [
        (Hooks(allowed=ALLOWED, first_allowed=mask), "first_allowed"),
        (Hooks(allowed=mask, forced_steps=torch.ones(4, dtype=torch.bool)), "forced ids"),
        (Hooks(allowed=mask, forced=torch.zeros(2, 4, dtype=torch.long), forced_steps=torch.ones(2, dtype=torch.bool)), "forced ids"),
    ]
    for hooks, message in cases:
        with pytest.raises(ValueError, match=message):
            next(decode(model, as_rows(state), u, SamplingConfig(), hooks))
    with pytest.raises(ValueError, match="uniforms"):
        next(decode(model, as_rows(state), torch.rand(3, 4), SamplingConfig(), Hooks(allowed=ALLOWED)))
    with pytest.raises(ValueError, match="steps"):
        next(decode(model, as_rows(state), torch.rand(2, 5), SamplingConfig(), Hooks(allowed=ALLOWED)))


def test_batch_buckets_and_cuda_graphs_need_a_gpu(model: CogViewTransformer) -> None:
    from cogview.generation.step import BATCH_BUCKETS, bucket

    assert [bucket(n) for n in (1, 3, 4, 5, 17, 128, 129)] == [1, 4, 4, 8, 32, 128, 129]
    assert list(BATCH_BUCKETS) == sorted(BATCH_BUCKETS)
    with pytest.raises(ValueError, match="CUDA"):
        DecodeStep(model, cuda_graph=True)  # the CUDA-graph path itself needs a GPU run (benchmarks/gpu_decode.py)


def test_a_compiled_cpu_step_freezes_its_weights_only_while_it_runs(model: CogViewTransformer) -> None:
    # Inductor reads `freezing` outside torch.compile's options (given there, the weights stayed
    # graph inputs and the GEMMs BLAS calls), so the CPU step sets it around each call only.
    from torch._inductor import config

    from cogview.generation.step import _frozen

    assert not config.freezing
    assert _frozen(lambda: config.freezing) is True
    assert not config.freezing
    step = DecodeStep(model, compile=True)  # nothing compiles until the first call
    assert step.static and step.compiled and getattr(step._step, "func", None) is _frozen
    assert getattr(DecodeStep(model, compile=True, backend="aot_eager")._step, "func", None) is None


def test_samples_leave_between_steps_and_the_others_keep_their_ids(model: CogViewTransformer) -> None:
    uniforms = torch.rand(4, 12, generator=torch.Generator().manual_seed(5))
    config = SamplingConfig(temperature=1.0, top_k=40, guidance_scale=2.0)
    full = _tokens(model, PROMPT, uniforms, config, uncond=UNCOND)  # [4, 12]
    rows_fed: list[int] = []
    handle = model.register_forward_pre_hook(lambda _, args: rows_fed.append(args[0].shape[0]))
    try:
        steps = sample_tokens(model, prefill(model, [PROMPT, UNCOND], 12), uniforms, config, ALLOWED)
        got = [next(steps)]
        got.append(steps.send(torch.tensor([True, False, True, True])))  # sample 1 leaves after step 0
        got.extend(next(steps) for _ in range(2, 6))
        got.append(steps.send([True, False, True]))  # then the second of samples 0, 2, 3
        got.extend(steps)
    finally:
        handle.remove()
    assert [tuple(g.shape) for g in got] == [(4,), (3,), (3,), (3,), (3,), (3,), (2,)] + [(2,)] * 5
    assert torch.equal(got[0], full[:, 0])
    assert all(torch.equal(got[i], full[[0, 2, 3], i]) for i in range(1, 6))
    assert all(torch.equal(got[i], full[[0, 3], i]) for i in range(6, 12))
    # Rows fed per forward: the prefill (2 prompts), then 8 guided rows, 6 after the first leave, 4 after the second.
    assert rows_fed == [2, 6, 6, 6, 6, 6, 4, 4, 4, 4, 4, 4]
    steps = sample_tokens(model, prefill(model, [PROMPT, UNCOND], 12), uniforms, config, ALLOWED)
    next(steps)
    with pytest.raises(StopIteration):
        steps.send(torch.zeros(4, dtype=torch.bool))  # everyone left: the generator ends
    steps = sample_tokens(model, prefill(model, [PROMPT, UNCOND], 12), uniforms, config, ALLOWED)
    next(steps)
    with pytest.raises(ValueError, match=r"\[4\] bool mask"):
        steps.send(torch.ones(3, dtype=torch.bool))


def test_a_mask_sent_inside_a_forced_run_applies_after_it(model: CogViewTransformer) -> None:
    forced = torch.randint(0, 100, (3, 6), generator=torch.Generator().manual_seed(1))
    flags = torch.tensor([False, True, True, False, False, False])
    hooks = Hooks(allowed=ALLOWED, forced=forced, forced_steps=flags)
    state = prefill(model, [PROMPT] * 3, 6)
    uniforms = torch.rand(3, 6, generator=torch.Generator().manual_seed(2))
    config = SamplingConfig(temperature=1.0, top_k=40)
    full = torch.stack(list(decode(model, as_rows(state), uniforms, config, hooks)), 1)  # [3, 6]
    steps = decode(model, as_rows(prefill(model, [PROMPT] * 3, 6)), uniforms, config, hooks)
    got = [next(steps), next(steps), steps.send([True, True, False])]  # sent while step 2 is forced
    got.extend(steps)
    assert [g.shape[0] for g in got] == [3, 3, 3, 2, 2, 2]
    assert all(torch.equal(got[i], full[:, i]) for i in range(3))
    assert all(torch.equal(got[i], full[:2, i]) for i in range(3, 6))
