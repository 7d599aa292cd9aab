"""Draw the README's pictures of the four jobs with a model folder (default: the shipped one).

    python scripts/readme_pictures.py [--model DIR] [--sr-model RUN/model] [--out docs/images]

Writes readme_text_to_image.png, readme_captions.png, readme_rerank.png and, when the pipeline
serves super-resolution (or --sr-model names a transformer), readme_upscale.png; prints the
Markdown (captions, scores) that goes with them. Seeds are fixed, so reruns draw the same pictures.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image

from cogview import datasets
from cogview.images import make_grid
from cogview.pipeline import CogViewPipeline

# Rows of the text-to-image picture; the emoji rows appear when the model knows emoji (the
# canonical prompt is the bare CLDR name, 披萨 / pizza). Chosen before looking at samples.
PROMPTS = (
    "蓝色背景上左边有一个红色圆形",
    "a yellow triangle on the top of a purple background",
    "手写数字3",
    "a handwritten digit 7",
)
EMOJI_PROMPTS = ("披萨", "rocket", "熊猫", "giraffe", "彩虹", "red apple", "向日葵", "guitar")
# Held-out skin-tone variants (test split; the first of benchmarks/alignment.py's draw), composed
# by the model's modifiers: the base drawn, its codes mapped (docs/generation.md, "Modifiers").
TONE_PROMPTS = ("男生侧手翻 较深肤色", "kiss dark skin tone")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="model folder (default: the shipped one)")
    parser.add_argument("--sr-model", default=None, help="a super-resolution transformer folder to add")
    parser.add_argument("--out", default="docs/images")
    parser.add_argument("--per-prompt", type=int, default=6)
    parser.add_argument(
        "--no-emoji", action="store_true", help="shapes and digits only (models without emoji)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    pipe = CogViewPipeline.from_pretrained(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    prompts = PROMPTS if args.no_emoji else EMOJI_PROMPTS + TONE_PROMPTS + PROMPTS
    rows = [im for k, p in enumerate(prompts) for im in pipe.generate(p, args.per_prompt, seed=100 + k)]
    make_grid(rows, columns=args.per_prompt, scale=3).save(out / "readme_text_to_image.png")
    print("Text-to-image, one row per prompt:", " / ".join(f"`{p}`" for p in prompts))

    shapes, digits = datasets.load("shapes", "test"), datasets.load("digits", "test")
    tests = [shapes[i].image for i in (0, 1)] + [digits[i].image for i in (0, 1)]
    if not args.no_emoji:
        emoji_test = datasets.load("emoji", "test", size=pipe.image_tokenizer.image_size)
        emoji_train = datasets.load("emoji", "train", size=pipe.image_tokenizer.image_size)
        tests += [emoji_train[i].image for i in (100, 1000)] + [emoji_test[i].image for i in (0, 200)]
    zh, en = pipe.caption(tests, language="zh"), pipe.caption(tests, language="en")
    make_grid(tests, columns=len(tests), scale=3).save(out / "readme_captions.png")
    print("\n| test image | zh caption | en caption |\n|---|---|---|")
    for k, (a, b) in enumerate(zip(zh, en, strict=True)):
        print(f"| {k + 1} | {a} | {b} |")

    prompt = PROMPTS[1]
    [result] = pipe.generate_results(prompt, 1, seed=7, candidates=8)
    [kept] = pipe.generate_results(prompt, 8, seed=7, candidates=1)  # the same 8 candidates, unranked
    scores = result.rerank["scores"][0]  # the model's post-selection score of each candidate
    caption = pipe.score(prompt, kept.images)  # its caption-model part, log p(prompt | image)
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    make_grid([kept.images[i] for i in order], columns=8, scale=3).save(out / "readme_rerank.png")
    print(f"\nReranking `{prompt}`, 8 candidates best first by the {result.rerank['score']!r} score:")
    print(", ".join(f"{scores[i]:.2f}" for i in order))
    print("their caption scores, log p(prompt | image):", ", ".join(f"{caption[i]:.2f}" for i in order))
    print(f"kept by generate(..., candidates=8): candidate {result.rerank['kept'][0] + 1}")

    if args.sr_model or "super_resolution" in pipe.jobs:
        if args.sr_model:
            models = {**pipe.models, "super_resolution": args.sr_model}
            pipe = CogViewPipeline.from_components(
                models, pipe.text_tokenizer, pipe.image_tokenizer, pipe.vocab
            )
        size = pipe.image_tokenizer.image_size
        name, picks = ("shapes", range(4)) if args.no_emoji else ("emoji", (0, 60, 120, 180))
        low_set, high_set = datasets.load(name, "test"), datasets.load(name, "test", size=2 * size)
        low = [low_set[i].image for i in picks]
        ours = pipe.upscale(low, seed=0)
        tiles = []
        for im, up, i in zip(low, ours, picks, strict=True):
            tiles += [im.resize((2 * size,) * 2, Image.BICUBIC), up, high_set[i].image]
        make_grid(tiles, columns=3, scale=2).save(out / "readme_upscale.png")
        print(f"\nSuper-resolution ({name} test), columns: bicubic, cogview upscale, true 2x rendering")


if __name__ == "__main__":
    main()
