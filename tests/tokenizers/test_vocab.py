"""Tests for the unified vocabulary layout (SPEC 2.3): ranges, names, offsets, original ids."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cogview.tokenizers.vocab import COMMAND_TOKENS, Vocabulary


@pytest.fixture(params=["original", "small", "no_padding"])
def vocab(request: pytest.FixtureRequest) -> Vocabulary:
    return {
        "original": Vocabulary.original(),
        "small": Vocabulary(image_size=512, text_size=700, extra_tokens=("[EOT]", "[FOO]")),
        "no_padding": Vocabulary(image_size=3, text_size=5, pad_to_multiple=1),
    }[request.param]


def test_command_tokens_are_the_27_of_the_spec() -> None:
    assert len(COMMAND_TOKENS) == 27
    assert COMMAND_TOKENS[:4] == ("[PAD]", "[BOI1]", "[BOI2]", "[BOI3]")
    assert COMMAND_TOKENS[-1] == "[POS8]"


def test_original_layout_exact_ids() -> None:
    v = Vocabulary.original()
    expected = {
        "[PAD]": 58192, "[BOI1]": 58193, "[EOI1]": 58196, "[ROI1]": 58199, "[ROI2]": 58200,
        "[SEP]": 58202, "[MASK]": 58203, "[BASE]": 58208, "[POS0]": 58210, "[POS8]": 58218,
    }  # fmt: skip
    assert {name: v.token_id(name) for name in expected} == expected
    assert v.size == 58240
    assert v.n_used == 58219
    assert v.image_range == range(0, 8192)
    assert v.text_range == range(8192, 58192)
    assert v.text_offset == 8192 and v.command_offset == 58192
    assert v.extra_tokens == ()
    with pytest.raises(ValueError, match=r"\[EOT\]"):
        v.token_id("[EOT]")


def test_default_has_eot_after_commands() -> None:
    v = Vocabulary(image_size=1024, text_size=1000)
    assert v.token_id("[EOT]") == 1024 + 1000 + 27
    assert v.size % 128 == 0 and v.size >= v.n_used


def test_ranges_do_not_overlap_and_cover_used_ids(vocab: Vocabulary) -> None:
    ids = torch.arange(vocab.size)
    image, text, special = vocab.is_image(ids), vocab.is_text(ids), vocab.is_special(ids)
    assert not (image & text).any() and not (image & special).any() and not (text & special).any()
    covered = image | text | special
    assert covered[: vocab.n_used].all() and not covered[vocab.n_used :].any()
    assert int(image.sum()) == vocab.image_size and int(text.sum()) == vocab.text_size
    assert vocab.size % vocab.pad_to_multiple == 0 and vocab.size - vocab.n_used < vocab.pad_to_multiple


def test_special_ids_unique_and_names_round_trip(vocab: Vocabulary) -> None:
    ids = [vocab.token_id(name) for name in vocab.special_tokens]
    assert len(set(ids)) == len(ids) == 27 + len(vocab.extra_tokens)
    assert list(vocab.special_range) == ids
    assert [vocab.token_name(i) for i in ids] == list(vocab.special_tokens)


def test_offsets_round_trip(vocab: Vocabulary) -> None:
    text_ids = [0, 1, vocab.text_size - 1]
    unified = vocab.text_to_unified(text_ids)
    assert all(vocab.is_text(unified))
    assert vocab.unified_to_text(unified) == text_ids
    t = torch.tensor([[0, vocab.text_size - 1]])
    assert torch.equal(vocab.unified_to_text(vocab.text_to_unified(t)), t)
    a = np.array([2, 0])
    assert (vocab.unified_to_text(vocab.text_to_unified(a)) == a).all()
    assert vocab.text_to_unified(0) == vocab.text_offset


def test_masks_accept_ints_lists_tensors_arrays() -> None:
    v = Vocabulary.original()
    assert v.is_image(8191) is True and v.is_image(8192) is False
    assert v.is_text([8191, 8192, 58191, 58192]) == [False, True, True, False]
    assert v.is_special(np.array([58192, 58218, 58219])).tolist() == [True, True, False]
    assert v.is_image(torch.tensor([0, 8192])).dtype == torch.bool


def test_offset_helpers_reject_out_of_range_ids() -> None:
    v = Vocabulary.original()
    with pytest.raises(ValueError, match="50000"):
        v.text_to_unified([50000])
    with pytest.raises(ValueError, match=r"\[8192, 58192\)"):
        v.unified_to_text(torch.tensor([8192, 5]))
    with pytest.raises(ValueError, match="-1"):
        v.text_to_unified(-1)


def test_unknown_token_name_lists_valid_names() -> None:
    v = Vocabulary(image_size=16, text_size=16)
    with pytest.raises(ValueError, match=r"unknown special token '\[BOS\]'.*\[BOI1\].*\[EOT\]"):
        v.token_id("[BOS]")


def test_token_name_of_non_special_id_says_what_it_is() -> None:
    v = Vocabulary.original()
    with pytest.raises(ValueError, match="image code"):
        v.token_name(5)
    with pytest.raises(ValueError, match="text piece"):
        v.token_name(8192)
    with pytest.raises(ValueError, match="padding"):
        v.token_name(58230)
    with pytest.raises(ValueError, match="outside"):
        v.token_name(58240)


def test_dict_round_trip_and_validation(vocab: Vocabulary) -> None:
    d = vocab.to_dict()
    assert Vocabulary.from_dict(d) == vocab
    assert hash(Vocabulary.from_dict(d)) == hash(vocab)
    with pytest.raises(ValueError, match="unknown keys"):
        Vocabulary.from_dict({**d, "size": 1})
    with pytest.raises(ValueError, match="missing keys"):
        Vocabulary.from_dict({"image_size": 1})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"image_size": 0, "text_size": 5}, "image_size"),
        ({"image_size": 5, "text_size": 5, "pad_to_multiple": 0}, "pad_to_multiple"),
        ({"image_size": 5, "text_size": 5, "extra_tokens": ("[PAD]",)}, "already command tokens"),
        ({"image_size": 5, "text_size": 5, "extra_tokens": ("[EOT]", "[EOT]")}, "unique"),
        ({"image_size": 5, "text_size": 5, "extra_tokens": "[EOT]"}, "sequence"),
    ],
)
def test_invalid_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Vocabulary(**kwargs)
