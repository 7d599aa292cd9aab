"""The unified id space shared by image codes, text pieces and command tokens (SPEC 2.3).

CogView feeds one transformer a single stream of ids, so every tokenizer must agree on where
each kind of token lives: image codes first (no offset), then the SentencePiece ids shifted by
``image_size``, then the 27 command tokens in the original order, then our extra tokens, and
finally unused padding ids up to a multiple (128 in the original, for fast matmuls).
:class:`Vocabulary` owns that layout and nothing else; it holds no model and does no I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, TypeVar

from cogview.checks import positive_int

# The 27 command tokens of the original UnifiedTokenizer, in id order (SPEC 2.3). The order is
# part of the checkpoint format: the released weights index their embedding rows this way.
COMMAND_TOKENS: tuple[str, ...] = (
    "[PAD]",
    "[BOI1]", "[BOI2]", "[BOI3]",
    "[EOI1]", "[EOI2]", "[EOI3]",
    "[ROI1]", "[ROI2]", "[ROI3]",
    "[SEP]",
    "[MASK]",
    "[CLS]",
    "[ENC]",
    "[TINY]", "[SMALL]", "[BASE]", "[BIG]",
    "[POS0]", "[POS1]", "[POS2]", "[POS3]", "[POS4]", "[POS5]", "[POS6]", "[POS7]", "[POS8]",
)  # fmt: skip

# Tokens the original lacks. [EOT] ends a generated caption, so captioning can stop early
# instead of always sampling 20 text tokens as the original did (SPEC 2.3, 2.4).
DEFAULT_EXTRA_TOKENS: tuple[str, ...] = ("[EOT]",)

# Ids accepted by the mask/offset helpers: a Python int, a sequence of ints (answered as a
# list), or anything that supports elementwise comparison and arithmetic (torch.Tensor,
# numpy.ndarray), answered in kind.
Ids = TypeVar("Ids")


@dataclass(frozen=True)
class Vocabulary:
    """Layout of the unified vocabulary: image codes, text pieces, commands, extras, padding.

    Args:
        image_size: number of VQ-VAE codes; they occupy ids ``[0, image_size)``.
        text_size: number of text-tokenizer pieces; they occupy
            ``[image_size, image_size + text_size)`` (unified id = text id + ``text_offset``).
        extra_tokens: names of our own special tokens, placed after the 27 command tokens.
        pad_to_multiple: the total size is rounded up to a multiple of this (1: no padding).
    """

    image_size: int
    text_size: int
    extra_tokens: tuple[str, ...] = DEFAULT_EXTRA_TOKENS
    pad_to_multiple: int = 128

    def __post_init__(self) -> None:
        for name in ("image_size", "text_size", "pad_to_multiple"):
            value = positive_int(f"Vocabulary.{name}", getattr(self, name), type_error=ValueError)
            object.__setattr__(self, name, value)
        if isinstance(self.extra_tokens, str) or not all(isinstance(t, str) and t for t in self.extra_tokens):
            raise ValueError(
                f"Vocabulary.extra_tokens must be a sequence of non-empty names such as ('[EOT]',), "
                f"got {self.extra_tokens!r}"
            )
        # Accept a list (e.g. from JSON) but store a tuple so the dataclass stays hashable.
        object.__setattr__(self, "extra_tokens", tuple(self.extra_tokens))
        clashes = [t for t in self.extra_tokens if t in COMMAND_TOKENS]
        if clashes:
            raise ValueError(
                f"extra_tokens {clashes} are already command tokens; drop them from extra_tokens"
            )
        if len(set(self.extra_tokens)) != len(self.extra_tokens):
            raise ValueError(f"extra_tokens must be unique, got {self.extra_tokens!r}")

    @classmethod
    def original(cls) -> Vocabulary:
        """The released CogView layout: 8192 codes, 50000 pieces, 27 commands, size 58240."""
        return cls(image_size=8192, text_size=50000, extra_tokens=(), pad_to_multiple=128)

    # --- layout -----------------------------------------------------------------------------

    @property
    def text_offset(self) -> int:
        """Unified id of text piece 0."""
        return self.image_size

    @property
    def command_offset(self) -> int:
        """Unified id of the first command token, ``[PAD]``."""
        return self.image_size + self.text_size

    @property
    def extra_offset(self) -> int:
        """Unified id of the first extra token (equals ``n_used`` when there are none)."""
        return self.command_offset + len(COMMAND_TOKENS)

    @property
    def n_used(self) -> int:
        """Number of ids that mean something (everything before the padding)."""
        return self.extra_offset + len(self.extra_tokens)

    @property
    def size(self) -> int:
        """Total, padded size: the embedding and output-layer width."""
        m = self.pad_to_multiple
        return (self.n_used + m - 1) // m * m

    @property
    def image_range(self) -> range:
        return range(0, self.image_size)

    @property
    def text_range(self) -> range:
        return range(self.text_offset, self.command_offset)

    @property
    def special_range(self) -> range:
        """Command and extra tokens (padding ids excluded)."""
        return range(self.command_offset, self.n_used)

    @property
    def special_tokens(self) -> tuple[str, ...]:
        """Names of all command and extra tokens, in id order."""
        return COMMAND_TOKENS + self.extra_tokens

    @cached_property
    def _special_ids(self) -> dict[str, int]:
        return {name: self.command_offset + i for i, name in enumerate(self.special_tokens)}

    # --- names ------------------------------------------------------------------------------

    def token_id(self, name: str) -> int:
        """Unified id of a command or extra token such as ``"[BOI1]"``."""
        try:
            return self._special_ids[name]
        except KeyError:
            raise ValueError(
                f"unknown special token {name!r}; valid names are {', '.join(self.special_tokens)}"
            ) from None

    def token_name(self, token_id: int) -> str:
        """Name of the command or extra token with this unified id."""
        token_id = int(token_id)
        if token_id in self.special_range:
            return self.special_tokens[token_id - self.command_offset]
        raise ValueError(f"id {token_id} is {self._describe(token_id)}, not a command or extra token")

    def _describe(self, token_id: int) -> str:
        if token_id in self.image_range:
            return f"an image code (range {self.image_range.start}..{self.image_range.stop - 1})"
        if token_id in self.text_range:
            return f"a text piece (range {self.text_range.start}..{self.text_range.stop - 1})"
        if self.n_used <= token_id < self.size:
            return f"an unused padding id (range {self.n_used}..{self.size - 1})"
        return f"outside the vocabulary of size {self.size}"

    # --- masks and offsets (tensor friendly) --------------------------------------------------

    def is_image(self, ids: Ids) -> Ids:
        """Elementwise ``True`` where ``ids`` are image codes."""
        return _in_range(ids, 0, self.image_size)

    def is_text(self, ids: Ids) -> Ids:
        """Elementwise ``True`` where ``ids`` are (offset) text pieces."""
        return _in_range(ids, self.text_offset, self.command_offset)

    def is_special(self, ids: Ids) -> Ids:
        """Elementwise ``True`` where ``ids`` are command or extra tokens."""
        return _in_range(ids, self.command_offset, self.n_used)

    def text_to_unified(self, ids: Ids) -> Ids:
        """Shift text-tokenizer ids ``[0, text_size)`` into the unified text range."""
        _check_range(ids, 0, self.text_size, "text-tokenizer ids")
        return _shift(ids, self.text_offset)

    def unified_to_text(self, ids: Ids) -> Ids:
        """Inverse of :meth:`text_to_unified`; every id must lie in :attr:`text_range`."""
        _check_range(ids, self.text_offset, self.command_offset, "unified text ids")
        return _shift(ids, -self.text_offset)

    # --- serialisation ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields; :meth:`from_dict` rebuilds an equal vocabulary."""
        return {
            "image_size": self.image_size,
            "text_size": self.text_size,
            "extra_tokens": list(self.extra_tokens),
            "pad_to_multiple": self.pad_to_multiple,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Vocabulary:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        missing = sorted(fields - set(d))
        if unknown or missing:
            raise ValueError(
                f"vocabulary dict has unknown keys {unknown} / missing keys {missing}; expected exactly {sorted(fields)}"
            )
        return cls(**d)


def default_vocab(image_tokenizer: Any, text_tokenizer: Any) -> Vocabulary:
    """The unified vocabulary of an ImageTokenizer and a TextTokenizer (default extra tokens and
    padding); prepare, training and pipelines share it. Typed loosely: both tokenizers import this module."""
    return Vocabulary(image_size=image_tokenizer.codebook_size, text_size=text_tokenizer.vocab_size)


def _in_range(ids: Any, lo: int, hi: int) -> Any:
    if isinstance(ids, (list, tuple)):
        return [lo <= int(i) < hi for i in ids]
    if isinstance(ids, int):
        return lo <= ids < hi
    return (ids >= lo) & (ids < hi)


def _shift(ids: Any, offset: int) -> Any:
    if isinstance(ids, (list, tuple)):
        return [int(i) + offset for i in ids]
    return ids + offset


def _check_range(ids: Any, lo: int, hi: int, what: str) -> None:
    if isinstance(ids, (int, list, tuple)):
        flat = [ids] if isinstance(ids, int) else [int(i) for i in ids]
        bad = [i for i in flat if not lo <= i < hi]
    else:  # tensor, array or numpy scalar: one vectorised check
        flat = ids.reshape(-1)
        bad = flat[(flat < lo) | (flat >= hi)].tolist()
    if bad:
        raise ValueError(f"{what} must lie in [{lo}, {hi}); found {bad[:5]}")
