"""Tests for TextTokenizer: exact round trips, original-model parity, loading errors, training."""

from __future__ import annotations

import hashlib
import pickle
import warnings
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from required import require_reference

from cogview.tokenizers.text import (
    SHAPES_DATASETS,
    SHIPPED_VOCAB_SIZE,
    TextTokenizer,
    default_training_sentences,
    train_default,
)
from cogview.tokenizers.vocab import Vocabulary

REPO_ROOT = Path(__file__).resolve().parents[2]
ORIGINAL_MODEL = REPO_ROOT.parent / "shared" / "reference" / "cogview-original" / "cog-pretrain.model"
SHIPPED_DIR = REPO_ROOT / "cogview" / "assets" / "default" / "text_tokenizer"

TINY_CORPUS = [
    "红色背景上中间有一个绿色圆形",
    "蓝色背景上左边有一个黄色三角形",
    "a red circle in the center of a blue background",
    "a green square on the left of a white background",
    "手写数字7",
    "a handwritten digit 3",
] * 3

ROUND_TRIP_TEXTS = [
    "一只可爱的猫",
    "a red circle on the left of a blue background",
    "🐱🚀",
    "蓝色 background 上有一个 red 圆形!",
    "魑魅魍魉 𠀀𪚥",  # rare CJK, including two outside the Basic Multilingual Plane
    "ＡＢＣ，。「」…—",  # full-width forms that NFKC would have folded
    "line one\nline two\ttabbed\r\n",
    "  leading, double  and trailing spaces  ",
    "e\u0301 vs \u00e9",  # combining accent and precomposed: not normalised
    "the space marker \u2581 itself",
    "\x00 control",
    "",
]


@pytest.fixture(scope="module")
def shipped() -> TextTokenizer:
    return TextTokenizer.from_pretrained()


@pytest.fixture(scope="module")
def tiny() -> TextTokenizer:
    return TextTokenizer.train(TINY_CORPUS, None, vocab_size=320)


@pytest.fixture(scope="module")
def original() -> TextTokenizer:
    require_reference(ORIGINAL_MODEL)
    return TextTokenizer.from_pretrained(ORIGINAL_MODEL)


@pytest.mark.parametrize("which", ["shipped", "tiny"])
@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_round_trip_is_exact_without_unk(which: str, text: str, request: pytest.FixtureRequest) -> None:
    tok: TextTokenizer = request.getfixturevalue(which)
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert 0 not in ids  # byte fallback: nothing maps to <unk>
    assert tok.decode(ids) == text


def test_empty_text_encodes_to_nothing(shipped: TextTokenizer) -> None:
    assert shipped.encode("") == []
    assert shipped.decode([]) == ""


def test_original_model_known_encodings(original: TextTokenizer) -> None:
    assert original.vocab_size == 50000
    assert original.encode("一个漂亮的女孩") == [1034, 1894, 5081]
    assert original.encode("一只可爱的猫") == [15955, 6212, 44506]
    vocab = Vocabulary.original()
    assert original.encode_unified("一个漂亮的女孩", vocab) == [1034 + 8192, 1894 + 8192, 5081 + 8192]
    assert original.encode_unified("一只可爱的猫", vocab) == [15955 + 8192, 6212 + 8192, 44506 + 8192]
    assert original.decode_unified([9226, 10086, 13273], vocab) == "一个漂亮的女孩"


def test_truncation_warns_and_keeps_prefix(shipped: TextTokenizer) -> None:
    text = "a red circle in the center of a blue background"
    full = shipped.encode(text)
    with pytest.warns(UserWarning, match=r"more than max_length=3"):
        ids = shipped.encode(text, max_length=3)
    assert ids == full[:3]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert shipped.encode(text, max_length=len(full)) == full


def test_truncation_never_splits_a_character(shipped: TextTokenizer) -> None:
    ids = shipped.encode("🐱🚀")  # 4 byte pieces each
    assert len(ids) == 8
    with pytest.warns(UserWarning):
        cut = shipped.encode("🐱🚀", max_length=6)
    assert shipped.decode(cut) == "🐱"


def test_fingerprint_stable_and_distinct(shipped: TextTokenizer, tiny: TextTokenizer) -> None:
    data = (SHIPPED_DIR / "spm.model").read_bytes()
    assert shipped.fingerprint == hashlib.sha256(data).hexdigest()[:16]
    assert TextTokenizer.from_pretrained(SHIPPED_DIR).fingerprint == shipped.fingerprint
    assert tiny.fingerprint != shipped.fingerprint


def test_training_is_deterministic(tiny: TextTokenizer) -> None:
    again = TextTokenizer.train(TINY_CORPUS, None, vocab_size=320)
    assert again.model_bytes == tiny.model_bytes
    other = TextTokenizer.train(TINY_CORPUS, None, vocab_size=330)
    assert other.fingerprint != tiny.fingerprint


def test_unigram_option(tmp_path: Path) -> None:
    tok = TextTokenizer.train(TINY_CORPUS, tmp_path, vocab_size=310, model_type="unigram")
    assert tok.training["model_type"] == "unigram"
    assert tok.decode(tok.encode("蓝色 circle 🐱")) == "蓝色 circle 🐱"
    assert TextTokenizer.from_pretrained(tmp_path).fingerprint == tok.fingerprint


@pytest.mark.parametrize(
    "sentences, kwargs, match",
    [
        (TINY_CORPUS, {"vocab_size": 5000}, "vocab_size"),
        (["ok", 3], {}, "must be strings"),
        (["", ""], {}, "no training sentences"),
        (TINY_CORPUS, {"model_type": "wordpiece"}, "model_type"),
    ],
)
def test_training_errors(sentences: list, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TextTokenizer.train(sentences, None, **kwargs)


def test_save_and_load_round_trip(tiny: TextTokenizer, tmp_path: Path) -> None:
    tiny.save_pretrained(tmp_path / "tok")
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == ["config.json", "spm.model"]
    for path in (tmp_path / "tok", tmp_path / "tok" / "spm.model", str(tmp_path / "tok")):
        loaded = TextTokenizer.from_pretrained(path)
        assert loaded.fingerprint == tiny.fingerprint
        assert loaded.encode("红色圆形") == tiny.encode("红色圆形")
    assert TextTokenizer.from_pretrained(tmp_path / "tok").training == tiny.training


def test_missing_and_corrupt_files_raise_clear_errors(tiny: TextTokenizer, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        TextTokenizer.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ValueError, match="has no spm.model"):
        TextTokenizer.from_pretrained(tmp_path / "empty_dir")
    corrupt = tmp_path / "corrupt.model"
    corrupt.write_bytes(b"this is not a sentencepiece model")
    with pytest.raises(ValueError, match="not a readable SentencePiece model"):
        TextTokenizer.from_pretrained(corrupt)
    truncated = tmp_path / "truncated.model"
    truncated.write_bytes(tiny.model_bytes[: len(tiny.model_bytes) // 3])
    with pytest.raises(ValueError, match="truncated"):
        TextTokenizer.from_pretrained(truncated)
    (tmp_path / "empty.model").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        TextTokenizer.from_pretrained(tmp_path / "empty.model")


def test_mixed_folder_is_refused(tiny: TextTokenizer, shipped: TextTokenizer, tmp_path: Path) -> None:
    tiny.save_pretrained(tmp_path)
    (tmp_path / "spm.model").write_bytes(shipped.model_bytes)
    with pytest.raises(ValueError, match="mixes files of two tokenizers"):
        TextTokenizer.from_pretrained(tmp_path)


def test_unified_ids(shipped: TextTokenizer) -> None:
    vocab = Vocabulary(image_size=1024, text_size=shipped.vocab_size)
    text = "一个红色圆形 in a box"
    unified = shipped.encode_unified(text, vocab)
    assert unified == [i + 1024 for i in shipped.encode(text)]
    assert all(vocab.is_text(unified))
    assert shipped.decode_unified(unified, vocab) == text
    stream = [vocab.token_id("[ROI1]"), *unified, vocab.token_id("[EOT]"), 5]
    with pytest.raises(ValueError, match="unified text ids"):
        shipped.decode_unified(stream, vocab)
    assert shipped.decode_unified(torch.tensor(stream), vocab, skip_non_text=True) == text
    with pytest.raises(ValueError, match="text_size=tokenizer.vocab_size"):
        shipped.encode_unified(text, Vocabulary.original())


def test_decode_validates_ids(shipped: TextTokenizer) -> None:
    with pytest.raises(ValueError, match=rf"\[0, {shipped.vocab_size}\)"):
        shipped.decode([shipped.vocab_size])
    with pytest.raises(ValueError, match="single int"):
        shipped.decode(5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must be a str"):
        shipped.encode(["not", "a", "string"])  # type: ignore[arg-type]
    assert shipped.decode(torch.tensor(shipped.encode("圆形"))) == "圆形"


def test_pickles_for_dataloader_workers(shipped: TextTokenizer) -> None:
    clone = pickle.loads(pickle.dumps(shipped))
    assert clone.fingerprint == shipped.fingerprint
    assert clone.encode("黄色正方形") == shipped.encode("黄色正方形")


def test_shipped_default_is_compact_on_bundled_captions(shipped: TextTokenizer) -> None:
    assert shipped.vocab_size == SHIPPED_VOCAB_SIZE
    assert len(shipped.encode("红色背景上中间有一个绿色圆形")) <= 6
    assert len(shipped.encode("a red circle in the center of a blue background")) <= 10
    assert len(shipped.encode("手写数字7")) <= 3
    lengths = [len(shipped.encode(t)) for t in sorted(set(default_training_sentences(SHAPES_DATASETS)))]
    assert max(lengths) <= 12


def test_shipped_default_fits_every_emoji_caption_in_the_text_budget(shipped: TextTokenizer) -> None:
    # 24 text tokens per row in the shipped model (pipeline.json text_budget), one of them [EOT]
    # for captions: every caption of every template must fit, or training cut it.
    from cogview.datasets import emoji  # the [emoji] extra, part of [dev]

    lengths = [len(shipped.encode(t)) for t in emoji.all_captions()]
    assert len(lengths) > 30_000 and max(lengths) <= 23


def test_shipped_default_is_reproducible(shipped: TextTokenizer, tmp_path: Path) -> None:
    # The dev extra pins sentencepiece to the version the shipped tokenizer was trained with:
    # another version may split the same captions differently, which this test must catch.
    recorded = shipped.training.get("sentencepiece_version")
    assert recorded == spm.__version__, (
        f"the shipped tokenizer was trained with sentencepiece {recorded}, this is {spm.__version__}: "
        f'install the pinned version (pip install -e ".[dev]")'
    )
    retrained = train_default(tmp_path)  # renders every emoji once: needs the [emoji] extra (in [dev])
    assert retrained.fingerprint == shipped.fingerprint, (
        "the bundled captions or training settings changed: retrain the shipped tokenizer with the "
        "command in cogview/tokenizers/text.py's docstring"
    )


def test_language_ids_let_chinese_write_capitals_but_not_english_words() -> None:
    # Chinese names spell acronyms in capitals (OK按钮, A型血, DNA): a Chinese caption needs them.
    # A lowercase letter makes a piece English; a CJK character makes it Chinese.
    corpus = ["OK按钮", "A型血", "DNA", "OK button", "cool按钮", "a cool button", "按钮"] * 5
    tok = TextTokenizer.train(corpus, None, vocab_size=300)
    zh, en = set(tok.language_ids("zh")), set(tok.language_ids("en"))
    zh_ids = tok.encode("OK按钮 A型血 DNA")
    assert set(zh_ids) <= zh, [tok._sp.id_to_piece(i) for i in zh_ids if i not in zh]
    assert any(i in en for i in tok.encode("OK"))
    lower = tok.encode("cool")
    assert lower and not set(lower) & zh
    assert not set(tok.encode("按钮")) & en
