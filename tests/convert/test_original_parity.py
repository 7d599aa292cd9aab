"""Converted weights compute what SPEC.md's formulas compute on the original-named weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import ORIGINAL_TOKENIZER, OriginalFiles, make_original_files
from original_files import reference_decode, reference_encode, reference_logits
from required import require_reference

from cogview.convert import convert_original, safe_torch_load, transformer_from_original, vqvae_from_original
from cogview.pipeline import CogViewPipeline
from cogview.tokenizers.image import ImageTokenizer
from cogview.tokenizers.vocab import Vocabulary


@pytest.mark.parametrize("layout", ["original", "sat"])
def test_transformer_logits_match_the_spec_reference(layout: str, request: pytest.FixtureRequest) -> None:
    files: OriginalFiles = request.getfixturevalue("original" if layout == "original" else "original_sat")
    module = safe_torch_load(files.model_file)["module"]
    model = transformer_from_original(module, files.config, torch.float32)
    tokens = torch.randint(0, files.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(tokens, torch.arange(40))
        ref = reference_logits(files.module, tokens, files.config.n_heads)
    assert ref.abs().max() > 1.0  # not a vacuous comparison of near-zero logits
    assert (ours - ref).abs().max().item() <= 1e-5


def test_fp16_conversion_is_bit_exact(original: OriginalFiles) -> None:
    model = transformer_from_original(
        safe_torch_load(original.model_file)["module"], original.config, torch.float16
    )
    state = model.state_dict()
    assert torch.equal(
        state["layers.1.attention.wqkv.weight"],
        original.module["transformer.layers.1.attention.query_key_value.weight"],
    )
    assert torch.equal(state["tok_embeddings.weight"], original.module["word_embeddings.weight"])


def test_vqvae_codes_and_pixels_match_the_spec_reference(original: OriginalFiles) -> None:
    tokenizer = ImageTokenizer(vqvae_from_original(safe_torch_load(original.vqvae), original.vqvae_config))
    pixels = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    codes = tokenizer.encode(pixels)
    expected = reference_encode(original.vqvae_state, pixels)
    assert codes.shape == (3, 4, 4) and len(expected.unique()) > 3
    assert torch.equal(codes, expected)
    decoded = tokenizer.decode_pixels(codes)
    assert decoded.shape == (3, 3, 32, 32)
    torch.testing.assert_close(decoded, reference_decode(original.vqvae_state, codes), atol=1e-5, rtol=1e-5)


def test_vqvae_module_prefix_is_stripped(original: OriginalFiles) -> None:
    prefixed = {f"module.{k}": v for k, v in original.vqvae_state.items()}
    model = vqvae_from_original(prefixed, original.vqvae_config)
    assert torch.equal(model.quantize_t.embed, original.vqvae_state["quantize_t.embed"])


def test_original_tokenizer_gives_the_original_unified_ids(tmp_path: Path) -> None:
    require_reference(ORIGINAL_TOKENIZER)
    # The released vocabulary: 8192 codes + 50000 pieces + 27 commands = 58219, padded to 58240.
    files = make_original_files(tmp_path, ORIGINAL_TOKENIZER, n_embed=8192)
    assert files.config.vocab_size == 58240
    convert_original(
        files.checkpoint, files.vqvae, files.text_tokenizer, tmp_path / "model",
        config=files.config, vqvae_config=files.vqvae_config,
    )  # fmt: skip
    pipe = CogViewPipeline.from_pretrained(tmp_path / "model")
    assert pipe.vocab == Vocabulary.original()
    # Known encodings (reference README): sp ids + 8192; layout ids from SPEC 2.3.
    assert pipe.text_tokenizer.encode_unified("一只可爱的猫", pipe.vocab) == [
        15955 + 8192,
        6212 + 8192,
        44506 + 8192,
    ]
    tokens, _ = pipe.text_to_image.prompt_tokens("一个漂亮的女孩")
    assert tokens.tolist() == [58199, 1034 + 8192, 1894 + 8192, 5081 + 8192, 58208, 58193]
