"""Token layouts of every CogView task (SPEC 2.4) as pure functions over unified ids.

Builders turn (text ids, image codes) into one :class:`TokenSequence` (tokens, positions, loss
mask) of a :class:`~cogview.tokenizers.vocab.Vocabulary`; batch helpers work on stored token
rows alone, so shards keep only tokens and positions/masks are recomputed when batches are made
(:func:`positions_and_mask`). :func:`drop_caption` makes the empty-text rows used for
classifier-free guidance and :func:`text_token_mask` marks the positions SPEC 4.2 weights as text.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

from cogview.tokenizers.vocab import Vocabulary

ROI2_RULES = ("inference", "training")

# The one list of tasks: the layouts a shard row can hold (prepare), the tasks a model is trained
# on (cogview.json) and the jobs a pipeline serves (pipeline.json) share these names.
TASKS = ("text_to_image", "image_to_text", "super_resolution")
# Special tokens each layout adds around its text and image codes (see the builders below).
LAYOUT_OVERHEAD = {"text_to_image": 4, "image_to_text": 5, "super_resolution": 8}
DEFAULT_SR_WINDOW = 8  # low-res codes per super-resolution window side (a whole 32 px image on an 8x8 grid)


class TokenSequence(NamedTuple):
    """One sequence: ``tokens`` (int64 unified ids), ``positions`` (int64), ``loss_mask`` (float32).

    All three have the same length; ``loss_mask[i]`` is 1 where ``tokens[i]`` is a real token and
    0 on ``[PAD]``. A trainer predicting ``tokens[1:]`` from ``tokens[:-1]`` uses ``loss_mask[1:]``.
    """

    tokens: np.ndarray
    positions: np.ndarray
    loss_mask: np.ndarray


# --- validation helpers ---------------------------------------------------------------------


def _as_int_array(x: Any, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.size == 0:
        return arr.astype(np.int64).reshape(arr.shape)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what} must hold integers, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def _text(text_ids: Any, vocab: Vocabulary) -> np.ndarray:
    ids = _as_int_array(text_ids, "text_ids").reshape(-1)
    bad = ids[~vocab.is_text(ids)]
    if bad.size:
        raise ValueError(
            f"text_ids must be unified text ids in [{vocab.text_range.start}, {vocab.text_range.stop}); "
            f"found {bad[:5].tolist()} (use TextTokenizer.encode_unified or vocab.text_to_unified)"
        )
    return ids


def _codes(codes: Any, vocab: Vocabulary, what: str) -> np.ndarray:
    """Raw VQ codes (h, w) -> unified image ids flattened in raster order."""
    arr = _as_int_array(codes, what)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"{what} must be a non-empty (h, w) grid of VQ codes, got shape {arr.shape}")
    flat = arr.reshape(-1)  # raster order: row by row
    bad = flat[(flat < 0) | (flat >= vocab.image_size)]
    if bad.size:
        raise ValueError(
            f"{what} must be VQ codes in [0, {vocab.image_size}) (the vocabulary's image_size); "
            f"found {bad[:5].tolist()}: was the vocabulary built for this image tokenizer?"
        )
    return flat + vocab.image_range.start


def _ids(vocab: Vocabulary, *names: str) -> np.ndarray:
    return np.array([vocab.token_id(n) for n in names], dtype=np.int64)


def _restart_positions(index: Any, first_roi2: Any, roi2_rule: str) -> Any:
    """SPEC 1.2's position restart, for numpy arrays and tensors alike (one copy of the rule)."""
    if roi2_rule not in ROI2_RULES:
        raise ValueError(f"roi2_rule must be one of {ROI2_RULES}, got {roi2_rule!r}")
    after = index >= first_roi2 if roi2_rule == "training" else index > first_roi2
    return index - after * first_roi2


def _sequence(tokens: np.ndarray, vocab: Vocabulary, roi2_rule: str = "inference") -> TokenSequence:
    roi2 = np.flatnonzero(tokens == vocab.token_id("[ROI2]"))
    first = int(roi2[0]) if roi2.size else len(tokens)
    positions = _restart_positions(np.arange(len(tokens), dtype=np.int64), first, roi2_rule)
    loss_mask = (tokens != vocab.token_id("[PAD]")).astype(np.float32)
    return TokenSequence(tokens, positions, loss_mask)


# --- builders (SPEC 2.4) ----------------------------------------------------------------------


def text_to_image(text_ids: Any, image_codes: Any, vocab: Vocabulary) -> TokenSequence:
    """``[ROI1] text [BASE] [BOI1] codes [EOI1]``: the pretraining / text-to-image layout.

    Args:
        text_ids: unified text ids (already offset by ``vocab.text_offset``).
        image_codes: raw VQ codes ``(h, w)`` in ``[0, vocab.image_size)``; flattened row by row.
    """
    tokens = np.concatenate(
        [
            _ids(vocab, "[ROI1]"),
            _text(text_ids, vocab),
            _ids(vocab, "[BASE]", "[BOI1]"),
            _codes(image_codes, vocab, "image_codes"),
            _ids(vocab, "[EOI1]"),
        ]
    )
    return _sequence(tokens, vocab)


def image_to_text(image_codes: Any, text_ids: Any, vocab: Vocabulary) -> TokenSequence:
    """``[BASE] [BOI1] codes [EOI1] [ROI1] text [EOT]``: captioning and self-reranking (SPEC 2.4).

    The original had no end token and always sampled 20 caption tokens; ``[EOT]`` (an extra
    token of our vocabulary) lets a caption stop early.
    """
    if "[EOT]" not in vocab.extra_tokens:
        raise ValueError(
            "image_to_text ends captions with [EOT], which this vocabulary lacks; "
            "build it with extra_tokens=('[EOT]',) (the default)"
        )
    tokens = np.concatenate(
        [
            _ids(vocab, "[BASE]", "[BOI1]"),
            _codes(image_codes, vocab, "image_codes"),
            _ids(vocab, "[EOI1]", "[ROI1]"),
            _text(text_ids, vocab),
            _ids(vocab, "[EOT]"),
        ]
    )
    return _sequence(tokens, vocab)


def _super_resolution_tokens(
    text_ids: Any, low_codes: Any, high_codes: Any, vocab: Vocabulary, low_what: str, high_what: str
) -> list[np.ndarray]:
    return [
        _ids(vocab, "[ROI1]"),
        _text(text_ids, vocab),
        _ids(vocab, "[BASE]", "[BOI1]"),
        _codes(low_codes, vocab, low_what),
        _ids(vocab, "[EOI1]", "[ROI2]", "[POS0]", "[BASE]", "[BOI2]"),
        _codes(high_codes, vocab, high_what),
    ]


def super_resolution(
    text_ids: Any, low_codes: Any, high_codes: Any, vocab: Vocabulary, *, roi2_rule: str = "inference"
) -> TokenSequence:
    """``[ROI1] text [BASE] [BOI1] low [EOI1] [ROI2] [POS0] [BASE] [BOI2] high [EOI2]`` (SPEC 2.4).

    Positions restart at ``[ROI2]`` (SPEC 1.2). ``roi2_rule="inference"`` (default) is the rule of
    the released sampling code, which the released SR weights expect: ``[ROI2]`` keeps its
    absolute index and the tokens after it get 1, 2, 3, ... ``"training"`` is the original
    finetuning rule, which gives ``[ROI2]`` position 0 as well; the two differ only at ``[ROI2]``.
    We follow the released inference layout, including the ``[POS0]`` after ``[ROI2]``.
    """
    tokens = np.concatenate(
        _super_resolution_tokens(text_ids, low_codes, high_codes, vocab, "low_codes", "high_codes")
        + [_ids(vocab, "[EOI2]")]
    )
    return _sequence(tokens, vocab, roi2_rule)


def super_resolution_window(
    text_ids: Any, low_crop: Any, high_strip: Any, vocab: Vocabulary, *, roi2_rule: str = "inference"
) -> TokenSequence:
    """One sliding window of CogView's ``magnify`` (SPEC 3.4): low-res context crop + high-res strip.

    ``[ROI1] text [BASE] [BOI1] low_crop [EOI1] [ROI2] [POS0] [BASE] [BOI2] high_strip``: the
    crop is a ``(16, 16)`` window of the low-res codes, the strip the ``(line, 32)`` rows of the
    high-res window in raster order. There is no ``[EOI2]``: a window is a prefix of the
    :func:`super_resolution` layout of a 2x crop, which is how the released model sees it.
    """
    tokens = np.concatenate(
        _super_resolution_tokens(text_ids, low_crop, high_strip, vocab, "low_crop", "high_strip")
    )
    return _sequence(tokens, vocab, roi2_rule)


def pad(seq: TokenSequence, seq_len: int, vocab: Vocabulary) -> TokenSequence:
    """Right-pad ``seq`` to ``seq_len`` with ``[PAD]`` (loss mask 0, positions keep counting)."""
    n = len(seq.tokens)
    if n > seq_len:
        raise ValueError(
            f"sequence of length {n} does not fit seq_len={seq_len}; shorten the text "
            f"(text budget) or raise seq_len by at least {n - seq_len}"
        )
    extra = seq_len - n
    last = int(seq.positions[-1]) if n else -1
    return TokenSequence(
        np.concatenate([seq.tokens, np.full(extra, vocab.token_id("[PAD]"), dtype=np.int64)]),
        np.concatenate([seq.positions, np.arange(last + 1, last + 1 + extra, dtype=np.int64)]),
        np.concatenate([seq.loss_mask, np.zeros(extra, dtype=np.float32)]),
    )


# --- batch helpers over stored rows -----------------------------------------------------------


def positions_and_mask(
    tokens: torch.Tensor, vocab: Vocabulary, *, roi2_rule: str = "inference"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions and loss mask of token rows ``(B, L)``, from the tokens alone.

    Positions are ``0..L-1``; in a row holding ``[ROI2]`` they restart there (SPEC 1.2, see
    :func:`super_resolution` for ``roi2_rule``); only the first ``[ROI2]`` counts. The loss mask
    is 1.0 on every token but ``[PAD]``.

    Returns:
        positions ``(B, L)`` int64 and loss_mask ``(B, L)`` float32, on ``tokens.device``.
    """
    if tokens.ndim != 2:
        raise ValueError(f"tokens must have shape (B, L), got {tuple(tokens.shape)}")
    B, L = tokens.shape
    index = torch.arange(L, device=tokens.device).expand(B, L)  # B, L
    is_roi2 = tokens == vocab.token_id("[ROI2]")  # B, L
    first = torch.where(is_roi2.any(1), is_roi2.int().argmax(1), L)[:, None]  # B, 1
    positions = _restart_positions(index, first, roi2_rule)  # B, L
    loss_mask = (tokens != vocab.token_id("[PAD]")).float()  # B, L
    return positions, loss_mask


def _first(tokens: torch.Tensor, token_id: int) -> torch.Tensor:
    """Index ``[B, 1]`` of the first ``token_id`` in each row, ``L`` where there is none."""
    hit = tokens == token_id  # B, L
    return torch.where(hit.any(1), hit.int().argmax(1), tokens.shape[1])[:, None]


def sr_cells(tokens: torch.Tensor, vocab: Vocabulary) -> torch.Tensor:
    """2-D cell ids ``[B, L]`` of super-resolution rows, for models with cell embeddings.

    In a row holding ``[ROI2]``, the ``k``-th low-res code after ``[BOI1]`` gets ``1 + k``, and the
    2x code at ``(r, c)`` of the window after ``[BOI2]`` gets ``1 + (r // 2) * w + c // 2``: the id
    of the low-res code covering the same pixels (``w`` = the low crop's side, from its length).
    Every other token, and every row without ``[ROI2]``, gets 0 ("no cell").
    """
    if tokens.ndim != 2:
        raise ValueError(f"tokens must have shape (B, L), got {tuple(tokens.shape)}")
    B, L = tokens.shape
    index = torch.arange(L, device=tokens.device).expand(B, L)  # B, L
    boi1, eoi1, boi2 = (_first(tokens, vocab.token_id(n)) for n in ("[BOI1]", "[EOI1]", "[BOI2]"))
    sr = _first(tokens, vocab.token_id("[ROI2]")) < L  # B, 1
    n_low = eoi1 - boi1 - 1  # B, 1
    side = n_low.clamp(min=1).double().sqrt().round().long()  # B, 1
    bad = sr & ((side * side != n_low) | (boi2 >= L))
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"row {row} holds [ROI2] but not a square low-res crop between [BOI1] and [EOI1] followed "
            f"by [BOI2] ({int(n_low[row])} codes); it is not a super-resolution row"
        )
    image = vocab.is_image(tokens)  # B, L
    low = sr & image & (index > boi1) & (index < eoi1)  # B, L
    high = sr & image & (index > boi2)  # B, L
    k = index - boi2 - 1  # B, L: index in the 2x window, raster order
    r, c = k // (2 * side), k % (2 * side)
    cells = torch.where(low, index - boi1, 0)
    return torch.where(high, 1 + (r // 2) * side + c // 2, cells)


def sr_sources(tokens: torch.Tensor, vocab: Vocabulary, cells: torch.Tensor | None = None) -> torch.Tensor:
    """Token ids ``[B, L, 9]`` of the 3x3 low-res neighbourhood each super-resolution 2x code refines.

    For the 2x code with cell id ``c`` (:func:`sr_cells`), the low-res crop's codes at offsets
    ``(dy, dx)`` in ``-1, 0, 1`` (row-major, the centre is index 4) around code ``c - 1``; -1
    outside the crop and at every position that is not a 2x code. ``cells``: :func:`sr_cells`
    of ``tokens`` when the caller already has them.
    """
    cells = sr_cells(tokens, vocab) if cells is None else cells  # B, L
    B, L = tokens.shape
    boi1, eoi1 = (_first(tokens, vocab.token_id(n)) for n in ("[BOI1]", "[EOI1]"))  # B, 1
    side = (eoi1 - boi1 - 1).clamp(min=1).double().sqrt().round().long()  # B, 1
    high = (cells > 0) & ((tokens == vocab.token_id("[BOI2]")).cumsum(1) > 0)  # B, L
    row, col = (cells - 1) // side, (cells - 1) % side  # B, L
    out = []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            r, c = row + dy, col + dx
            inside = high & (r >= 0) & (r < side) & (c >= 0) & (c < side)
            index = (boi1 + 1 + r * side + c).clamp(0, L - 1)  # B, L
            out.append(torch.where(inside, tokens.gather(1, index), -1))
    return torch.stack(out, dim=-1)  # B, L, 9


def drop_caption(tokens: torch.Tensor, drop: torch.Tensor, vocab: Vocabulary) -> torch.Tensor:
    """Remove the text of the rows selected by ``drop`` that start with ``[ROI1] text [BASE]``.

    A selected text-to-image row ``[ROI1] text [BASE] [BOI1] codes [EOI1] [PAD]...`` becomes
    ``[ROI1] [BASE] [BOI1] codes [EOI1] [PAD]...`` (shifted left, padded at the end): the
    unconditional rows of classifier-free guidance. Super-resolution rows lose their text the same
    way, so one model upscales with or without a prompt. Image-to-text rows (starting with
    ``[BASE]``) are returned unchanged: their text is the target.

    Args:
        tokens: ``(B, L)`` int64 rows.
        drop: ``(B,)`` bool, True for rows whose caption is dropped.
    """
    if tokens.ndim != 2 or drop.shape != tokens.shape[:1]:
        raise ValueError(
            f"expected tokens (B, L) and drop (B,), got {tuple(tokens.shape)} and {tuple(drop.shape)}"
        )
    B, L = tokens.shape
    is_base = tokens == vocab.token_id("[BASE]")  # B, L
    text_first = (tokens[:, 0] == vocab.token_id("[ROI1]")) & is_base.any(1)  # B
    # Text length = index of the first [BASE] - 1; rows left alone shift by 0.
    shift = torch.where(drop.bool() & text_first, is_base.int().argmax(1) - 1, 0)[:, None]  # B, 1
    index = torch.arange(L, device=tokens.device).expand(B, L)  # B, L
    source = torch.where(index >= 1, index + shift, index)  # B, L
    out = tokens.gather(1, source.clamp(max=L - 1))  # B, L
    return out.masked_fill(source >= L, vocab.token_id("[PAD]"))


def text_token_mask(inputs: torch.Tensor, vocab: Vocabulary) -> torch.Tensor:
    """Bool mask of positions whose *input* token is text or a command token (not an image code, not ``[PAD]``).

    This is SPEC 4.2's definition of a "text" position, the ones ``--txt-loss-scale`` weights.
    """
    return (vocab.is_text(inputs) | vocab.is_special(inputs)) & (inputs != vocab.token_id("[PAD]"))
