"""Beam-search captions on a tiny random model: against a plain search over full forward passes."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from PIL import Image
from small_parts import small_text_tokenizer

from cogview.generation.beam import beam_search
from cogview.generation.decode import DecodeStep, prefill
from cogview.generation.reranking import (
    CAPTION_CANDIDATE_LOG_RATIO,
    best_captions,
    caption_scores,
    likely_captions,
)
from cogview.images import to_pil
from cogview.model import PRESETS, CogViewTransformer
from cogview.pipeline import CogViewPipeline
from cogview.tokenizers.image import ImageTokenizer
from cogview.tokenizers.vocab import default_vocab
from cogview.tokenizers.vqvae import VQVAE, VQVAE_PRESETS


@pytest.fixture(scope="module")
def pipe() -> CogViewPipeline:
    torch.manual_seed(0)
    text, image = small_text_tokenizer(), ImageTokenizer(VQVAE(VQVAE_PRESETS["tiny"]).eval())
    vocab = default_vocab(image, text)
    models = {}
    for k, job in enumerate(("text_to_image", "image_to_text")):
        torch.manual_seed(k)
        models[job] = CogViewTransformer(dataclasses.replace(PRESETS["tiny"], vocab_size=vocab.size)).eval()
    return CogViewPipeline(None, text, image, vocab, job_models=models)


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    return to_pil(torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)))


@torch.inference_mode()
def plain_beam(model, prefix, width, steps, allowed, first, stop):
    """Beam search as written in a textbook: every step a full forward pass of every open beam."""
    open_, done = [((), 0.0)], []
    for i in range(steps):
        seqs = torch.stack([torch.cat([prefix, torch.tensor(ids, dtype=torch.long)]) for ids, _ in open_])
        logits = model(seqs, torch.arange(seqs.shape[1]))[:, -1].float()
        logp = logits.masked_fill(~(first if i == 0 else allowed), float("-inf")).log_softmax(-1)
        grown = sorted(
            (
                (ids, s + float(logp[b, t]), t)
                for b, (ids, s) in enumerate(open_)
                for t in range(logp.shape[1])
            ),
            key=lambda x: -x[1],
        )[: 2 * width]
        open_ = []
        for ids, score, t in grown:
            if score == float("-inf") or len(open_) == width:
                break
            if t == stop or i == steps - 1:
                done.append((ids if t == stop else (*ids, t), score))
            else:
                open_.append(((*ids, t), score))
        done = sorted(done, key=lambda x: -x[1])[:width]
        if not open_ or (len(done) == width and open_[0][1] <= done[-1][1]):
            break
    return done


@pytest.mark.parametrize("width", [1, 3, 6])
def test_beam_search_equals_a_plain_search_over_full_forwards(pipe, images, width: int) -> None:
    cap = pipe.captioner
    allowed = cap.allowed("en")
    first = allowed.clone()
    first[cap.end] = False
    prefixes = cap.prefix(cap.codes(images))
    state = prefill(cap.transformer, prefixes, 6)
    found = beam_search(cap.transformer, state, width, 6, allowed, cap.end, first_allowed=first)
    for prefix, hyps in zip(prefixes, found, strict=True):
        want = plain_beam(cap.transformer, prefix, width, 6, allowed, first, cap.end)
        assert [h.ids for h in hyps] == [ids for ids, _ in want]
        assert [h.score for h in hyps] == pytest.approx([s for _, s in want], abs=1e-4)
        assert all(s <= 0 for _, s in want) and len(hyps) == width


def test_a_beam_of_one_is_the_greedy_caption(pipe, images) -> None:
    greedy = pipe.caption(images, "en", max_tokens=7)
    assert [b[0][0] for b in pipe.captioner.beam_captions(images, "en", 1, max_tokens=7)] == greedy


def test_beam_captions_are_distinct_ranked_and_batch_free(pipe, images) -> None:
    found = pipe.captioner.beam_captions(images, "zh", 4, max_tokens=5)
    for texts in found:
        scores = [s for _, s in texts]
        assert scores == sorted(scores, reverse=True) and len({t for t, _ in texts}) == len(texts)
    assert (
        pipe.captioner.beam_captions(images, "zh", 4, max_tokens=5, max_batch_size=4) == found
    )  # one image a call
    flat = pipe.caption(images, "zh", 2, beams=4, max_tokens=5)
    assert flat == [t for texts in found for t, _ in texts[:2]]


def test_beams_refuse_what_they_cannot_do(pipe, images) -> None:
    with pytest.raises(ValueError, match="does not sample"):
        pipe.caption(images, "en", beams=3, top_k=5)
    with pytest.raises(ValueError, match="finds at most 3 captions"):
        pipe.caption(images, "en", 4, beams=3)
    with pytest.raises(ValueError, match="leave beams out"):
        pipe.caption(images, "en", candidates=3, beams=3)
    with pytest.raises(ValueError, match="beams must"):
        pipe.caption(images, "en", beams=0)
    with pytest.raises(ValueError, match="steps"):
        model = pipe.captioner.transformer
        beam_search(model, prefill(model, [torch.tensor([1, 2])], 2), 2, 3, pipe.captioner.allowed("en"), 1)
    pipe.max_samples, before = 3, pipe.max_samples
    try:  # the limit counts captions returned: a beam's rows live one chunk of max_batch_size at a time
        assert pipe.caption(images, "en", beams=3, max_tokens=4) == [
            texts[0][0] for texts in pipe.captioner.beam_captions(images, "en", 3, max_tokens=4)
        ]
    finally:
        pipe.max_samples = before


def test_caption_candidates_are_the_beam_re_ranked_or_samples_when_asked(pipe, images) -> None:
    cap, t2i = pipe.captioner, pipe.text_to_image
    chosen = pipe.caption(images, "en", candidates=4, max_tokens=5)
    assert chosen == best_captions(cap, t2i, images, "en", 4, max_tokens=5)
    codes = cap.codes(images)
    kept = 0
    for i, found in enumerate(cap.beam_captions(images, "en", 4, max_tokens=5)):
        texts = likely_captions(found)
        assert texts == [t for t, s in found if s >= found[0][1] - CAPTION_CANDIDATE_LOG_RATIO]
        kept += len(texts)
        if len(texts) == 1:
            assert chosen[i] == texts[0]
            continue
        text_scores, image_scores = caption_scores(cap, t2i, codes[i], texts)
        assert chosen[i] == texts[int((text_scores + image_scores).argmax())]
    assert kept > len(images)  # some image had a choice (a random model is unsure)
    # Sampling settings: the greedy caption and sampled ones, seeded.
    sampled = pipe.caption(images, "en", candidates=4, max_tokens=5, top_k=6, seed=3)
    assert sampled == pipe.caption(images, "en", candidates=4, max_tokens=5, top_k=6, seed=3)
    drawn = pipe.caption(images, "en", 3, max_tokens=5, top_k=6, temperature=1.0, seed=3)
    greedy = pipe.caption(images, "en", max_tokens=5)
    for i in range(len(images)):
        assert sampled[i] in {greedy[i], *drawn[3 * i : 3 * i + 3]}


def test_a_prompt_whose_search_is_over_leaves_the_batch(pipe, images) -> None:
    """Prompt 0 is pushed to stop at its second step; the later steps feed only the other two
    prompts' beams, whose texts stay the textbook search's."""
    cap, width = pipe.captioner, 3
    allowed = cap.allowed("en")
    first = allowed.clone()
    first[cap.end] = False
    prefixes = cap.prefix(cap.codes(images))
    inner, fed_rows = DecodeStep(cap.transformer), []

    def step(cache, tokens, slots, inputs, kv_len):
        logits = inner(cache, tokens, slots, inputs, kv_len=kv_len)
        fed_rows.append(logits.shape[0])
        if logits.shape[0] == len(images) * width:  # prompt 0's beams are the first rows
            logits = logits.clone()
            logits[:width, -1, cap.end] += 100.0
        return logits

    state = prefill(cap.transformer, prefixes, 6)
    found = beam_search(cap.transformer, state, width, 6, allowed, cap.end, first_allowed=first, step=step)
    assert fed_rows[0] == 3 * width and fed_rows[1:] and set(fed_rows[1:]) == {2 * width}
    assert all(len(h.ids) == 1 for h in found[0])  # one token, then the stop
    for prefix, hyps in zip(prefixes[1:], found[1:], strict=True):
        want = plain_beam(cap.transformer, prefix, width, 6, allowed, first, cap.end)
        assert [h.ids for h in hyps] == [ids for ids, _ in want]
