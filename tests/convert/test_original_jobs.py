"""Converted tiny checkpoints serve the three jobs token for token as the released code's algorithm.

The references below are written from ``generation/sampling.py:filling_sequence``,
``generation/magnify.py`` and ``generate_samples.py`` (SPEC 3.1-3.6), not from our job modules:
the context runs up to the first unknown token, provided tokens are fed with the next sampled
position, the allowed ids switch at ``[BOI*]`` / ``[EOI*]``, positions after ``[ROI2]`` restart,
and the nine super-resolution windows are visited in the original order with their row counts.
They share only the model's forward with the code under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import OriginalFiles, make_original_files
from PIL import Image

from cogview.cli import main
from cogview.convert import convert_original
from cogview.generation.original import original_resize_crop, parse_query
from cogview.generation.sampling import SamplingConfig
from cogview.model import CogViewTransformer, KVCache
from cogview.pipeline import CogViewPipeline
from cogview.tokenizers.vocab import Vocabulary

GREEDY = SamplingConfig(top_k=1)
# generation/magnify.py, typed again here: (window row, window column, rows filled), in order.
MAGNIFY = [(0, 0, 18), (0, 1, 30), (0, 2, 30), (1, 1, 30), (1, 0, 30), (1, 2, 30), (2, 0, 32), (2, 1, 32), (2, 2, 32)]  # fmt: skip


@torch.no_grad()
def filling_sequence(model: CogViewTransformer, seq: list[int], vocab: Vocabulary) -> list[int]:
    """The released ``filling_sequence`` at batch 1, greedy: -1 marks the tokens to generate."""
    seq = list(seq)
    ids = {name: vocab.token_id(name) for name in ("[BOI1]", "[BOI2]", "[EOI1]", "[EOI2]", "[ROI2]")}
    n_img, n_txt = vocab.image_size, vocab.text_size
    allowed = range(n_img, n_img + n_txt)  # starts in "text" mode

    def switch(token: int, allowed: range) -> range:
        if token in (ids["[BOI1]"], ids["[BOI2]"]):
            return range(0, n_img)
        if token in (ids["[EOI1]"], ids["[EOI2]"]):
            return range(n_img, n_img + n_txt)
        return allowed

    offset, ctx = 100000, 0
    while seq[ctx] >= 0:
        allowed = switch(seq[ctx], allowed)
        offset = ctx if seq[ctx] == ids["[ROI2]"] else offset
        ctx += 1
    cache = KVCache(model.config.n_layers, 1, model.config.n_heads, len(seq), model.config.head_dim)
    tokens, index, counter = seq[:ctx], 0, ctx - 1
    while counter < len(seq) - 1:
        allowed = switch(seq[counter + 1], allowed)
        if seq[counter + 1] >= 0 and index > 0:  # provided: appended, fed with the next sampled one
            tokens.append(seq[counter + 1])
            counter += 1
            continue
        slots = torch.arange(index, counter + 1)
        positions = torch.where(slots > offset, slots - offset, slots)
        logits = model(torch.tensor([tokens[index:]]), positions, cache, slots)[0, -1]
        index = counter + 1
        tokens.append(allowed.start + int(logits[allowed.start : allowed.stop].argmax()))
        counter += 1
    return tokens


def convert(files: OriginalFiles, out: Path, job: str) -> CogViewPipeline:
    convert_original(
        files.checkpoint, files.vqvae, files.text_tokenizer, out, job=job, dtype="fp32",
        config=files.config, vqvae_config=files.vqvae_config,
    )  # fmt: skip
    return CogViewPipeline.from_pretrained(out)


def picture(size: tuple[int, int], seed: int = 0) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.rand(size[1] // 8, size[0] // 8, 3, generator=g).mul(255).to(torch.uint8).numpy()
    return Image.fromarray(pixels, "RGB").resize(size, Image.Resampling.NEAREST)


def test_text_to_image_equals_the_original_algorithm(original: OriginalFiles, tmp_path: Path) -> None:
    pipe = convert(original, tmp_path / "base", "text_to_image")
    v, g = pipe.vocab, pipe.image_tokenizer.grid_size
    prompt = "一只可爱的猫"
    # generate_samples.py: '[ROI1] {} [BASE] [BOI1] [MASK]*1024' (here the tiny grid's g*g codes)
    seq = parse_query(f"[ROI1] {prompt} [BASE] [BOI1] [MASK]*{g * g}", pipe.text_tokenizer, v)
    expected = filling_sequence(pipe.transformer, seq, v)
    (result,) = pipe.text_to_image.run(prompt, 1, seed=0, sampling=GREEDY)
    assert result.prompt_tokens == seq[: -g * g]
    assert result.codes.reshape(-1).tolist() == expected[-g * g :]
    assert len(set(expected[-g * g :])) > 2  # not a constant image


def test_query_syntax_is_parsed_for_converted_models(original: OriginalFiles, tmp_path: Path) -> None:
    pipe = convert(original, tmp_path / "base", "text_to_image")
    v, text = pipe.vocab, pipe.text_tokenizer
    ids = parse_query("a  red [BASE] circle [MASK]*2 [MASK]", text, v)
    assert ids == [
        *text.encode_unified("a  red", v), v.token_id("[BASE]"), *text.encode_unified("circle", v), -1, -1, -1
    ]  # fmt: skip
    tokens, _ = pipe.text_to_image.prompt_tokens("红色 [POS1] 圆")
    assert v.token_id("[POS1]") in tokens.tolist()
    with pytest.raises(ValueError, match=r"\[MASK\] marks tokens to generate"):
        pipe.text_to_image.prompt_tokens("a [MASK]")
    with pytest.raises(ValueError, match=r"\[Image\]path parts"):
        parse_query("[Image]cat.png", text, v)


def test_captioning_equals_the_original_algorithm(original: OriginalFiles, tmp_path: Path) -> None:
    pipe = convert(original, tmp_path / "caption", "image_to_text")
    v, size = pipe.vocab, pipe.image_tokenizer.image_size
    image = picture((48, 40))
    codes = (
        pipe.image_tokenizer.encode([original_resize_crop(image, size)])[0].reshape(-1) + v.image_range.start
    )
    # '[BASE] [BOI1] [Image]{} [EOI1] [ROI1] [MASK]*20'
    seq = [
        v.token_id("[BASE]"),
        v.token_id("[BOI1]"),
        *codes.tolist(),
        v.token_id("[EOI1]"),
        v.token_id("[ROI1]"),
    ]
    expected = filling_sequence(pipe.transformer, seq + [-1] * 20, v)[len(seq) :]
    assert pipe.caption(image, "zh", 1, sampling=GREEDY) == [
        pipe.text_tokenizer.decode_unified(expected, v).strip()
    ]
    # All text ids were open: the reference used pieces a Chinese caption filter drops.
    zh = set(v.text_to_unified(pipe.text_tokenizer.language_ids("zh")))
    assert any(i not in zh for i in expected)


def test_caption_and_selection_defaults(original: OriginalFiles, tmp_path: Path) -> None:
    pipe = convert(original, tmp_path / "caption", "image_to_text")
    meta = json.loads((tmp_path / "caption" / "pipeline.json").read_text())
    assert meta["semantics"] == "original"
    assert meta["sampling"]["image_to_text"] == {
        "temperature": 1.0, "top_k": 200, "top_p": 0.0, "guidance_scale": 1.0, "min_p": 0.0,
    }  # fmt: skip
    assert len(pipe.caption(picture((32, 32)), seed=0)) == 8  # image2text.sh --batch-size 8
    # Post-selection re-reads the candidates as saved: stretched pixels, JPEG, re-encoded codes.
    images = [picture((32, 32), seed) for seed in range(3)]
    fake = torch.zeros(3, 4, 4, dtype=torch.long)
    assert not torch.equal(pipe.captioner.candidate_codes(images, fake), fake)


def test_original_resize_crop_is_torchvision_resize_and_center_crop() -> None:
    image = picture((257, 300))
    # Resize(256): the shorter side 257 -> 256, the longer int(256 * 300 / 257) = 298 (truncated);
    # CenterCrop(256): top = round((298 - 256) / 2) = 21.
    expected = image.resize((256, 298), Image.Resampling.BILINEAR).crop((0, 21, 256, 277))
    assert original_resize_crop(image, 256).tobytes() == expected.tobytes()
    wide = picture((600, 256))  # shorter side already 256: no resize, crop left round(344 / 2) = 172
    assert original_resize_crop(wide, 256).tobytes() == wide.crop((172, 0, 428, 256)).tobytes()


@pytest.fixture(scope="module")
def sr_files(tmp_path_factory: pytest.TempPathFactory, tiny_text_tokenizer: Path) -> OriginalFiles:
    """cogview-sr's geometry at tiny widths: 256 px -> 32x32 codes, a 1089-row position table."""
    root = tmp_path_factory.mktemp("sr")
    return make_original_files(
        root, tiny_text_tokenizer, image_size=256, dim=32, n_layers=1, max_seq_len=1089
    )


@pytest.fixture(scope="module")
def sr_model(sr_files: OriginalFiles, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny cogview-sr converted once for the module's tests."""
    out = tmp_path_factory.mktemp("converted") / "sr-model"
    convert(sr_files, out, "super_resolution")
    return out


def test_super_resolution_nine_windows_equal_the_original_algorithm(sr_model: Path) -> None:
    pipe = CogViewPipeline.from_pretrained(sr_model)
    v, sr = pipe.vocab, pipe.super_resolution
    text = pipe.text_tokenizer.encode_unified("一只猫", v)
    low = torch.randint(0, v.image_size, (32, 32), generator=torch.Generator().manual_seed(1))
    expected = torch.full((64, 64), -1, dtype=torch.long)
    for i, j, line in MAGNIFY:  # generation/magnify.py
        crop = (low[8 * i : 8 * (i + 2), 8 * j : 8 * (j + 2)].reshape(-1) + v.image_range.start).tolist()
        part = expected[16 * i : 16 * i + line, 16 * j : 16 * (j + 2)].reshape(-1)
        part = [t + v.image_range.start if t >= 0 else -1 for t in part.tolist()]
        context = [v.token_id("[ROI1]"), *text, v.token_id("[BASE]"), v.token_id("[BOI1]"), *crop]
        context += [v.token_id(t) for t in ("[EOI1]", "[ROI2]", "[POS0]", "[BASE]", "[BOI2]")]
        filled = filling_sequence(pipe.transformer, context + part, v)[len(context) :]
        expected[16 * i : 16 * i + line, 16 * j : 16 * (j + 2)] = torch.tensor(filled).view(line, 32)
    assert sr.window_plan(32, 32) == [(8 * i, 8 * j, line) for i, j, line in MAGNIFY]
    uniforms = torch.rand(1, 9 * 1024)
    ours = sr.magnify(low[None], text, sr.window_plan(32, 32), uniforms, GREEDY)[0]
    assert torch.equal(ours, expected)


def test_super_resolution_upscales_a_256_px_input_to_512(sr_model: Path) -> None:
    pipe = CogViewPipeline.from_pretrained(sr_model)
    meta = json.loads((sr_model / "pipeline.json").read_text())
    assert meta["sampling"]["super_resolution"]["temperature"] == 1.02  # super_resolution.sh
    assert meta["sampling"]["super_resolution"]["top_k"] == 200
    out = pipe.upscale(picture((300, 280)), "一只猫", seed=0)
    assert out.size == (512, 512)
    lows, highs = zip(*out.getextrema(), strict=True)
    assert (min(lows), max(highs)) == (0, 255)  # min-max stretched over the image, as the original saved it


def test_cli_converts_super_resolution_and_refuses_what_does_not_fit(
    sr_files: OriginalFiles, original: OriginalFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def run(files: OriginalFiles, out: Path) -> int:
        config, vqvae_config = files.config_files()
        return main([
            "convert-original", "--checkpoint", str(files.checkpoint), "--vqvae", str(files.vqvae),
            "--text-tokenizer", str(files.text_tokenizer), "--out", str(out), "--job", "super_resolution",
            "--config", str(config), "--vqvae-config", str(vqvae_config),
        ])  # fmt: skip

    assert run(sr_files, tmp_path / "sr-model") == 0
    assert json.loads((tmp_path / "sr-model" / "pipeline.json").read_text())["jobs"] == {
        "super_resolution": "super_resolution"
    }
    capsys.readouterr()
    # The 64-position, 4x4-code tiny base model cannot hold a window: refused, nothing written.
    assert run(original, tmp_path / "too-small") == 2
    assert "cannot be served as super_resolution" in capsys.readouterr().err
    assert not (tmp_path / "too-small").exists()


def test_room_is_counted_on_positions_and_cache_at_the_released_shape() -> None:
    from cogview.generation.original import OriginalSuperResolution
    from cogview.generation.super_resolution import SuperResolution

    # cogview-sr: 1089 positions, 16x16 low-res windows, 32x32 2x windows.
    assert SuperResolution.room(None, 1089, 16) < 0  # type: ignore[arg-type]  # counting tokens: no room
    # [ROI2] keeps its index text + 260 < 1089; the window fits the 2048 cached positions.
    assert OriginalSuperResolution.room(None, 1089, 16) == min(1089 - 261, 2048 - 261 - 3 - 1024)  # type: ignore[arg-type]
    assert OriginalSuperResolution.room(None, 1027, 16) < 0  # type: ignore[arg-type]  # no id for the last code
