"""User folders: captions files, language routing, resize-crop, and bad files skipped and counted."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from PIL import Image

from cogview.datasets import load, load_folder


def _write_image(
    path: Path, size: tuple[int, int] = (40, 20), colour: tuple[int, int, int] = (200, 10, 10)
) -> None:
    Image.new("RGB", size, colour).save(path)


def _make_folder(root: Path) -> None:
    (root / "sub").mkdir()
    _write_image(root / "good.png")
    _write_image(root / "sub" / "good2.jpg", (20, 50), (10, 10, 200))
    _write_image(root / "full.png", (64, 64))
    data = (root / "full.png").read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "text.png").write_text("this is not an image")
    lines = [
        {"image": "good.png", "caption": "a red rectangle"},
        {"image": "sub/good2.jpg", "caption": "一个蓝色的长方形"},
        {"image": "truncated.png", "caption": "broken"},
        {"image": "text.png", "caption": "not an image"},
        {"image": "missing.png", "caption": "gone"},
    ]
    text = "\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n{not json\n"
    (root / "captions.jsonl").write_text(text, encoding="utf-8")


def test_bad_files_are_skipped_counted_and_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _make_folder(tmp_path)
    with caplog.at_level(logging.WARNING):
        ds = load(tmp_path, "all")
    assert len(ds) == 2
    skipped = dict(ds.skipped)
    assert set(skipped) == {"truncated.png", "text.png", "missing.png", "captions.jsonl:6"}
    assert "missing" in skipped["missing.png"]
    assert any("skipped 4" in r.getMessage() for r in caplog.records)


def test_examples_route_language_and_are_cropped(tmp_path: Path) -> None:
    _make_folder(tmp_path)
    ds = load_folder(tmp_path, size=16)
    en, zh = ds[0], ds[1]
    assert en.caption_en == "a red rectangle" and en.caption_zh == ""
    assert (
        zh.caption_zh == "一个蓝色的长方形" and zh.caption_en == "" and zh.captions == ("一个蓝色的长方形",)
    )
    assert en.image.size == (16, 16) and en.image.mode == "RGB"
    assert en.image.getpixel((8, 8)) == (200, 10, 10)


def test_tsv_and_hash_splits(tmp_path: Path) -> None:
    lines = []
    for i in range(40):
        _write_image(tmp_path / f"{i}.png", (8, 8))
        lines.append(f"{i}.png\tcaption {i}")
    (tmp_path / "captions.tsv").write_text("\n".join(lines) + "\nno tab here\n", encoding="utf-8")
    train = load(tmp_path, "train", test_fraction=0.25)
    test = load(tmp_path, "test", test_fraction=0.25)
    assert len(train) + len(test) == 40 and 0 < len(test) < 40
    assert not {p for p, _ in train.items} & {p for p, _ in test.items}
    assert [s[0] for s in train.skipped] == ["captions.tsv:41"]


def test_split_subfolders(tmp_path: Path) -> None:
    for split in ("train", "test"):
        (tmp_path / split).mkdir()
        _write_image(tmp_path / split / "a.png")
        (tmp_path / split / "captions.tsv").write_text(f"a.png\t{split} image\n", encoding="utf-8")
    assert load(tmp_path, "test")[0].caption_en == "test image"


def test_missing_captions_file_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="captions.jsonl"):
        load_folder(tmp_path)
