"""Text-to-image and CogViewPipeline on a tiny random model: layouts, seeds, chunking, OOM backoff, folders."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from pathlib import Path

import pytest
import torch
from small_parts import small_text_tokenizer

from cogview.generation.sampling import SamplingConfig
from cogview.generation.text_to_image import TextToImage, image_seed, prompt_kind, run_chunked
from cogview.images import png_bytes
from cogview.model import PRESETS, CogViewTransformer
from cogview.pipeline import CogViewPipeline
from cogview.serialization import CheckpointError, write_json
from cogview.tokenizers.image import ImageTokenizer
from cogview.tokenizers.text import TextTokenizer
from cogview.tokenizers.vocab import default_vocab
from cogview.tokenizers.vqvae import VQVAE, VQVAE_PRESETS

SAMPLING = {
    "default": SamplingConfig(top_k=0, guidance_scale=2.0),
    "zh": SamplingConfig(top_k=20, guidance_scale=3.0),
}


@pytest.fixture(scope="module")
def parts() -> tuple[CogViewTransformer, TextTokenizer, ImageTokenizer]:
    torch.manual_seed(0)
    text, image = small_text_tokenizer(), ImageTokenizer(VQVAE(VQVAE_PRESETS["tiny"]))
    vocab = default_vocab(image, text)
    model = CogViewTransformer(dataclasses.replace(PRESETS["tiny"], vocab_size=vocab.size)).eval()
    return model, text, image


@pytest.fixture(scope="module")
def pipe(parts: tuple[CogViewTransformer, TextTokenizer, ImageTokenizer]) -> CogViewPipeline:
    model, text, image = parts
    return CogViewPipeline(model, text, image, default_vocab(image, text), sampling=SAMPLING)


def _codes(pipe: CogViewPipeline, prompt: str = "a red circle", n: int = 3, **kwargs) -> torch.Tensor:
    return pipe.text_to_image.run(prompt, n, **kwargs)[0].codes


def test_prompt_layout_is_the_training_prefix(pipe: CogViewPipeline) -> None:
    vocab, t2i = pipe.vocab, pipe.text_to_image
    tokens, truncated = t2i.prompt_tokens("a red circle")
    text = pipe.text_tokenizer.encode_unified("a red circle", vocab)
    ids = [vocab.token_id(n) for n in ("[ROI1]", "[BASE]", "[BOI1]")]
    assert tokens.tolist() == [ids[0], *text, ids[1], ids[2]] and not truncated
    assert t2i.uncond_tokens().tolist() == ids


def test_same_seed_gives_identicalpng_bytes(pipe: CogViewPipeline) -> None:
    a = pipe.generate("a red circle", num_images=2, seed=5)
    b = pipe.generate("a red circle", num_images=2, seed=5)
    assert png_bytes(a) == png_bytes(b)
    assert png_bytes(pipe.generate("a red circle", num_images=2, seed=6)) != png_bytes(a)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert png_bytes(pipe.generate("a red circle", generator=g1)) == png_bytes(
        pipe.generate("a red circle", generator=g2)
    )


def test_images_do_not_depend_on_chunking_or_other_prompts(pipe: CogViewPipeline) -> None:
    full = _codes(pipe, n=5, seed=3, max_batch_size=5)
    assert torch.equal(full, _codes(pipe, n=5, seed=3, max_batch_size=2))
    assert torch.equal(full[:2], _codes(pipe, n=2, seed=3))
    both = pipe.text_to_image.run(["a blue square", "a red circle"], 5, seed=3)
    assert torch.equal(both[1].codes, full)


def test_codes_and_images(pipe: CogViewPipeline) -> None:
    result = pipe.text_to_image.run("a red circle", 4, seed=0)[0]
    assert result.codes.shape == (4, 8, 8) and result.codes.dtype == torch.long
    assert result.codes.min() >= 0 and result.codes.max() < pipe.image_tokenizer.codebook_size
    assert len(result.images) == 4 and result.images[0].size == (32, 32)
    assert result.image_seeds == [image_seed(0, i) for i in range(4)]


def test_chinese_and_english_prompts_take_their_kind_defaults(pipe: CogViewPipeline) -> None:
    zh, en = pipe.text_to_image.run(["左边的红色圆形", "a red circle on the left"], 1, seed=0)
    assert (zh.kind, en.kind) == ("zh", "en")
    assert zh.settings == SAMPLING["zh"] and en.settings == SAMPLING["default"]
    assert pipe.text_to_image.run("左边的红色圆形", 1, seed=0, top_k=5)[0].settings.top_k == 5
    assert prompt_kind("数字 7") == "zh" and prompt_kind("digit 7") == "en"


def test_a_sampling_config_or_per_field_keywords_set_a_call(pipe: CogViewPipeline) -> None:
    config = SamplingConfig(temperature=0.7, top_k=5, guidance_scale=1.5, min_p=0.1)
    given = pipe.text_to_image.run(["左边的红色圆形", "a red circle"], 2, seed=1, sampling=config)
    assert [r.settings for r in given] == [config, config]  # replaces every kind's defaults
    fields = dict(temperature=0.7, top_k=5, top_p=0.0, guidance_scale=1.5, min_p=0.1)
    spelled = pipe.text_to_image.run(["左边的红色圆形", "a red circle"], 2, seed=1, **fields)
    assert all(
        torch.equal(a.codes, b.codes) and a.settings == b.settings
        for a, b in zip(given, spelled, strict=True)
    )
    images = pipe.generate("a red circle", 2, seed=1, sampling=config.replace(top_k=9), top_k=5)
    assert png_bytes(images) == png_bytes(given[1].images)  # keywords apply on top of sampling=
    with pytest.raises(TypeError):
        pipe.generate("a red circle", 1, 5)  # everything after num_images is keyword-only
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['temprature'\]"):
        pipe.generate("a red circle", temprature=0.7)


def test_a_negative_prompt_is_guidances_unconditional_row(pipe: CogViewPipeline) -> None:
    t2i = pipe.text_to_image
    assert torch.equal(t2i.uncond_tokens("a blue square"), t2i.prompt_tokens("a blue square")[0])
    plain = t2i.run("a red circle", 3, seed=2, guidance_scale=3.0)[0]
    assert plain.negative_prompt is None and "negative_prompt" not in plain.to_dict()
    blank = t2i.run("a red circle", 3, seed=2, guidance_scale=3.0, negative_prompt=" ")[0]
    assert torch.equal(blank.codes, plain.codes) and blank.negative_prompt is None  # the empty prompt
    away = t2i.run("a red circle", 3, seed=2, guidance_scale=3.0, negative_prompt="a blue square")[0]
    assert not torch.equal(away.codes, plain.codes)
    assert away.to_dict()["negative_prompt"] == "a blue square"
    # uncond + s * (cond - uncond) with the prompt itself as uncond is the conditional model alone
    itself = t2i.run("a red circle", 3, seed=2, guidance_scale=3.0, negative_prompt="a red circle")[0]
    assert torch.equal(itself.codes, t2i.run("a red circle", 3, seed=2, guidance_scale=1.0)[0].codes)
    with pytest.raises(ValueError, match="guidance_scale above 1"):
        t2i.run("a red circle", 1, seed=2, guidance_scale=1.0, negative_prompt="blue")
    with pytest.raises(TypeError, match="negative_prompt must be a str"):
        t2i.run("a red circle", 1, seed=2, negative_prompt=3)  # type: ignore[arg-type]
    # post-selection keeps it
    kept = pipe.generate_results("a red circle", 1, seed=2, negative_prompt="blue", candidates=1)[0]
    assert kept.negative_prompt == "blue"


def test_empty_and_over_long_prompts(pipe: CogViewPipeline) -> None:
    for bad in ("", "   \n"):
        with pytest.raises(ValueError, match="empty prompt"):
            pipe.generate(bad)
    budget = pipe.text_to_image.text_budget
    long = "a red circle and a blue square " * 20
    with pytest.warns(UserWarning, match="text budget"):
        result = pipe.text_to_image.run(long, 1, seed=0)[0]
    assert result.truncated and len(result.prompt_tokens) == budget + 3


def test_dtypes(pipe: CogViewPipeline) -> None:
    codes = _codes(pipe, n=2, seed=0, dtype="bfloat16")
    assert codes.shape == (2, 8, 8) and codes.max() < pipe.image_tokenizer.codebook_size
    assert pipe.text_to_image.model_in(torch.bfloat16) is pipe.text_to_image.model_in(torch.bfloat16)
    with pytest.raises(ValueError, match="float16 is not supported"):
        pipe.generate("a red circle", dtype="float16")
    with pytest.raises(ValueError, match="not one of"):
        pipe.generate("a red circle", dtype="int8")


class FlakyTransformer(CogViewTransformer):
    """Raises an out-of-memory error for batches above ``limit`` rows (counts the calls that did)."""

    limit = 1
    error: type[Exception] | str = torch.OutOfMemoryError
    failures = 0

    def forward(self, tokens: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if tokens.shape[0] > self.limit:
            type(self).failures += 1
            if isinstance(self.error, str):
                raise RuntimeError(self.error)
            raise self.error("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return super().forward(tokens, *args, **kwargs)


def _flaky(parts, limit: int, error: type[Exception] | str = torch.OutOfMemoryError) -> TextToImage:
    model, text, image = parts
    flaky = FlakyTransformer(model.config)
    flaky.load_state_dict(model.state_dict())
    FlakyTransformer.limit, FlakyTransformer.error, FlakyTransformer.failures = limit, error, 0
    return TextToImage(flaky, text, image, default_vocab(image, text), sampling=SAMPLING)


def test_out_of_memory_halves_the_chunk_and_keeps_the_images(parts, caplog: pytest.LogCaptureFixture) -> None:
    reference = TextToImage(*parts, default_vocab(parts[2], parts[1]), sampling=SAMPLING)
    expected = reference.run("a red circle", 5, seed=1, max_batch_size=1)[0].codes
    # Guided: a chunk of n images runs 2n rows, so limit 4 fits chunks of 2 (8 -> 4 -> 2).
    t2i = _flaky(parts, limit=4)
    with caplog.at_level(logging.WARNING, logger="cogview.generation.text_to_image"):
        codes = t2i.run("a red circle", 5, seed=1, max_batch_size=8)[0].codes
    assert torch.equal(codes, expected)
    assert FlakyTransformer.failures == 1  # 5 images = 10 rows fail, chunks of 2 (4 rows) fit
    assert "out of memory at batch size 5; retrying with 2" in caplog.text
    # A RuntimeError that says "out of memory" (older torch, other backends) is retried too.
    t2i = _flaky(parts, limit=2, error="CUDA error: out of memory")
    assert torch.equal(t2i.run("a red circle", 5, seed=1, max_batch_size=4)[0].codes, expected)


def test_out_of_memory_at_batch_one_and_other_errors_propagate(parts) -> None:
    with pytest.raises(torch.OutOfMemoryError):
        _flaky(parts, limit=1).run("a red circle", 3, seed=1)  # guided batch 1 = 2 rows
    with pytest.raises(RuntimeError, match="something else"):
        _flaky(parts, limit=0, error="something else").run("a red circle", 3, seed=1)
    assert FlakyTransformer.failures == 1  # not retried
    calls = []

    def run(start: int, size: int) -> int:
        calls.append((start, size))
        if size > 3:
            raise torch.OutOfMemoryError("out of memory")
        return size

    assert run_chunked(10, 16, run) == [2, 2, 2, 2, 2]
    assert calls[:4] == [(0, 10), (0, 5), (0, 2), (2, 2)]


def test_save_and_load_round_trip(pipe: CogViewPipeline, tmp_path: Path) -> None:
    pipe.save_pretrained(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "pipeline.json").read_text())
    assert meta["jobs"] == {"text_to_image": "transformer"} and meta["vocab"] == pipe.vocab.to_dict()
    assert meta["sampling"]["text_to_image"]["zh"]["guidance_scale"] == 3.0
    loaded = CogViewPipeline.from_pretrained(tmp_path / "m")
    assert loaded.text_to_image.sampling == pipe.text_to_image.sampling
    assert png_bytes(loaded.generate("红色的圆", 2, seed=9)) == png_bytes(
        pipe.generate("红色的圆", 2, seed=9)
    )


def test_loading_refuses_mismatched_or_missing_parts(
    pipe: CogViewPipeline, tmp_path: Path, monkeypatch
) -> None:
    pipe.save_pretrained(tmp_path / "m")
    torch.manual_seed(123)
    ImageTokenizer(VQVAE(VQVAE_PRESETS["tiny"])).save_pretrained(tmp_path / "m" / "image_tokenizer")
    with pytest.raises(CheckpointError, match="image tokenizer .* fingerprint"):
        CogViewPipeline.from_pretrained(tmp_path / "m")
    with pytest.raises(CheckpointError, match="does not exist"):
        CogViewPipeline.from_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no pipeline.json"):
        CogViewPipeline.from_pretrained(tmp_path / "empty")
    # The shipped default without a trained transformer: a clear "not installed" error.
    monkeypatch.setattr("cogview.pipeline.default_model_path", lambda: tmp_path / "empty")
    with pytest.raises(CheckpointError, match="default model is not installed"):
        CogViewPipeline.from_pretrained()


def test_from_components_reads_a_training_model_folder(parts, tmp_path: Path) -> None:
    model, text, image = parts
    vocab = default_vocab(image, text)
    folder = tmp_path / "run" / "model"
    model.save_pretrained(folder)
    info = {
        "format": "cogview-transformer",
        "vocab": vocab.to_dict(),
        "text_tokenizer": {"fingerprint": text.fingerprint, "vocab_size": text.vocab_size},
        "image_tokenizer": {"fingerprint": image.fingerprint, "codebook_size": 32, "grid_size": 8},
        "seq_len": 100,
        "tasks": ["text_to_image"],
    }
    write_json(folder / "cogview.json", info)
    pipe = CogViewPipeline.from_components(folder, text, image)
    assert pipe.vocab == vocab and pipe.text_to_image.text_budget == 100 - 4 - 64
    pipe.save_pretrained(tmp_path / "assembled")
    assert CogViewPipeline.from_pretrained(tmp_path / "assembled").text_to_image.text_budget == 32
    write_json(folder / "cogview.json", {**info, "image_tokenizer": {"fingerprint": "0" * 16}})
    with pytest.raises(
        CheckpointError, match="trained with the image tokenizer of fingerprint 0000000000000000"
    ):
        CogViewPipeline.from_components(folder, text, image)
    # A tokenizer whose decoder was trained further keeps the codes of the one the model was trained with.
    write_json(folder / "cogview.json", info)
    redecoded = copy.deepcopy(image.model)
    with torch.no_grad():
        redecoded.dec.blocks[0].weight.add_(0.01)
    kept = image.keeping_codes(redecoded)
    assert kept.fingerprint != image.fingerprint
    pipe = CogViewPipeline.from_components(folder, text, kept)
    pipe.save_pretrained(tmp_path / "redecoded")
    loaded = CogViewPipeline.from_pretrained(tmp_path / "redecoded")
    assert loaded.image_tokenizer.fingerprints == (kept.fingerprint, image.fingerprint)
