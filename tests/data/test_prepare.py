"""prepare: rows match the layouts, bad images skipped and counted, exact resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cogview import datasets
from cogview.data import sequences
from cogview.data.prepare import default_vocab, prepare, sequence_length
from cogview.data.shards import TokenShards
from cogview.tokenizers.image import ImageTokenizer
from cogview.tokenizers.text import TextTokenizer
from cogview.tokenizers.vqvae import VQVAE, VQVAE_PRESETS


@pytest.fixture(scope="module")
def text_tokenizer() -> TextTokenizer:
    return TextTokenizer.from_pretrained(None)


@pytest.fixture(scope="module")
def image_tokenizer() -> ImageTokenizer:
    torch.manual_seed(0)
    tokenizer = ImageTokenizer(VQVAE(VQVAE_PRESETS["tiny"]))
    model = tokenizer.model
    with torch.no_grad():  # codebook = encoder outputs of a few scenes, so that many codes are used
        images = [ex.image for ex in datasets.load("shapes", "test", n=8)]
        z = model.enc_b(model.normalize(tokenizer.pixels(images)))  # B, D, h, w
        z = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        model.quantize_t.embed.copy_(z[torch.randperm(len(z))[: model.quantize_t.n_embed]].t())
    return tokenizer


def _all_rows(path: Path) -> np.ndarray:
    shards = TokenShards.open(path)
    return shards.rows(np.arange(len(shards)))


def test_rows_are_the_layouts_of_each_example(
    tmp_path: Path, image_tokenizer: ImageTokenizer, text_tokenizer: TextTokenizer
) -> None:
    tasks = ("text_to_image", "image_to_text")
    manifest = prepare(
        "shapes",
        tmp_path,
        image_tokenizer=image_tokenizer,
        text_tokenizer=text_tokenizer,
        tasks=tasks,
        max_examples=5,
        batch_size=2,
        examples_per_shard=3,
        progress=False,
    )
    vocab = default_vocab(image_tokenizer, text_tokenizer)
    seq_len = sequence_length(tasks, 32, image_tokenizer.grid_size)
    assert manifest["seq_len"] == seq_len == 5 + 32 + 64
    assert manifest["total_rows"] == 20 and [s["rows"] for s in manifest["shards"]] == [12, 8]
    assert manifest["rows_per_task"] == {"text_to_image": 10, "image_to_text": 10}
    assert manifest["rows_per_language"] == {"zh": 10, "en": 10}
    assert not (tmp_path / "progress.json").exists()

    shards = TokenShards.open(
        tmp_path,
        text_fingerprint=text_tokenizer.fingerprint,
        image_fingerprint=image_tokenizer.fingerprint,
        vocab=vocab,
    )
    assert shards.dtype.name == "uint16" and len(np.unique(shards.rows(np.arange(20))[:, 40:50])) > 3
    examples = datasets.load("shapes", "train")[:5]
    codes = image_tokenizer.encode([ex.image for ex in examples])
    expected = []
    for ex, c in zip(examples, codes, strict=True):
        for caption in (ex.caption_zh, ex.caption_en):
            text = text_tokenizer.encode_unified(caption, vocab)
            expected.append(sequences.pad(sequences.text_to_image(text, c, vocab), seq_len, vocab).tokens)
            expected.append(sequences.pad(sequences.image_to_text(c, text, vocab), seq_len, vocab).tokens)
    assert np.array_equal(shards.rows(np.arange(20)), np.stack(expected))


def test_bad_images_skipped_and_counted(
    tmp_path: Path, image_tokenizer: ImageTokenizer, text_tokenizer: TextTokenizer
) -> None:
    folder = tmp_path / "pairs"
    folder.mkdir()
    lines = []
    for i, colour in enumerate([(0, 0, 200), (255, 0, 0), (0, 150, 0), (90, 90, 90)]):
        Image.new("RGB", (40, 36), colour).save(folder / f"{i}.png")
        lines.append({"image": f"{i}.png", "caption": "一个红色的圆" if i == 2 else f"a square number {i}"})
    Image.new("RGB", (40, 40), (1, 2, 3)).save(folder / "cut.png")
    (folder / "cut.png").write_bytes((folder / "cut.png").read_bytes()[:60])
    (folder / "notes.png").write_text("not an image")
    lines += [{"image": "cut.png", "caption": "truncated"}, {"image": "notes.png", "caption": "text file"}]
    (folder / "captions.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")

    class RefusesRed(ImageTokenizer):  # an image that fails inside the image tokenizer
        def encode(self, images):  # type: ignore[no-untyped-def]
            if any(im.getpixel((0, 0)) == (255, 0, 0) for im in images):
                raise RuntimeError("cannot encode red")
            return super().encode(images)

    manifest = prepare(
        folder,
        tmp_path / "out",
        split="all",
        image_tokenizer=RefusesRed(image_tokenizer.model),
        text_tokenizer=text_tokenizer,
        progress=False,
    )
    assert manifest["skipped"]["count"] == 3 == manifest["examples"]["skipped"]
    reasons = dict(map(tuple, manifest["skipped"]["first"]))
    assert set(reasons) == {"cut.png", "notes.png", "1.png"}
    assert "cannot encode red" in reasons["1.png"]
    assert manifest["examples"] == {"total": 4, "used": 3, "without_caption": 0, "skipped": 3}
    assert manifest["rows_per_language"] == {"zh": 1, "en": 2} and manifest["total_rows"] == 3
    assert len(TokenShards.open(tmp_path / "out")) == 3


def test_refuses_non_empty_folder_and_changed_settings(
    tmp_path: Path, image_tokenizer: ImageTokenizer, text_tokenizer: TextTokenizer
) -> None:
    kwargs = dict(
        image_tokenizer=image_tokenizer, text_tokenizer=text_tokenizer, max_examples=2, progress=False
    )
    (tmp_path / "junk.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty; pass --resume"):
        prepare("shapes", tmp_path, **kwargs)
    with pytest.raises(ValueError, match="no progress.json"):
        prepare("shapes", tmp_path, resume=True, **kwargs)
    out = tmp_path / "out"
    first = prepare("shapes", out, **kwargs)
    assert prepare("shapes", out, resume=True, **kwargs) == first  # finished: nothing to do
    with pytest.raises(ValueError, match="already holds finished token shards"):
        prepare("shapes", out, **kwargs)
    with pytest.raises(ValueError, match="made with other settings .*text_budget: 32 -> 8"):
        prepare("shapes", out, resume=True, text_budget=8, **kwargs)
    with pytest.raises(ValueError, match="sr_window must be between 1"):
        prepare("shapes", tmp_path / "sr", tasks=("super_resolution",), sr_window=99, **kwargs)


def test_super_resolution_rows_hold_aligned_windows_of_both_sizes(
    tmp_path: Path, image_tokenizer: ImageTokenizer, text_tokenizer: TextTokenizer
) -> None:
    from cogview import datasets
    from cogview.data.prepare import default_vocab
    from cogview.data.windows import magnify_windows

    vocab = default_vocab(image_tokenizer, text_tokenizer)
    manifest = prepare(
        "shapes", tmp_path / "sr", image_tokenizer=image_tokenizer, text_tokenizer=text_tokenizer,
        tasks=("super_resolution",), languages=("en",), text_budget=16, sr_window=4, max_examples=3,
        progress=False,
    )  # fmt: skip
    w = 4
    assert manifest["seq_len"] == 8 + 16 + w * w + (2 * w) ** 2
    assert manifest["rows_per_task"] == {"super_resolution": 3}
    rows = TokenShards.open(tmp_path / "sr")
    size = image_tokenizer.image_size
    low_ds, high_ds = (
        datasets.load("shapes", "train", size=size),
        datasets.load("shapes", "train", size=2 * size),
    )
    for i in range(3):
        row = np.asarray(rows[i])
        roi2 = int(np.flatnonzero(row == vocab.token_id("[ROI2]"))[0])
        boi1 = int(np.flatnonzero(row == vocab.token_id("[BOI1]"))[0])
        assert row[0] == vocab.token_id("[ROI1]") and row[roi2 + 1] == vocab.token_id("[POS0]")
        low_crop = row[boi1 + 1 : boi1 + 1 + w * w].reshape(w, w)
        high = row[roi2 + 4 : roi2 + 4 + 4 * w * w].reshape(2 * w, 2 * w)
        low_codes = image_tokenizer.encode([low_ds[i].image]).numpy()[0]
        high_codes = image_tokenizer.encode([high_ds[i].image], size=2 * size).numpy()[0]
        # The row's window is one of the magnify windows, and its 2x part covers the same pixels.
        matches = [
            win
            for win in magnify_windows(*low_codes.shape, w)
            if np.array_equal(win.low(low_codes), low_crop)
            and np.array_equal(high_codes[win.high_slices()], high)
        ]
        assert matches, f"row {i} does not hold an aligned window pair"


@pytest.mark.parametrize(("interrupt_at_call", "chunks_done"), [(1, []), (4, [0])])
def test_resume_after_an_exception_gives_the_same_rows(
    tmp_path: Path,
    image_tokenizer: ImageTokenizer,
    text_tokenizer: TextTokenizer,
    interrupt_at_call: int,
    chunks_done: list[int],
) -> None:
    kwargs = dict(
        text_tokenizer=text_tokenizer, max_examples=12, batch_size=2, examples_per_shard=4, progress=False
    )
    calls = []

    class Interrupted(ImageTokenizer):
        def encode(self, images):  # type: ignore[no-untyped-def]
            calls.append(1)
            if len(calls) == interrupt_at_call:  # 4: in the middle of the second chunk
                raise KeyboardInterrupt
            return super().encode(images)

    with pytest.raises(KeyboardInterrupt):
        prepare("shapes", tmp_path / "a", image_tokenizer=Interrupted(image_tokenizer.model), **kwargs)
    progress = json.loads((tmp_path / "a" / "progress.json").read_text())
    assert [c["index"] for c in progress["chunks"]] == chunks_done
    with pytest.raises(ValueError, match="max_examples: 12 -> 11"):
        prepare(
            "shapes",
            tmp_path / "a",
            image_tokenizer=image_tokenizer,
            resume=True,
            **{**kwargs, "max_examples": 11},
        )
    resumed = prepare("shapes", tmp_path / "a", image_tokenizer=image_tokenizer, resume=True, **kwargs)
    straight = prepare("shapes", tmp_path / "b", image_tokenizer=image_tokenizer, **kwargs)
    assert resumed == straight
    assert np.array_equal(_all_rows(tmp_path / "a"), _all_rows(tmp_path / "b"))


_CHILD = """
import sys, time
from cogview.data.prepare import prepare
from cogview.tokenizers.image import ImageTokenizer
from cogview.tokenizers.text import TextTokenizer

tokenizer = ImageTokenizer.from_pretrained(sys.argv[1])
encode = tokenizer.encode
def slow_encode(images):  # slow enough for the parent to kill us mid-way
    time.sleep(0.15)
    return encode(images)
tokenizer.encode = slow_encode
prepare("shapes", sys.argv[2], image_tokenizer=tokenizer, text_tokenizer=TextTokenizer.from_pretrained(None),
        max_examples=40, batch_size=2, examples_per_shard=4, progress=False)
"""


def test_resume_after_sigkill_gives_the_same_rows(
    tmp_path: Path, image_tokenizer: ImageTokenizer, text_tokenizer: TextTokenizer
) -> None:
    image_tokenizer.save_pretrained(tmp_path / "tok")
    out = tmp_path / "killed"
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path / "tok"), str(out)])
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            if (out / "progress.json").is_file() and json.loads((out / "progress.json").read_text())[
                "chunks"
            ]:
                break
            time.sleep(0.05)
        assert child.poll() is None, "prepare finished or failed before it could be killed"
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert not (out / "manifest.json").exists()
    done = len(json.loads((out / "progress.json").read_text())["chunks"])
    assert 1 <= done < 10

    kwargs = dict(
        image_tokenizer=image_tokenizer, text_tokenizer=text_tokenizer, max_examples=40, batch_size=2
    )
    resumed = prepare("shapes", out, examples_per_shard=4, resume=True, progress=False, **kwargs)
    straight = prepare("shapes", tmp_path / "straight", examples_per_shard=4, progress=False, **kwargs)
    assert resumed == straight and resumed["total_rows"] == 80
    assert not list(out.glob(".*.tmp"))
    assert np.array_equal(_all_rows(out), _all_rows(tmp_path / "straight"))


def test_long_captions_are_cut_and_counted(
    tmp_path: Path, image_tokenizer: ImageTokenizer, text_tokenizer: TextTokenizer
) -> None:
    manifest = prepare(
        "shapes",
        tmp_path,
        image_tokenizer=image_tokenizer,
        text_tokenizer=text_tokenizer,
        languages=("en",),
        text_budget=3,
        max_examples=4,
        progress=False,
    )
    assert manifest["truncated_captions"] == 4 and manifest["seq_len"] == 4 + 3 + 64
    rows = _all_rows(tmp_path)
    vocab = default_vocab(image_tokenizer, text_tokenizer)
    assert rows[:, 4].tolist() == [vocab.token_id("[BASE]")] * 4  # [ROI1] + exactly 3 text tokens
