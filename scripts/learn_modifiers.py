"""Learn the emoji skin-tone modifiers of a model folder from the train split, and write its modifiers.json.

Run:  .venv/bin/python scripts/learn_modifiers.py [--model FOLDER]   (default: the shipped model)
Each train skin-tone variant and its base are drawn as the dataset draws them and encoded with
the folder's image tokenizer; every tone gets the code map of
:func:`cogview.generation.modifiers.learn`, and every two-person tone pair is a compound of two
tones (:func:`~cogview.generation.modifiers.learn_compounds`), each with its Chinese and English
phrases as they appear in the emoji's names. The test split is never read. Needs the [emoji] extra.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import torch

from cogview.datasets import emoji
from cogview.generation.modifiers import Modifiers, learn, learn_compounds
from cogview.pipeline import default_model_path
from cogview.serialization import CheckpointError
from cogview.tokenizers.image import ImageTokenizer


def tone_phrases(info: emoji.EmojiInfo) -> dict[str, str]:
    """The tone's words in the emoji's own names (checked to be there)."""
    phrases = {
        "en": " ".join(f"{t} skin tone" for t in info.tone.split("/")),
        "zh": "".join(info.tone_zh.split("/")),
    }
    for lang, name in (("en", info.name_en), ("zh", info.name_zh)):
        if phrases[lang].casefold() not in name.casefold():
            raise ValueError(f"{info.emoji}: {phrases[lang]!r} is not in its {lang} name {name!r}")
    return phrases


def encode(tokenizer: ImageTokenizer, emojis: list[str], size: int) -> torch.Tensor:
    chunks = [
        tokenizer.encode([emoji.render_emoji(e, size) for e in emojis[i : i + 256]])
        for i in range(0, len(emojis), 256)
    ]
    return torch.cat(chunks)  # [N, h, w]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default=None, help="model folder whose image tokenizer encodes (default: the shipped one)"
    )
    parser.add_argument(
        "--out", default=None, help="folder to write modifiers.json into (default: --model's)"
    )
    args = parser.parse_args()
    folder = default_model_path() if args.model is None else args.model
    out = folder if args.out is None else args.out
    if Path(out).exists() and not Path(out).is_dir():
        parser.error(f"--out {out} is a file; it names the folder to write modifiers.json into")
    try:
        tokenizer = ImageTokenizer.from_pretrained(Path(folder) / "image_tokenizer")
    except CheckpointError as e:
        parser.error(f"--model {folder}: {e}")
    variants = [i for i in emoji.load("train").infos if i.tone is not None]
    bases = sorted({i.base for i in variants})
    base_codes = dict(zip(bases, encode(tokenizer, bases, tokenizer.image_size), strict=True))
    variant_codes = encode(tokenizer, [i.emoji for i in variants], tokenizer.image_size)
    pairs: defaultdict[str, list[tuple[torch.Tensor, torch.Tensor]]] = defaultdict(list)
    phrases: dict[str, dict[str, str]] = {}
    for info, codes in zip(variants, variant_codes, strict=True):
        phrases.setdefault(info.tone, tone_phrases(info))
        pairs[info.tone].append((base_codes[info.base], codes))
    singles = {tone: learn(tone, phrases[tone], pairs[tone]) for tone in sorted(pairs) if "/" not in tone}
    two = [t for t in sorted(pairs) if "/" in t]  # two people's tones: the parts' maps, cell by cell
    compounds = learn_compounds([(t, phrases[t], [singles[p] for p in t.split("/")], pairs[t]) for t in two])
    modifiers = Modifiers(
        [*singles.values(), *compounds], tokenizer.grid_size, tokenizer.codebook_size, tokenizer.fingerprint
    )
    modifiers.save(out)
    for m in singles.values():
        entries = f"{len(m.by_neighbours):5d} neighbourhood + {len(m.by_position):4d} cell + {len(m.by_code):4d} code"
        print(f"{m.name:>12} {m.pairs:4d} pairs  {entries} entries  {m.phrases['en']} / {m.phrases['zh']}")
    if compounds:
        first = sum(k == 0 for k in compounds[0].part_of)
        print(
            f"{len(compounds)} two-tone compounds ({sum(c.pairs for c in compounds)} pairs): {first} of "
            f"{len(compounds[0].part_of)} cells take the first person's tone"
        )
    print(f"wrote {out}/modifiers.json: {len(modifiers)} modifiers from {len(variants)} train variants")


if __name__ == "__main__":
    main()
