"""Captioning, scoring, reranking and super-resolution on tiny random models: layouts, seeds, folders."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from small_parts import small_text_tokenizer

from cogview.data.windows import Window, magnify_windows
from cogview.generation.sampling import SamplingConfig
from cogview.generation.super_resolution import SuperResolution
from cogview.images import to_pil
from cogview.language import is_cjk
from cogview.model import PRESETS, CogViewTransformer
from cogview.pipeline import CogViewPipeline, PipelineConfig, default_model_path
from cogview.serialization import CheckpointError, write_json
from cogview.tokenizers.image import ImageTokenizer
from cogview.tokenizers.vocab import default_vocab
from cogview.tokenizers.vqvae import VQVAE, VQVAE_PRESETS

SR_WINDOW = 4  # tiny tokenizer: 32 px -> 8x8 codes; windows of 4x4 low / 8x8 high codes


def _model(vocab_size: int, seed: int) -> CogViewTransformer:
    torch.manual_seed(seed)
    return CogViewTransformer(dataclasses.replace(PRESETS["tiny"], vocab_size=vocab_size)).eval()


def _with_model(sr: SuperResolution, model: CogViewTransformer) -> SuperResolution:
    return SuperResolution(
        model, sr.text_tokenizer, sr.image_tokenizer, sr.vocab, window=sr.window, sampling=sr.sampling
    )


@pytest.fixture(scope="module")
def pipe() -> CogViewPipeline:
    torch.manual_seed(0)
    text, image = small_text_tokenizer(), ImageTokenizer(VQVAE(VQVAE_PRESETS["tiny"]).eval())
    vocab = default_vocab(image, text)
    models = {
        job: _model(vocab.size, k)
        for k, job in enumerate(("text_to_image", "image_to_text", "super_resolution"))
    }
    return CogViewPipeline(None, text, image, vocab, job_models=models, sr_window=SR_WINDOW)


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    g = torch.Generator().manual_seed(1)
    return to_pil(torch.rand(3, 3, 32, 32, generator=g))


# --- captioning -------------------------------------------------------------------------------


def test_caption_prefix_is_the_image_first_layout(pipe: CogViewPipeline) -> None:
    v = pipe.vocab
    codes = torch.tensor([[[1, 2], [3, 4]]])
    prefix = pipe.captioner.prefix(codes)
    expected = [
        v.token_id("[BASE]"),
        v.token_id("[BOI1]"),
        1,
        2,
        3,
        4,
        v.token_id("[EOI1]"),
        v.token_id("[ROI1]"),
    ]
    assert prefix.tolist() == [expected]  # image codes are unified ids 0..K-1


def test_captions_are_in_the_requested_language_and_seeded(pipe: CogViewPipeline, images) -> None:
    zh = pipe.caption(images, "zh", 2, seed=5, top_k=50, max_tokens=6)
    assert len(zh) == 6 and all(isinstance(c, str) and c for c in zh)
    assert not any(ch.isascii() and ch.islower() for c in zh for ch in c)  # capitals: OK按钮, A型血
    en = pipe.caption(images, "en", 1, seed=5, top_k=50, max_tokens=6)
    assert not any(is_cjk(ch) for c in en for ch in c)
    # Same seed, same captions, however they are batched; greedy ignores the seed.
    assert pipe.caption(images, "zh", 2, seed=5, top_k=50, max_tokens=6, max_batch_size=1) == zh
    assert pipe.caption(images, "en", seed=1, max_tokens=6) == pipe.caption(
        images, "en", seed=2, max_tokens=6
    )
    with pytest.raises(ValueError, match="language"):
        pipe.caption(images, "fr")


def test_caption_stops_at_end_token(pipe: CogViewPipeline, images) -> None:
    cap = pipe.captioner
    eot = pipe.vocab.token_id("[EOT]")

    def favour_end(module, inputs, logits):  # [EOT] becomes the most likely token everywhere
        logits = logits.clone()
        logits[..., eot] += 1e3
        return logits

    handle = cap.transformer.register_forward_hook(favour_end)
    try:
        captions = pipe.caption(images[:1], "en", max_tokens=8)
    finally:
        handle.remove()
    # The first token may not end the caption; the second does.
    assert len(pipe.text_tokenizer.encode(captions[0])) == 1


def test_greedy_captions_equal_the_argmax_of_a_full_forward(pipe: CogViewPipeline, images) -> None:
    """The engine's caption (allowed-id mask, no [EOT] first, stop at [EOT]) token by token."""
    cap, v = pipe.captioner, pipe.vocab
    eot = v.token_id("[EOT]")
    allowed = cap.allowed("en")
    captions = cap.caption(images, "en", max_tokens=7)
    for image, caption in zip(images, captions, strict=True):
        seq = cap.prefix(cap.codes([image]))[0]
        P, ids = len(seq), []
        with torch.no_grad():
            for t in range(7):
                logits = cap.transformer(seq[None], torch.arange(len(seq)))[0, -1]
                mask = allowed.clone()
                mask[eot] = t > 0
                nxt = int(logits.masked_fill(~mask, float("-inf")).argmax())
                if nxt == eot:
                    break
                ids.append(nxt)
                seq = torch.cat([seq, torch.tensor([nxt])])
        assert len(seq) - P == len(ids)
        assert caption == pipe.text_tokenizer.decode_unified(ids, v).strip()


def test_scores_equal_a_full_forward_with_image_logits_masked(pipe: CogViewPipeline, images) -> None:
    cap, v = pipe.captioner, pipe.vocab
    prompts = ["a red circle", "蓝色背景上左边有一个红色圆形", "7"]
    codes = cap.codes(images)
    scores, lengths = cap.log_likelihoods(codes, prompts, max_batch_size=2)
    for m, text in enumerate(prompts):
        target = pipe.text_tokenizer.encode_unified(text, v) + [v.token_id("[EOT]")]
        seq = torch.cat([cap.prefix(codes[m : m + 1])[0], torch.tensor(target)])
        with torch.no_grad():
            logits = cap.transformer(seq[None, :-1], torch.arange(len(seq) - 1))[0].float()
        logits[:, v.image_range.start : v.image_range.stop] = float("-inf")
        logp = logits.log_softmax(-1)
        P = seq.shape[0] - len(target)
        expected = sum(float(logp[P - 1 + k, t]) for k, t in enumerate(target))
        assert scores[m].item() == pytest.approx(expected, abs=1e-4)
        assert lengths[m] == len(target)
    loss = pipe.caption_loss("a red circle", images)
    score = pipe.score("a red circle", images)
    assert loss == pytest.approx([-s / lengths[0].item() for s in score], rel=1e-5)
    with pytest.raises(ValueError, match="empty"):
        pipe.score("  ", images)


def test_reranking_keeps_the_best_scored_candidate(pipe: CogViewPipeline) -> None:
    kw = dict(seed=3, top_k=20, guidance_scale=1.0)
    single = pipe.generate_results("a red circle", 2, **kw)[0]
    pool = pipe.generate_results("a red circle", 6, **kw)[0]
    ranked = pipe.generate_results("a red circle", 2, candidates=3, **kw)[0]
    # Candidate 0 of each requested image is what a call without reranking returns.
    assert torch.equal(pool.codes[0], single.codes[0])
    # Reranking scores the generated codes themselves (no decode/encode round trip).
    scores = pipe.captioner.log_likelihoods(pool.codes, ["a red circle"] * 6)[0].view(2, 3)
    assert ranked.rerank["kept"] == scores.argmax(1).tolist()
    for i, kept in enumerate(ranked.rerank["kept"]):
        assert torch.equal(ranked.codes[i], pool.codes[i * 3 + kept])
    assert len(ranked.images) == 2 and ranked.to_dict()["rerank"]["candidates"] == 3


def test_joint_selection_adds_the_generators_own_likelihood(pipe: CogViewPipeline, tmp_path: Path) -> None:
    kw = dict(seed=3, top_k=20, guidance_scale=1.0)
    pool = pipe.generate_results("a red circle", 6, **kw)[0]
    ranked = pipe.generate_results("a red circle", 2, candidates=3, selection="joint", **kw)[0]
    caps = pipe.captioner.log_likelihoods(pool.codes, ["a red circle"] * 6)[0]
    # log p(codes | prompt) recomputed here from the transformer's logits, code by code
    t2i, v = pipe.text_to_image, pipe.vocab
    prompt = t2i.prompt_tokens("a red circle")[0]
    own = []
    for codes in pool.codes.reshape(6, -1):
        seq = torch.cat([prompt, codes + v.image_range.start])
        with torch.no_grad():
            logits = t2i.transformer(seq[None, :-1], torch.arange(len(seq) - 1))[0].float()
        logp = logits[len(prompt) - 1 :, v.image_range.start : v.image_range.stop].log_softmax(-1)
        own.append(float(logp.gather(1, codes[:, None]).sum()))
    joint = (caps + torch.tensor(own)).view(2, 3)
    assert ranked.rerank["score"] == "joint"
    torch.testing.assert_close(torch.tensor(ranked.rerank["scores"]), joint, atol=1e-3, rtol=0)
    assert ranked.rerank["kept"] == joint.argmax(1).tolist()
    for i, kept in enumerate(ranked.rerank["kept"]):
        assert torch.equal(ranked.codes[i], pool.codes[i * 3 + kept])
    caption = pipe.generate_results("a red circle", 2, candidates=3, **kw)[0]
    assert caption.rerank["score"] == "caption" and caption.rerank["scores"] != ranked.rerank["scores"]
    # a folder's default score
    pipe.selection = "joint"
    try:
        pipe.save_pretrained(tmp_path / "m")
    finally:
        pipe.selection = "caption"
    meta = json.loads((tmp_path / "m" / "pipeline.json").read_text())
    assert meta["post_selection"]["score"] == "joint"
    loaded = CogViewPipeline.from_pretrained(tmp_path / "m")
    assert loaded.selection == "joint"
    assert loaded.generate_results("a red circle", 2, candidates=3, **kw)[0].rerank == ranked.rerank
    with pytest.raises(ValueError, match="must be one of"):
        pipe.generate("a red circle", candidates=2, selection="clip")
    meta["post_selection"]["score"] = "clip"
    (tmp_path / "m" / "pipeline.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="post-selection score must be one of"):
        CogViewPipeline.from_pretrained(tmp_path / "m")


def test_the_models_post_selection_default_is_saved_and_used(pipe: CogViewPipeline, tmp_path: Path) -> None:
    kw = dict(seed=3, top_k=20, guidance_scale=1.0)
    two = CogViewPipeline(
        None,
        pipe.text_tokenizer,
        pipe.image_tokenizer,
        pipe.vocab,
        job_models=pipe.models,
        sr_window=SR_WINDOW,
        candidates=2,
    )
    two.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "pipeline.json").read_text())["post_selection"] == {"candidates": 2}
    loaded = CogViewPipeline.from_pretrained(tmp_path / "m")
    assert loaded.candidates == 2 and pipe.candidates == 1
    default = loaded.generate_results("a red circle", 2, **kw)[0]
    explicit = pipe.generate_results("a red circle", 2, candidates=2, **kw)[0]
    assert default.rerank == explicit.rerank and torch.equal(default.codes, explicit.codes)
    off = loaded.generate_results("a red circle", 2, candidates=1, **kw)[0]
    assert off.rerank is None and torch.equal(
        off.codes, pipe.generate_results("a red circle", 2, **kw)[0].codes
    )
    with pytest.raises(ValueError, match="needs an image_to_text job"):
        CogViewPipeline(
            pipe.models["text_to_image"], pipe.text_tokenizer, pipe.image_tokenizer, pipe.vocab, candidates=2
        )
    with pytest.raises(ValueError, match="positive integer"):
        loaded.generate("a red circle", candidates=0)
    meta = json.loads((tmp_path / "m" / "pipeline.json").read_text())
    meta["post_selection"]["candidates"] = "two"
    (tmp_path / "m" / "pipeline.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="pipeline.json is incomplete or invalid.*positive integer"):
        CogViewPipeline.from_pretrained(tmp_path / "m")


def test_pipeline_config_is_the_pipeline_json_schema(pipe: CogViewPipeline, tmp_path: Path) -> None:
    config = pipe.pipeline_config()
    assert config.to_dict() == pipe.config() and config.jobs == pipe.job_folders()
    assert PipelineConfig.from_dict(config.to_dict(), tmp_path) == config
    shipped = default_model_path() / "pipeline.json"  # read and written back byte for byte
    write_json(
        tmp_path / "pipeline.json",
        PipelineConfig.from_dict(json.loads(shipped.read_text()), shipped.parent).to_dict(),
    )
    assert (tmp_path / "pipeline.json").read_bytes() == shipped.read_bytes()
    t2i_only = PipelineConfig(pipe.vocab, "t", "i", {"text_to_image": "transformer"}).to_dict()
    assert "super_resolution" not in t2i_only and "post_selection" not in t2i_only


# --- super-resolution -----------------------------------------------------------------------


def test_magnify_windows_cover_the_grid_with_half_overlap() -> None:
    wins = magnify_windows(16, 16, 8)
    assert [(w.top, w.left) for w in wins] == [(t, left) for t in (0, 4, 8) for left in (0, 4, 8)]
    assert [(w.top, w.left) for w in magnify_windows(10, 8, 8)] == [(0, 0), (2, 0)]
    assert Window(4, 8, 8).high_slices() == (slice(8, 24), slice(16, 32))
    with pytest.raises(ValueError, match="smaller than"):
        magnify_windows(6, 16, 8)


def test_window_sequence_layout_and_positions(pipe: CogViewPipeline) -> None:
    sr, v = pipe.super_resolution, pipe.vocab
    low = torch.arange(16).view(1, 4, 4)
    text = pipe.text_tokenizer.encode_unified("ab", v)
    tokens, positions, cells, sources = sr._prefix(text, low)
    names = ["[ROI1]"] + ["t"] * len(text) + ["[BASE]", "[BOI1]"] + ["c"] * 16
    names += ["[EOI1]", "[ROI2]", "[POS0]", "[BASE]", "[BOI2]"]
    expected = [v.token_id(n) if n.startswith("[") else None for n in names]
    expected[1 : 1 + len(text)] = text
    expected[3 + len(text) : 19 + len(text)] = list(range(16))
    assert tokens[0].tolist() == expected
    roi2 = names.index("[ROI2]")
    # Positions count up to [ROI2], which keeps its index; after it they restart at 1 (SPEC 1.2).
    assert positions[: roi2 + 1].tolist() == list(range(roi2 + 1))
    assert positions[roi2 + 1 :].tolist() == list(range(1, len(positions) - roi2))
    # Cells: low code k -> 1 + k; 2x code (r, c) -> the cell of low code (r // 2, c // 2); each
    # position holds the cell and source of the token it predicts (the next one).
    high = [1 + (r // 2) * 4 + c // 2 for r in range(8) for c in range(8)]
    assert cells.tolist() == [0] * (2 + len(text)) + list(range(1, 17)) + [0] * 5 + high + [0]
    centres = sources[0, :, 4].tolist()  # the refined low-res code itself
    assert centres == [-1] * (len(names) - 1) + [low.view(-1)[c - 1].item() for c in high] + [-1]
    assert sources.shape == (1, len(names) + 64, 9)


@pytest.mark.parametrize("with_cells", [False, True])
def test_greedy_window_decoding_matches_full_forward(pipe: CogViewPipeline, with_cells: bool) -> None:
    """The cached, teacher-forced window decode equals argmax over full-sequence logits."""
    sr, v = pipe.super_resolution, pipe.vocab
    if with_cells:  # a model with cell inputs (SR_WINDOW**2 + 1 ids, sources), made to matter
        torch.manual_seed(5)
        config = dataclasses.replace(
            sr.transformer.config, cell_embeddings=SR_WINDOW**2 + 1, cell_sources=True
        )
        model = CogViewTransformer(config).eval()
        with torch.no_grad():
            model.cell_embeddings.weight.mul_(50)
            model.cell_sources.weight.normal_(0, 5.0)
        sr = _with_model(sr, model)
    g = torch.Generator().manual_seed(0)
    low = torch.randint(0, v.image_size, (2, 4, 4), generator=g)
    current = torch.randint(0, v.image_size, (2, 8, 8), generator=g)
    known = torch.zeros(8, 8, dtype=torch.bool)
    known[:, :4] = True  # left half filled by an earlier window
    uniforms = torch.rand(2, 64, generator=g)
    out = sr._window(low, current, known, [], uniforms, SamplingConfig(top_k=1))
    assert torch.equal(out[:, known], current[:, known])
    tokens, positions, cells, sources = sr._prefix([], low)
    seq = torch.cat([tokens, out.view(2, -1) + v.image_range.start], dim=1)
    extras = {"cells": cells[:-1], "sources": sources[:, :-1]} if with_cells else {}
    with torch.no_grad():
        logits = sr.transformer(seq[:, :-1], positions[:-1], **extras)
        if with_cells:  # the cell inputs change the result, so the decode above did use them
            assert not torch.equal(logits, sr.transformer(seq[:, :-1], positions[:-1]))
    P = tokens.shape[1]
    predicted = logits[:, P - 1 :, v.image_range.start : v.image_range.stop].argmax(-1)  # [2, 64]
    free = ~known.view(-1)
    assert torch.equal(predicted[:, free], out.view(2, -1)[:, free])


def test_upscale_doubles_any_image_and_is_seeded(pipe: CogViewPipeline, images) -> None:
    wide = Image.fromarray(np.full((40, 50, 3), 200, np.uint8))  # not square, not code-aligned
    out = pipe.upscale([images[0], wide], top_k=20, seed=4)
    assert [im.size for im in out] == [(64, 64), (80, 80)]
    again = pipe.upscale([images[0]], top_k=20, seed=4, max_batch_size=1)
    assert np.array_equal(np.asarray(again[0]), np.asarray(out[0]))
    assert pipe.upscale(images[0], prompt="a red circle").size == (64, 64)
    with pytest.raises(ValueError, match="smaller than one super-resolution window"):
        pipe.upscale(Image.new("RGB", (12, 12)))


# --- folders --------------------------------------------------------------------------------


def test_three_job_folder_round_trip(pipe: CogViewPipeline, images, tmp_path: Path) -> None:
    pipe.save_pretrained(tmp_path / "m")
    for folder in ("transformer", "caption", "super_resolution"):
        assert (tmp_path / "m" / folder / "model.safetensors").is_file()
    loaded = CogViewPipeline.from_pretrained(tmp_path / "m")
    assert loaded.jobs == pipe.jobs and loaded.sr_window == SR_WINDOW
    assert loaded.caption(images, "en", max_tokens=5) == pipe.caption(images, "en", max_tokens=5)
    assert loaded.score("a red circle", images) == pytest.approx(pipe.score("a red circle", images), abs=1e-5)


def test_a_folder_s_caption_candidates_are_its_caption_default(pipe: CogViewPipeline, images, tmp_path: Path) -> None:
    pipe.caption_candidates = 4
    try:
        pipe.save_pretrained(tmp_path / "m")
    finally:
        pipe.caption_candidates = 1
    meta = json.loads((tmp_path / "m" / "pipeline.json").read_text())
    assert meta["post_selection"]["captions"] == 4
    loaded = CogViewPipeline.from_pretrained(tmp_path / "m")
    assert loaded.caption_candidates == 4 and loaded.pipeline_config().caption_candidates == 4
    chosen = loaded.caption(images, "en", max_tokens=5)
    assert chosen == pipe.caption(images, "en", candidates=4, max_tokens=5, seed=0)
    assert loaded.caption(images, "en", candidates=1, max_tokens=5) == pipe.caption(images, "en", max_tokens=5)
    assert len(loaded.caption(images, "en", 2, top_k=5, seed=1, max_tokens=5)) == 6  # sampled: no re-ranking
    loaded.max_samples = 8  # two images per re-ranking call: a default never refuses a call
    assert loaded.caption(images, "en", max_tokens=5) == [
        *pipe.caption(images[:2], "en", candidates=4, max_tokens=5),
        *pipe.caption(images[2:], "en", candidates=4, max_tokens=5),
    ]
    meta["jobs"] = {"image_to_text": "caption"}
    (tmp_path / "m" / "pipeline.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="captions=4 needs text_to_image"):
        CogViewPipeline.from_pretrained(tmp_path / "m")


def test_one_model_serving_several_jobs_is_saved_once(pipe: CogViewPipeline, tmp_path: Path) -> None:
    shared = CogViewPipeline(
        pipe.models["image_to_text"], pipe.text_tokenizer, pipe.image_tokenizer, pipe.vocab,
        jobs=("text_to_image", "image_to_text"),
    )  # fmt: skip
    shared.save_pretrained(tmp_path / "m")
    assert shared.job_folders() == {"text_to_image": "transformer", "image_to_text": "transformer"}
    assert not (tmp_path / "m" / "caption").exists()
    loaded = CogViewPipeline.from_pretrained(tmp_path / "m")
    assert loaded.models["text_to_image"] is loaded.models["image_to_text"]


def test_jobs_a_folder_lacks_are_clear_errors(pipe: CogViewPipeline, images) -> None:
    t2i_only = CogViewPipeline(
        pipe.models["text_to_image"], pipe.text_tokenizer, pipe.image_tokenizer, pipe.vocab
    )
    with pytest.raises(ValueError, match="does not serve image_to_text"):
        t2i_only.caption(images)
    with pytest.raises(ValueError, match="does not serve image_to_text"):
        t2i_only.generate("a red circle", candidates=2)
    with pytest.raises(ValueError, match="does not serve super_resolution"):
        t2i_only.upscale(images[0])


def test_captioning_without_an_end_token_is_the_original_behaviour(pipe: CogViewPipeline, images) -> None:
    """The released weights' vocabulary has no [EOT]: fixed-length captions, scores over the text alone."""
    from cogview.generation.captioning import Captioner
    from cogview.tokenizers.vocab import Vocabulary

    v = pipe.vocab
    vocab = Vocabulary(image_size=v.image_size, text_size=v.text_size, extra_tokens=())
    model = _model(vocab.size, 7)
    cap = Captioner(model, pipe.text_tokenizer, pipe.image_tokenizer, vocab)
    captions = cap.caption(images[:2], "en", max_tokens=5)
    assert all(len(pipe.text_tokenizer.encode(c)) >= 3 for c in captions)  # no early stop (pieces may merge)
    codes = cap.codes(images[:1])
    score, n = cap.log_likelihoods(codes, ["a red circle"])
    target = pipe.text_tokenizer.encode_unified("a red circle", vocab)
    assert n.item() == len(target)  # no end token scored
    seq = torch.cat([cap.prefix(codes)[0], torch.tensor(target)])
    with torch.no_grad():
        logits = model(seq[None, :-1], torch.arange(len(seq) - 1))[0].float()
    logits[:, : v.image_size] = float("-inf")
    logp = logits.log_softmax(-1)
    P = len(seq) - len(target)
    assert score.item() == pytest.approx(
        sum(float(logp[P - 1 + k, t]) for k, t in enumerate(target)), abs=1e-4
    )
