"""Draw held-out skin-tone variants with and without the shipped model's modifiers, beside the truth.

    python scripts/modifier_pictures.py [--model DIR] [--n 12] [--out docs/images/modifiers_held_out.png]

Rows: the first N held-out (test split) skin-tone variants of benchmarks/alignment.py's draw,
alternately in Chinese and English. Columns: the base emoji's render, the variant's true render,
the model's image drawn as given (`modifiers=False`), and with its modifiers (the default). Prints
each prompt and whether the emoji checker finds the asked emoji. Needs the [emoji] extra.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from cogview.datasets import emoji
from cogview.datasets.checkers import EmojiChecker
from cogview.evaluation.alignment import alignment_prompts
from cogview.images import make_grid
from cogview.pipeline import CogViewPipeline


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="model folder (default: the shipped one)")
    parser.add_argument("--n", type=int, default=12, help="held-out variants, one row each (default: 12)")
    parser.add_argument("--out", default="docs/images/modifiers_held_out.png")
    args = parser.parse_args()
    if not 1 <= args.n <= 100:
        parser.error(f"--n must be in 1..100, got {args.n}")
    torch.set_num_threads(1)
    pipe = CogViewPipeline.from_pretrained(args.model)
    checker = EmojiChecker.build()
    size = pipe.image_tokenizer.image_size
    draws = {lang: alignment_prompts("emoji-test", lang, args.n) for lang in ("zh", "en")}
    tiles, right = [], {"as given": 0, "modifiers": 0}
    print("| prompt | as given | with modifiers |\n|---|---|---|")
    for k in range(args.n):
        prompt, attrs = draws["zh" if k % 2 == 0 else "en"][k]
        given = pipe.generate(prompt, seed=k, modifiers=False)[0]
        modified = pipe.generate(prompt, seed=k)[0]
        ok = [r["emoji"] for r in checker.check([given, modified], [attrs["emoji"]] * 2)]
        right["as given"] += ok[0]
        right["modifiers"] += ok[1]
        print(f"| {prompt} | {'right' if ok[0] else 'wrong'} | {'right' if ok[1] else 'wrong'} |")
        tiles += [
            emoji.render_emoji(attrs["base"], size),
            emoji.render_emoji(attrs["emoji"], size),
            given,
            modified,
        ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    make_grid(tiles, columns=4, scale=3).save(out)
    print(
        f"right: {right['as given']} of {args.n} as given, {right['modifiers']} with modifiers; wrote {out}"
    )


if __name__ == "__main__":
    main()
