"""The one language detector: is a text "zh" (it holds CJK characters) or "en" (it does not)?

Every place that must agree uses it: the prompt kind that picks sampling defaults
(``generation.text_to_image.prompt_kind``), the caption field a folder dataset files a caption
under (training data), and the pieces a caption of each language may use
(``TextTokenizer.language_ids``). Ground floor: imports nothing of ours.
"""

from __future__ import annotations

# What counts as CJK, decided once. The models know two languages, so the question is only which
# side text typed with a CJK input method falls on: all of these characters count, not only
# Chinese ideographs. Kana and hangul make ねこ and 한국어 "zh" (the zh defaults and captions serve
# them better than the English ones). CJK punctuation and full-width forms count on their own, so
# "hello，world" is "zh": the shipped tokenizer learned "，" from Chinese captions only, English
# captions may not produce it (language_ids), and a training caption holding it is a Chinese one.
CJK_RANGES = (
    (0x3000, 0x303F),  # CJK symbols and punctuation: 、。「」
    (0x3040, 0x30FF),  # hiragana and katakana
    (0x3400, 0x9FFF),  # CJK unified ideographs with extension A
    (0xAC00, 0xD7AF),  # hangul syllables
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFF00, 0xFFEF),  # half-width and full-width forms: ，！？ＡＢＣ
    (0x20000, 0x2FA1F),  # ideograph extensions B-F and the compatibility supplement
)
LANGUAGES = ("zh", "en")


def is_cjk(ch: str) -> bool:
    """Whether the character ``ch`` is one of :data:`CJK_RANGES`."""
    o = ord(ch)
    return any(lo <= o <= hi for lo, hi in CJK_RANGES)


def text_language(text: str) -> str:
    """``"zh"`` for a text holding any CJK character (see :data:`CJK_RANGES`), else ``"en"``."""
    return "zh" if any(is_cjk(ch) for ch in text) else "en"
