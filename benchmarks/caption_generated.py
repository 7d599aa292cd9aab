"""Captions of generated emoji: does each caption decoding name what the image shows?

A render is what the captioner trained on; a generated image is what a user of text-to-image
captions. For n train-emoji prompts per language the shipped settings draw one image (seed k for
prompt k); the emoji checker's nearest render says which emoji the image shows, and a caption is
right when it names that emoji (benchmarks/captioning.py's rule). Decodings: greedy, the best of a
beam of 8, and the beam's likely captions re-ranked with the text-to-image model (candidates=8).
The last is biased here: the same text-to-image model drew the image from the prompt, so its
score favours the prompt's name even where the picture shows another emoji.

    python benchmarks/caption_generated.py [--model DIR] [-n 100]

Prints a table and writes benchmarks/results/caption_generated.json.
"""

from __future__ import annotations

import argparse
import time
import types

import torch
from captioning import names_emoji, write_record

from cogview.datasets import checkers, emoji
from cogview.evaluation.alignment import alignment_prompts
from cogview.pipeline import CogViewPipeline

DECODINGS = {
    "greedy": {"candidates": 1},
    "beam 8": {"beams": 8, "candidates": 1},
    "candidates 8": {"candidates": 8},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder (default: the shipped one)")
    p.add_argument("-n", type=int, default=100, help="prompts (one image each) per language")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/caption_generated.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pipe = CogViewPipeline.from_pretrained(args.model)
    pipe.max_samples = max(pipe.max_samples, args.n * 8)
    checker = checkers.EmojiChecker.build()
    started = time.perf_counter()
    results = {}
    print(f"{'named':<8}" + "".join(f"{d:>15}" for d in DECODINGS))
    for lang in ("zh", "en"):
        prompts = alignment_prompts("emoji-train", lang, args.n)
        images = [pipe.generate(prompt, 1, seed=k)[0] for k, (prompt, _) in enumerate(prompts)]
        shown = [
            types.SimpleNamespace(attributes=emoji.emoji_info(e).attributes) for e in checker.nearest(images)
        ]
        asked = sum(s.attributes["emoji"] == a["emoji"] for s, (_, a) in zip(shown, prompts, strict=True))
        row = {"n": args.n, "images_showing_the_asked_emoji": asked / args.n}
        for name, decoding in DECODINGS.items():
            captions = pipe.caption(images, lang, **decoding)
            row[name] = sum(names_emoji(c, s, lang) for c, s in zip(captions, shown, strict=True)) / args.n
        results[lang] = row
        print(f"{lang:<8}" + "".join(f"{row[d]:>15.1%}" for d in DECODINGS), flush=True)
    seconds = time.perf_counter() - started
    print(f"({seconds:.0f} s)")
    write_record(args, seconds, results)


if __name__ == "__main__":
    main()
