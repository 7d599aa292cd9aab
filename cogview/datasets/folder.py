"""Your own image-caption pairs: a folder of images plus `captions.jsonl` or `captions.tsv`.

`captions.jsonl` holds lines `{"image": "relative/path.png", "caption": "text"}`;
`captions.tsv` holds lines `relative/path.png<TAB>text`. Every image is fully decoded once
when the dataset is built, so unreadable, truncated, oversized, missing or non-image files, lines
that are not UTF-8 and paths that resolve outside the folder (unless `allow_outside=True`) are skipped
(listed in `.skipped` as (path, reason) and summed up in one logging warning) instead of
stopping a run later. A caption containing CJK characters (`cogview.language.text_language`)
goes to `caption_zh` and otherwise to `caption_en`; the other language is the empty string
(`Example.captions` gives the non-empty one). Images are resized so the shorter side is `size`,
then centre-cropped to `size` x `size` RGB, as in CogView's preprocessing.

Splits: `<folder>/<split>/captions.*` if that sub-folder exists; otherwise the root captions
file, with split "all" for every pair, or "train"/"test" chosen by a hash of the image path
(`test_fraction` of them, 5% by default, in "test").
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from cogview.datasets.base import Example, ExampleSequence, check_size, stable_int
from cogview.images import open_image, resize_center_crop
from cogview.language import text_language

logger = logging.getLogger(__name__)

CAPTION_FILES = ("captions.jsonl", "captions.tsv")
FOLDER_SPLITS = ("train", "test", "all")


def _read_pairs(caption_file: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(image path, caption) pairs and (line reference, reason) for lines that cannot be parsed."""
    pairs: list[tuple[str, str]] = []
    bad: list[tuple[str, str]] = []
    with open(caption_file, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{caption_file.name}:{lineno}"
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                bad.append((where, f"not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1})"))
                continue
            if not line.strip():
                continue
            if caption_file.suffix == ".jsonl":
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    bad.append((where, f"invalid JSON: {e}"))
                    continue
                if (
                    not isinstance(record, dict)
                    or not isinstance(record.get("image"), str)
                    or not isinstance(record.get("caption"), str)
                ):
                    bad.append((where, 'expected {"image": str, "caption": str}'))
                    continue
                path, text = record["image"], record["caption"]
            else:
                if "\t" not in line:
                    bad.append((where, "expected 'path<TAB>caption'"))
                    continue
                path, text = line.split("\t", 1)
            if not text.strip():
                bad.append((where, "empty caption"))
                continue
            pairs.append((path, text.strip()))
    return pairs, bad


def _verify(root: Path, rel: str, allow_outside: bool) -> str | None:
    """None if ``root/rel`` lies in the folder and decodes completely as an image, else the reason."""
    path = root / rel
    if not allow_outside and (Path(rel).is_absolute() or not path.resolve().is_relative_to(root.resolve())):
        return "outside the dataset folder (a path with .., an absolute path or a symlink out); allow_outside=True reads it"
    if not path.is_file():
        return "missing file"
    try:
        open_image(path)  # sides and shape from the header first, then every pixel decoded
    except ValueError as e:
        return f"unreadable image: {e}"
    return None


class FolderDataset(ExampleSequence):
    """Image-caption pairs from a folder; bad entries are skipped and listed in `.skipped`."""

    def __init__(
        self,
        path: str | os.PathLike,
        split: str = "all",
        size: int = 32,
        test_fraction: float = 0.05,
        allow_outside: bool = False,
    ) -> None:
        root = Path(path)
        if not root.is_dir():
            raise ValueError(
                f"{root} is not a folder; pass a folder holding images and captions.jsonl or captions.tsv"
            )
        if split not in FOLDER_SPLITS:
            raise ValueError(f"unknown split {split!r} for a folder; use one of {FOLDER_SPLITS}")
        if not 0.0 <= test_fraction <= 1.0:
            raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}")
        self.size = check_size(size)
        self.split = split
        by_subfolder = split != "all" and _find_caption_file(root / split) is not None
        self.root = root / split if by_subfolder else root
        caption_file = _find_caption_file(self.root)
        if caption_file is None:
            raise ValueError(
                f"no {' or '.join(CAPTION_FILES)} in {self.root}; add one (see cogview.datasets.folder)"
            )
        pairs, self.skipped = _read_pairs(caption_file)
        if split != "all" and not by_subfolder:
            buckets = 1_000_000
            in_test = [
                stable_int("cogview-folder-split", p) % buckets < test_fraction * buckets for p, _ in pairs
            ]
            pairs = [pair for pair, t in zip(pairs, in_test, strict=True) if t == (split == "test")]
        self.items: list[tuple[str, str]] = []
        for rel, text in pairs:
            reason = _verify(self.root, rel, allow_outside)
            if reason is None:
                self.items.append((rel, text))
            else:
                self.skipped.append((rel, reason))
        if self.skipped:
            logger.warning(
                "%s: skipped %d of %d entries (first: %s: %s); see .skipped for all",
                caption_file,
                len(self.skipped),
                len(self.skipped) + len(self.items),
                *self.skipped[0],
            )

    def __len__(self) -> int:
        return len(self.items)

    def _example(self, index: int) -> Example:
        rel, text = self.items[index]
        image = resize_center_crop(open_image(self.root / rel), self.size)
        zh, en = (text, "") if text_language(text) == "zh" else ("", text)
        return Example(image=image, caption_zh=zh, caption_en=en, attributes={"path": rel, "caption": text})


def _find_caption_file(folder: Path) -> Path | None:
    for name in CAPTION_FILES:
        if (folder / name).is_file():
            return folder / name
    return None


def load_folder(
    path: str | os.PathLike,
    split: str = "all",
    size: int = 32,
    test_fraction: float = 0.05,
    allow_outside: bool = False,
) -> FolderDataset:
    """Image-caption pairs from the folder `path` (see the module docstring for the layout)."""
    return FolderDataset(path, split=split, size=size, test_fraction=test_fraction, allow_outside=allow_outside)
