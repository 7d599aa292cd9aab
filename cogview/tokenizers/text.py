"""TextTokenizer: a SentencePiece model mapping text to text ids ``[0, vocab_size)`` and back.

It owns loading, saving, training and fingerprinting one SentencePiece model (the path is
always passed in; there is no process-wide tokenizer as in the original ``get_tokenizer()``),
plus the shift into the unified id space of :class:`~cogview.tokenizers.vocab.Vocabulary`.
It loads the original ``cog-pretrain.model`` unchanged (SPEC 2.1) as well as our own models.

The shipped default (``cogview/assets/default/text_tokenizer/``) is reproduced with (it needs the
``[emoji]`` extra for the emoji names)::

    python -c "from cogview.tokenizers.text import train_default; train_default('out/text_tokenizer')"
"""

from __future__ import annotations

import hashlib
import importlib.resources
import io
import logging
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import sentencepiece as spm

from cogview.language import LANGUAGES, is_cjk
from cogview.serialization import CONFIG_NAME, atomic_write, read_json, write_json
from cogview.tokenizers.vocab import Vocabulary

logger = logging.getLogger(__name__)

MODEL_NAME = "spm.model"
FORMAT_NAME = "cogview.text_tokenizer"
_FINGERPRINT_CHARS = 16

# Why these settings (each is recorded in config.json next to the model):
# - BPE, as the original (SPEC 2.1): deterministic greedy merges; unigram gave longer encodings
#   of our captions at the same vocabulary size.
# - byte_fallback: a character outside the pieces becomes its UTF-8 bytes (256 byte pieces)
#   instead of <unk>, so every prompt (emoji, rare CJK, full-width punctuation) survives.
# - identity normalisation, no whitespace trimming, no dummy prefix: decode(encode(s)) == s
#   exactly. The original used NFKC + dummy prefix, which folds full-width to half-width
#   characters and collapses spaces: fine for a 50k-piece model of web text, lossy for us.
# - character_coverage 1.0: every character of the training captions gets its own piece.
# - split_digits: numbers are spelled digit by digit, so unseen numbers reuse known pieces.
# - num_threads 1 and no sentence sampling or shuffling: the same sentences in the same order
#   give the same model bytes.
# - vocab_size 576 (3 specials + 256 bytes + 317 learned) for shapes and digits alone (the
#   first shipped model's tokenizer): on their captions, the largest size (tried in steps of 32)
#   at which no piece spans two caption slots (e.g. a colour and a shape), so the transformer sees
#   colour, shape and position as separate tokens; at 608 BPE starts fusing pieces like
#   "橙色三角形". Every shapes or digits caption is <= 12 tokens.
DEFAULT_TRAINING: dict[str, Any] = {"model_type": "bpe", "vocab_size": 576}
SHAPES_DATASETS = ("shapes", "digits")
SHAPES_VOCAB_SIZE = 576
# The shipped (emoji) model's tokenizer adds 31,552 emoji captions (1,744 distinct characters).
# Measured on the canonical names (zh + en) at 2304 / 3072 / 4096 pieces: mean 6.0 / 4.6 / 4.1
# tokens, longest caption of any template 33 / 26 / 22 tokens; 4096 is the smallest tried that
# fits every caption in a 24-token text budget, and shapes captions stay <= 12 tokens.
EMOJI_DATASETS = ("shapes", "digits", "emoji")
EMOJI_VOCAB_SIZE = 4096
SHIPPED_DATASETS = EMOJI_DATASETS
SHIPPED_VOCAB_SIZE = EMOJI_VOCAB_SIZE
_FIXED_TRAINER_OPTIONS: dict[str, Any] = {
    "byte_fallback": True,
    "character_coverage": 1.0,
    "normalization_rule_name": "identity",
    "remove_extra_whitespaces": False,
    "add_dummy_prefix": False,
    "split_digits": True,
    "unk_id": 0,
    "bos_id": 1,
    "eos_id": 2,
    "pad_id": -1,
    "num_threads": 1,
    "input_sentence_size": 0,
    "shuffle_input_sentence": False,
    "minloglevel": 2,  # its warnings precede the errors we re-raise as ValueError
}

# SentencePiece maps U+2581 ("▁", its own space marker) to a space on decode; we encode that
# character as its UTF-8 bytes instead so the round trip stays exact (needs byte fallback).
_SPACE_MARKER = "\u2581"


class TextTokenizer:
    """A SentencePiece text tokenizer with a content fingerprint; build it with a class method.

    Args:
        model_bytes: the serialised SentencePiece model.
        source: where the bytes came from, for error messages and ``repr``.
        training: the settings it was trained with, written back by :meth:`save_pretrained`.
    """

    def __init__(
        self, model_bytes: bytes, *, source: str = "<bytes>", training: dict[str, Any] | None = None
    ) -> None:
        if not model_bytes:
            raise ValueError(f"{source} is empty; expected a SentencePiece .model file")
        processor = spm.SentencePieceProcessor()
        try:
            processor.LoadFromSerializedProto(model_bytes)
        except (RuntimeError, OSError) as e:
            raise ValueError(
                f"{source} is not a readable SentencePiece model ({e}); the file may be truncated or "
                f"of another format: retrain it or pass the right .model file"
            ) from None
        if processor.get_piece_size() == 0:
            raise ValueError(f"{source} is a SentencePiece model with no pieces; retrain it")
        self._sp = processor
        self._bytes = bytes(model_bytes)
        self.source = source
        self.training = dict(training or {})
        self._fingerprint = hashlib.sha256(self._bytes).hexdigest()[:_FINGERPRINT_CHARS]
        self._byte_ids = [processor.piece_to_id(f"<0x{b:02X}>") for b in range(256)]
        self._has_byte_fallback = all(processor.is_byte(i) for i in self._byte_ids)
        self._byte_value = {i: b for b, i in enumerate(self._byte_ids)} if self._has_byte_fallback else {}
        # With a dummy prefix every separately encoded run gains a leading "▁": the U+2581
        # escape below would then insert spaces, so it is used only without one.
        first = processor.encode("a", out_type=str)
        self._escape_space_marker = self._has_byte_fallback and not first[0].startswith(_SPACE_MARKER)

    # --- construction ---------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None) -> TextTokenizer:
        """Load a folder written by :meth:`save_pretrained` or a bare SentencePiece ``.model`` file.

        ``path=None`` loads the shipped default tokenizer.
        """
        if path is None:
            resource = importlib.resources.files("cogview").joinpath("assets", "default", "text_tokenizer")
            with importlib.resources.as_file(resource) as folder:
                return cls._load(Path(folder))
        return cls._load(Path(path))

    @classmethod
    def _load(cls, path: Path) -> TextTokenizer:
        if path.is_file():
            return cls(_read_bytes(path), source=str(path))
        if not path.is_dir():
            raise ValueError(
                f"{path} does not exist; pass a folder written by TextTokenizer.save_pretrained or a "
                f"SentencePiece .model file"
            )
        config: dict[str, Any] = {}
        if (path / CONFIG_NAME).is_file():
            config = read_json(path / CONFIG_NAME)
            if config.get("format") != FORMAT_NAME:
                raise ValueError(
                    f"{path / CONFIG_NAME} has format {config.get('format')!r}, expected {FORMAT_NAME!r}; "
                    f"is this the folder of another component?"
                )
        model_path = path / config.get("model_file", MODEL_NAME)
        if not model_path.is_file():
            raise ValueError(
                f"{path} has no {model_path.name}; pass a folder written by TextTokenizer.save_pretrained "
                f"or the .model file itself"
            )
        tokenizer = cls(_read_bytes(model_path), source=str(model_path), training=config.get("training"))
        expected = config.get("fingerprint")
        if expected is not None and expected != tokenizer.fingerprint:
            raise ValueError(
                f"{model_path} has fingerprint {tokenizer.fingerprint} but {path / CONFIG_NAME} records "
                f"{expected}: the folder mixes files of two tokenizers; save it again with save_pretrained"
            )
        return tokenizer

    @classmethod
    def train(
        cls,
        sentences: Iterable[str],
        out_dir: str | os.PathLike | None,
        *,
        vocab_size: int = DEFAULT_TRAINING["vocab_size"],
        model_type: str = DEFAULT_TRAINING["model_type"],
    ) -> TextTokenizer:
        """Train a byte-fallback SentencePiece model on ``sentences``; save it if ``out_dir`` is given.

        Training is deterministic: the same sentences in the same order give the same model bytes.
        ``vocab_size`` counts the 3 specials (unk, <s>, </s>) and the 256 byte pieces; SentencePiece
        refuses sizes larger than the data supports, which is reported as a ValueError.
        """
        texts = list(sentences)
        bad = [t for t in texts if not isinstance(t, str)]
        if bad:
            raise ValueError(f"sentences must be strings, got {type(bad[0]).__name__} {bad[0]!r}")
        texts = [t for t in texts if t]
        if not texts:
            raise ValueError("no training sentences: pass at least one non-empty string")
        if model_type not in ("bpe", "unigram"):
            raise ValueError(f"model_type must be 'bpe' or 'unigram', got {model_type!r}")
        options = {**_FIXED_TRAINER_OPTIONS, "model_type": model_type, "vocab_size": vocab_size}
        writer = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=writer, **options)
        except RuntimeError as e:
            raise ValueError(
                f"SentencePiece training failed ({e}); adjust vocab_size to what the message allows"
            ) from None
        corpus_hash = hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()[:_FINGERPRINT_CHARS]
        training = {
            **options,
            "n_sentences": len(texts),
            "corpus_sha256": corpus_hash,
            "sentencepiece_version": spm.__version__,
        }
        tokenizer = cls(writer.getvalue(), source="<trained>", training=training)
        logger.info("trained %s tokenizer: %d pieces from %d sentences", model_type, vocab_size, len(texts))
        if out_dir is not None:
            tokenizer.save_pretrained(out_dir)
        return tokenizer

    def save_pretrained(self, out_dir: str | os.PathLike) -> None:
        """Write ``spm.model`` and ``config.json`` (fingerprint, size, training settings), atomically."""
        out_dir = Path(out_dir)
        if out_dir.exists() and not out_dir.is_dir():
            raise ValueError(f"{out_dir} is a file; save_pretrained needs a folder path")

        def write_model(tmp: str) -> None:
            Path(tmp).write_bytes(self._bytes)

        atomic_write(out_dir / MODEL_NAME, write_model)
        config = {
            "format": FORMAT_NAME,
            "model_file": MODEL_NAME,
            "fingerprint": self.fingerprint,
            "vocab_size": self.vocab_size,
            "training": self.training,
        }
        write_json(out_dir / CONFIG_NAME, config)

    # --- properties ------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of SentencePiece ids, i.e. the ``text_size`` of the unified vocabulary."""
        return self._sp.get_piece_size()

    @property
    def text_size(self) -> int:
        """Alias of :attr:`vocab_size`, named as in :class:`Vocabulary`."""
        return self.vocab_size

    @property
    def model_bytes(self) -> bytes:
        return self._bytes

    @property
    def fingerprint(self) -> str:
        """Short hash of the model bytes: shards, cogview.json and pipeline.json record it."""
        return self._fingerprint

    def __repr__(self) -> str:
        return f"TextTokenizer(vocab_size={self.vocab_size}, fingerprint={self.fingerprint!r}, source={self.source!r})"

    # SentencePieceProcessor is rebuilt from the bytes so that tokenizers pickle into
    # DataLoader workers regardless of the sentencepiece version's own pickling support.
    def __getstate__(self) -> dict[str, Any]:
        return {"model_bytes": self._bytes, "source": self.source, "training": self.training}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["model_bytes"], source=state["source"], training=state["training"])

    # --- text <-> text ids -----------------------------------------------------------------

    def encode(self, text: str, max_length: int | None = None) -> list[int]:
        """SentencePiece ids of ``text`` (no bos/eos added).

        With our byte-fallback models ``decode(encode(text)) == text`` for every string, including
        newlines, tabs, repeated spaces, emoji and U+2581; the original ``cog-pretrain.model``
        normalises (NFKC, collapsed spaces) and maps unknown characters to ``<unk>`` (id 0).
        ``""`` gives ``[]``: rejecting empty prompts is the pipeline's job. The original's query
        parsing (split on ASCII spaces, each run between command tokens encoded separately,
        SPEC 2.1) belongs to whoever builds sequences, not here.

        With ``max_length``, longer encodings are cut to ``max_length`` ids (never inside a
        character's byte sequence) and a ``UserWarning`` says by how much.
        """
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        if max_length is not None and max_length < 0:
            raise ValueError(f"max_length must be >= 0 or None, got {max_length}")
        if self._escape_space_marker and _SPACE_MARKER in text:
            marker_ids = [self._byte_ids[b] for b in _SPACE_MARKER.encode("utf-8")]
            ids: list[int] = []
            for i, part in enumerate(text.split(_SPACE_MARKER)):
                if i:
                    ids += marker_ids
                ids += self._sp.encode(part)
        else:
            ids = self._sp.encode(text)
        if max_length is not None and len(ids) > max_length:
            kept = self._drop_partial_character(ids[:max_length])
            warnings.warn(
                f"text encodes to {len(ids)} tokens, more than max_length={max_length}; keeping the first "
                f"{len(kept)} (shorten the text to keep all of it)",
                UserWarning,
                stacklevel=2,
            )
            ids = kept
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of SentencePiece ids; an invalid byte sequence decodes to U+FFFD."""
        ids = _as_int_list(ids)
        bad = [i for i in ids if not 0 <= i < self.vocab_size][:5]
        if bad:
            raise ValueError(f"text ids must lie in [0, {self.vocab_size}); found {bad}")
        return self._sp.decode(ids)

    def pieces(self, text: str) -> list[str]:
        """The pieces of ``text`` as strings (for inspection; "▁" marks a space)."""
        return [self._sp.id_to_piece(i) for i in self.encode(text)]

    def language_ids(self, lang: str) -> list[int]:
        """SentencePiece ids that can occur in text of ``lang`` ("zh" or "en"), for constrained decoding.

        A piece holding a CJK character (:func:`cogview.language.is_cjk`) is Chinese, one holding
        a lowercase ASCII letter is English, and pieces with neither (digits, punctuation, spaces,
        capitals) belong to both: Chinese text spells acronyms and letters in Latin capitals
        (OK按钮, A型血, DNA), so a Chinese caption must be able to write them. Byte-fallback pieces of
        multi-byte characters count as Chinese (they spell rare CJK); an ASCII byte counts as the
        character it is. Control and unknown pieces belong to none.
        """
        if lang not in LANGUAGES:
            raise ValueError(f"language must be 'zh' or 'en', got {lang!r}")
        out = []
        for i in range(self.vocab_size):
            if self._sp.is_control(i) or self._sp.is_unknown(i):
                continue
            if self._sp.is_byte(i):
                value = self._byte_value.get(i, 0x80)
                if value >= 0x80:  # part of a multi-byte character: spells rare CJK
                    if lang == "zh":
                        out.append(i)
                    continue
                piece = chr(value)
            else:
                piece = self._sp.id_to_piece(i)
            cjk = any(is_cjk(ch) for ch in piece)
            latin = any(ch.isascii() and ch.islower() for ch in piece)
            if (lang == "zh" and not latin) or (lang == "en" and not cjk):
                out.append(i)
        return out

    def _drop_partial_character(self, ids: list[int]) -> list[int]:
        """Drop trailing byte pieces that start a UTF-8 character without finishing it."""
        n_trailing = 0
        while n_trailing < len(ids) and ids[-1 - n_trailing] in self._byte_value:
            b = self._byte_value[ids[-1 - n_trailing]]
            n_trailing += 1
            if b & 0xC0 != 0x80:  # a lead (or ASCII) byte: the last character starts here
                need = 1 if b < 0x80 else 2 if b >> 5 == 0b110 else 3 if b >> 4 == 0b1110 else 4
                return ids if n_trailing >= need else ids[:-n_trailing]
        return ids

    # --- unified ids -------------------------------------------------------------------------

    def encode_unified(self, text: str, vocab: Vocabulary, max_length: int | None = None) -> list[int]:
        """Ids of ``text`` in ``vocab``'s unified space (SentencePiece id + ``vocab.text_offset``)."""
        self._check_vocab(vocab)
        return vocab.text_to_unified(self.encode(text, max_length=max_length))

    def decode_unified(self, ids: Iterable[int], vocab: Vocabulary, *, skip_non_text: bool = False) -> str:
        """Text of unified ids; image, command and padding ids raise unless ``skip_non_text``."""
        self._check_vocab(vocab)
        ids = _as_int_list(ids)
        if skip_non_text:
            ids = [i for i in ids if vocab.is_text(i)]
        return self.decode(vocab.unified_to_text(ids))

    def _check_vocab(self, vocab: Vocabulary) -> None:
        if vocab.text_size != self.vocab_size:
            raise ValueError(
                f"vocabulary has text_size={vocab.text_size} but this tokenizer has {self.vocab_size} "
                f"pieces; build the Vocabulary with text_size=tokenizer.vocab_size"
            )


def train_default(
    out_dir: str | os.PathLike,
    dataset_names: Sequence[str] = SHIPPED_DATASETS,
    vocab_size: int = SHIPPED_VOCAB_SIZE,
) -> TextTokenizer:
    """Retrain the shipped default tokenizer on every caption of the given datasets.

    Each dataset's captions are de-duplicated, sorted and repeated so that every dataset
    contributes about as many sentences as the largest one: digits has 100 captions against
    shapes' 6720, and unbalanced BPE spent all merges on shapes, leaving "handwritten" in
    8 pieces. Sorting makes the result independent of the order the datasets list them in.
    The first shipped model's tokenizer is ``train_default(out, SHAPES_DATASETS, SHAPES_VOCAB_SIZE)``.
    """
    options = {**DEFAULT_TRAINING, "vocab_size": vocab_size}
    return TextTokenizer.train(default_training_sentences(dataset_names), out_dir, **options)


def default_training_sentences(dataset_names: Sequence[str] = SHIPPED_DATASETS) -> list[str]:
    """The balanced caption corpus of :func:`train_default` (see there)."""
    # Imported here, not at module level: datasets sit above tokenizers in the dependency order,
    # and only this one-off asset builder needs them.
    import cogview.datasets as datasets

    groups = [sorted(set(getattr(datasets, name).all_captions())) for name in dataset_names]
    # Any caption all_caption_texts() lists beyond the per-dataset lists forms its own group.
    rest = set(datasets.all_caption_texts()).difference(*groups)
    groups += [sorted(rest)] if rest else []
    largest = max(len(g) for g in groups)
    return [text for g in groups for text in g * max(1, round(largest / len(g)))]


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read {path} ({e})") from None


def _as_int_list(ids: Iterable[int] | Any) -> list[int]:
    if hasattr(ids, "tolist"):  # torch.Tensor / numpy.ndarray
        ids = ids.tolist()
    if isinstance(ids, int):
        raise ValueError("ids must be a sequence of ints, got a single int; wrap it in a list")
    out = list(ids)
    if any(isinstance(i, Sequence) for i in out):
        raise ValueError("ids must be a flat sequence of ints; decode one sequence at a time")
    return [int(i) for i in out]
