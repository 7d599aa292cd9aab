"""Skin tones by editing: the base emoji's skin re-drawn in token space with the toned prompt.

Text-to-image draws the held-out (base, tone) pairs of the emoji test split right about one time in
six: the model recalls the pairs it saw and does not compose a base with a tone. This asks whether
it can put a tone on a base when the outline is given. For each skin-tone variant, the base
emoji's render (yellow skin) is the input; the code cells holding its skin (pixels near OpenMoji's
skin yellow, ``SKIN``) are inpainted with the variant's canonical prompt (``pipe.edit``, shipped
settings); ``EmojiChecker`` judges the result: the exact variant, its base, its tone. The train
split's variants (pairs the model saw) are the control.

    python benchmarks/emoji_tone_edit.py [-n 100] [--langs en zh] [--splits test train] [--model DIR]

Prints a table and writes benchmarks/results/emoji_t2i/emoji_tone_edit.json and a grid per cell
(base, edit, target).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cogview.datasets.checkers import EmojiChecker
from cogview.datasets.emoji import canonical_caption, emoji_split, emoji_table, render_emoji
from cogview.images import make_grid
from cogview.pipeline import CogViewPipeline

SKIN = (252, 234, 43)  # OpenMoji's default (yellow) skin, #FCEA2B
SKIN_DISTANCE = 120  # summed |RGB| difference still counted as skin (anti-aliased edges included)
OUT = Path(__file__).resolve().parent / "results" / "emoji_t2i"


def skin_mask(image: Image.Image) -> np.ndarray:
    """``[H, W]`` bool: the pixels of ``image`` near the default skin colour."""
    rgb = np.asarray(image.convert("RGB")).astype(np.int32)
    return np.abs(rgb - np.array(SKIN)).sum(-1) < SKIN_DISTANCE


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder (default: the shipped one)")
    p.add_argument(
        "-n", type=int, default=100, help="skin-tone variants per split and language (default 100)"
    )
    p.add_argument("--langs", nargs="+", default=["en", "zh"], choices=["en", "zh"])
    p.add_argument("--splits", nargs="+", default=["test", "train"], choices=["test", "train"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", default=str(OUT / "emoji_tone_edit.json"))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pipe = CogViewPipeline.from_pretrained(args.model)
    size = pipe.image_tokenizer.image_size
    checker = EmojiChecker.build()
    table = [e for e in emoji_table() if e.tone is not None]
    rows = []
    for split in args.splits:
        pool = [e for e in table if emoji_split(e) == split]
        chosen = random.Random(args.seed).sample(pool, min(args.n, len(pool)))
        for lang in args.langs:
            t0 = time.perf_counter()
            edits, bases, targets, skipped = [], [], [], 0
            for i, info in enumerate(chosen):
                base = render_emoji(info.base, size)
                mask = skin_mask(base)
                if not mask.any():  # a base without default skin: nothing to recolour
                    skipped += 1
                    continue
                prompt = canonical_caption(info.emoji, lang)
                edits.append(pipe.edit(base, prompt, mask=mask, seed=args.seed + i))
                bases.append(base)
                targets.append(info)
            results = checker.check(edits, [t.emoji for t in targets])
            row = {
                "split": split,
                "lang": lang,
                "n": len(results),
                "skipped_without_skin": skipped,
                "emoji": sum(r["emoji"] for r in results) / max(len(results), 1),
                "base": sum(r["base"] for r in results) / max(len(results), 1),
                "tone": sum(r["tone"] for r in results) / max(len(results), 1),
                "seconds": round(time.perf_counter() - t0, 1),
            }
            rows.append(row)
            print(
                f"{split:>5} {lang}: exact {row['emoji']:.1%}  base {row['base']:.1%}  tone {row['tone']:.1%}"
                f"  ({row['n']} edits, {row['seconds']} s)",
                flush=True,
            )
            cells = [
                im
                for b, e, t in zip(bases[:16], edits[:16], targets[:16], strict=True)
                for im in (b, e, render_emoji(t.emoji, size))
            ]
            make_grid(cells, 6, scale=2).save(Path(args.out).with_name(f"emoji_tone_edit_{split}_{lang}.png"))
    print(f"\n{'split':>5} {'lang':>4} {'exact':>6} {'base':>6} {'tone':>6} {'n':>4}")
    for r in rows:
        print(
            f"{r['split']:>5} {r['lang']:>4} {r['emoji']:>6.1%} {r['base']:>6.1%} {r['tone']:>6.1%} {r['n']:>4}"
        )
    record = {
        "command": "python benchmarks/emoji_tone_edit.py",
        "args": vars(args),
        "skin": SKIN,
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
