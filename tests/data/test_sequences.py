"""Task layouts (SPEC 2.4) against hand-written sequences, position restart (SPEC 1.2), batch helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cogview.data.sequences import (
    drop_caption,
    image_to_text,
    pad,
    positions_and_mask,
    sr_cells,
    sr_sources,
    super_resolution,
    super_resolution_window,
    text_to_image,
    text_token_mask,
)
from cogview.tokenizers.vocab import Vocabulary

# Vocabulary(image_size=16, text_size=20): codes 0..15, text 16..35, then the command tokens.
PAD, BOI1, BOI2, EOI1, EOI2, ROI1, ROI2, BASE, POS0, EOT = 36, 37, 38, 40, 41, 43, 44, 52, 54, 63
CODES = [[1, 2], [3, 4]]  # raster order: 1 2 3 4
TEXT = [16, 17, 18]  # unified text ids


@pytest.fixture
def vocab() -> Vocabulary:
    v = Vocabulary(image_size=16, text_size=20)
    names = ["[PAD]", "[BOI1]", "[BOI2]", "[EOI1]", "[EOI2]", "[ROI1]", "[ROI2]", "[BASE]", "[POS0]", "[EOT]"]
    assert [v.token_id(n) for n in names] == [PAD, BOI1, BOI2, EOI1, EOI2, ROI1, ROI2, BASE, POS0, EOT]
    return v


def test_text_to_image_layout(vocab: Vocabulary) -> None:
    seq = text_to_image(TEXT, torch.tensor(CODES), vocab)
    assert seq.tokens.tolist() == [ROI1, 16, 17, 18, BASE, BOI1, 1, 2, 3, 4, EOI1]
    assert seq.positions.tolist() == list(range(11))
    assert seq.loss_mask.tolist() == [1.0] * 11
    assert seq.tokens.dtype == np.int64 and seq.loss_mask.dtype == np.float32


def test_image_to_text_layout_ends_with_eot(vocab: Vocabulary) -> None:
    seq = image_to_text(np.array(CODES), TEXT, vocab)
    assert seq.tokens.tolist() == [BASE, BOI1, 1, 2, 3, 4, EOI1, ROI1, 16, 17, 18, EOT]
    assert seq.positions.tolist() == list(range(12))
    assert seq.loss_mask.tolist() == [1.0] * 12


def test_image_to_text_needs_eot() -> None:
    with pytest.raises(ValueError, match=r"\[EOT\]"):
        image_to_text(CODES, [16], Vocabulary(image_size=16, text_size=20, extra_tokens=()))


def test_super_resolution_inference_rule_keeps_roi2_index(vocab: Vocabulary) -> None:
    seq = super_resolution([16], [[5]], CODES, vocab)
    #               0     1   2     3    4  5     6     7     8     9   10 11 12 13 14
    expected = [ROI1, 16, BASE, BOI1, 5, EOI1, ROI2, POS0, BASE, BOI2, 1, 2, 3, 4, EOI2]
    assert seq.tokens.tolist() == expected
    assert seq.positions.tolist() == [0, 1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6, 7, 8]
    assert seq.loss_mask.tolist() == [1.0] * 15


def test_super_resolution_training_rule_restarts_at_zero(vocab: Vocabulary) -> None:
    seq = super_resolution([16], [[5]], CODES, vocab, roi2_rule="training")
    assert seq.positions.tolist() == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 6, 7, 8]
    with pytest.raises(ValueError, match="roi2_rule"):
        super_resolution([16], [[5]], CODES, vocab, roi2_rule="paper")


def test_super_resolution_window_is_the_layout_without_eoi2(vocab: Vocabulary) -> None:
    seq = super_resolution_window([16], [[5, 6], [7, 8]], [[1, 2]], vocab)
    expected = [ROI1, 16, BASE, BOI1, 5, 6, 7, 8, EOI1, ROI2, POS0, BASE, BOI2, 1, 2]
    assert seq.tokens.tolist() == expected
    assert seq.positions.tolist() == list(range(10)) + [1, 2, 3, 4, 5]


def test_builders_reject_bad_ids(vocab: Vocabulary) -> None:
    with pytest.raises(ValueError, match="unified text ids"):
        text_to_image([3], CODES, vocab)  # a raw text-tokenizer id, not offset
    with pytest.raises(ValueError, match=r"VQ codes in \[0, 16\)"):
        text_to_image(TEXT, [[1, 16]], vocab)
    with pytest.raises(ValueError, match=r"\(h, w\)"):
        text_to_image(TEXT, [1, 2, 3, 4], vocab)


def test_pad_and_too_long(vocab: Vocabulary) -> None:
    seq = pad(text_to_image([16], [[1]], vocab), 8, vocab)
    assert seq.tokens.tolist() == [ROI1, 16, BASE, BOI1, 1, EOI1, PAD, PAD]
    assert seq.positions.tolist() == list(range(8))
    assert seq.loss_mask.tolist() == [1, 1, 1, 1, 1, 1, 0, 0]
    with pytest.raises(ValueError, match="length 6 does not fit seq_len=5"):
        pad(text_to_image([16], [[1]], vocab), 5, vocab)


def test_positions_and_mask_match_the_builders(vocab: Vocabulary) -> None:
    seqs = [
        pad(text_to_image(TEXT, CODES, vocab), 16, vocab),
        pad(super_resolution([16], [[5]], CODES, vocab), 16, vocab),
    ]
    tokens = torch.tensor(np.stack([s.tokens for s in seqs]))
    positions, mask = positions_and_mask(tokens, vocab)
    assert positions.tolist() == [s.positions.tolist() for s in seqs]
    assert mask.tolist() == [s.loss_mask.tolist() for s in seqs]
    assert positions.dtype == torch.int64 and mask.dtype == torch.float32


def test_drop_caption_on_selected_text_first_rows(vocab: Vocabulary) -> None:
    rows = [
        pad(text_to_image(TEXT, CODES, vocab), 14, vocab).tokens,
        pad(text_to_image(TEXT, CODES, vocab), 14, vocab).tokens,
        pad(image_to_text(CODES, TEXT, vocab), 14, vocab).tokens,
        pad(super_resolution([16], [[5]], [[1]], vocab), 14, vocab).tokens,
    ]
    tokens = torch.tensor(np.stack(rows))
    out = drop_caption(tokens, torch.tensor([True, False, True, True]), vocab)
    assert out[0].tolist() == [ROI1, BASE, BOI1, 1, 2, 3, 4, EOI1] + [PAD] * 6
    assert torch.equal(out[1:3], tokens[1:3])  # not selected; image-to-text keeps its target text
    roi2, pos0, boi2 = (vocab.token_id(t) for t in ("[ROI2]", "[POS0]", "[BOI2]"))
    assert (
        out[3].tolist()
        == [ROI1, BASE, BOI1, 5, EOI1, roi2, pos0, BASE, boi2, 1, vocab.token_id("[EOI2]")] + [PAD] * 3
    )


def test_text_token_mask(vocab: Vocabulary) -> None:
    seq = pad(text_to_image([16], [[1]], vocab), 8, vocab)
    mask = text_token_mask(torch.tensor(seq.tokens)[None], vocab)
    # [ROI1] 16 [BASE] [BOI1] code [EOI1] [PAD] [PAD]
    assert mask[0].tolist() == [True, True, True, True, False, True, False, False]


def test_sr_cells_pair_each_2x_code_with_its_low_code(vocab: Vocabulary) -> None:
    low, high = [[1, 2], [3, 4]], np.arange(16).reshape(4, 4) % 16
    rows = [
        pad(super_resolution_window(TEXT, low, high, vocab), 32, vocab).tokens,
        pad(super_resolution_window([], low, high, vocab), 32, vocab).tokens,
        pad(text_to_image(TEXT, CODES, vocab), 32, vocab).tokens,
    ]
    cells = sr_cells(torch.tensor(np.stack(rows)), vocab)
    # 2x window in raster order: rows 0-1 refine low row 0, rows 2-3 low row 1; columns pair up.
    high_cells = [1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4, 3, 3, 4, 4]
    # [ROI1] text [BASE] [BOI1] | 4 low codes | [EOI1] [ROI2] [POS0] [BASE] [BOI2] | 16 codes | pad
    assert cells[0].tolist() == [0] * 6 + [1, 2, 3, 4] + [0] * 5 + high_cells + [0] * 1
    assert cells[1].tolist() == [0] * 3 + [1, 2, 3, 4] + [0] * 5 + high_cells + [0] * 4
    assert cells[2].tolist() == [0] * 32  # not a super-resolution row
    # Dropping the caption shifts the row; the cells follow the tokens.
    dropped = drop_caption(torch.tensor(rows[0])[None], torch.tensor([True]), vocab)
    assert sr_cells(dropped, vocab)[0].tolist() == cells[1].tolist()


def test_sr_cells_refuse_a_row_that_is_not_super_resolution(vocab: Vocabulary) -> None:
    seq = super_resolution_window([], [[1, 2, 3]], np.zeros((2, 6), np.int64), vocab)  # 1x3 crop
    with pytest.raises(ValueError, match="not a square low-res crop"):
        sr_cells(torch.tensor(seq.tokens)[None], vocab)


def test_sr_sources_hold_the_3x3_low_res_neighbourhood_of_each_2x_code(vocab: Vocabulary) -> None:
    low, high = [[1, 2], [3, 4]], np.full((4, 4), 9)
    row = torch.tensor(super_resolution_window(TEXT, low, high, vocab).tokens)[None]
    src = sr_sources(row, vocab)[0]  # L, 9
    assert src.shape == (len(row[0]), 9)
    assert (src[:15] == -1).all()  # text, layout tokens, the low crop itself
    # 2x code (0, 0) refines low code 1 (top-left): only the centre and right/below exist.
    assert src[15].tolist() == [-1, -1, -1, -1, 1, 2, -1, 3, 4]
    # 2x code (3, 3) refines low code 4 (bottom-right).
    assert src[15 + 15].tolist() == [1, 2, -1, 3, 4, -1, -1, -1, -1]
    centres = [1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4, 3, 3, 4, 4]
    assert src[15:, 4].tolist() == centres
    assert sr_sources(torch.tensor(text_to_image(TEXT, CODES, vocab).tokens)[None], vocab).eq(-1).all()
