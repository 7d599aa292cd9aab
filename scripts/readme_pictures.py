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

PROMPTS = (
    "蓝色背景上左边有一个红色圆形",
    "a yellow triangle on the top of a purple background",
    "手写数字3",
    "a handwritten digit 7",
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="model folder (default: the shipped one)")
    parser.add_argument("--sr-model", default=None, help="a super-resolution transformer folder to add")
    parser.add_argument("--out", default="docs/images")
    parser.add_argument("--per-prompt", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pipe = CogViewPipeline.from_pretrained(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    rows = [im for k, p in enumerate(PROMPTS) for im in pipe.generate(p, args.per_prompt, seed=100 + k)]
    make_grid(rows, columns=args.per_prompt, scale=3).save(out / "readme_text_to_image.png")
    print("Text-to-image, one row per prompt:", " / ".join(f"`{p}`" for p in PROMPTS))

    shapes, digits = datasets.load("shapes", "test"), datasets.load("digits", "test")
    tests = [shapes[i].image for i in (0, 1, 2)] + [digits[i].image for i in (0, 1, 2)]
    zh, en = pipe.caption(tests, language="zh"), pipe.caption(tests, language="en")
    make_grid(tests, columns=len(tests), scale=3).save(out / "readme_captions.png")
    print("\n| test image | zh caption | en caption |\n|---|---|---|")
    for k, (a, b) in enumerate(zip(zh, en, strict=True)):
        print(f"| {k + 1} | {a} | {b} |")

    prompt = PROMPTS[1]
    [result] = pipe.generate_results(prompt, 1, seed=7, candidates=8)
    [kept] = pipe.generate_results(prompt, 8, seed=7, candidates=1)  # the same 8 candidates, unranked
    scores = pipe.score(prompt, kept.images)
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    make_grid([kept.images[i] for i in order], columns=8, scale=3).save(out / "readme_rerank.png")
    print(f"\nReranking `{prompt}`, 8 candidates best first, log-likelihood of the prompt:")
    print(", ".join(f"{scores[i]:.2f}" for i in order))
    print(f"kept by generate(..., candidates=8): candidate {result.rerank['kept'][0] + 1}")

    if args.sr_model or "super_resolution" in pipe.jobs:
        if args.sr_model:
            models = {**pipe.models, "super_resolution": args.sr_model}
            pipe = CogViewPipeline.from_components(
                models, pipe.text_tokenizer, pipe.image_tokenizer, pipe.vocab
            )
        size = pipe.image_tokenizer.image_size
        low = [shapes[i].image for i in range(4)]
        high = datasets.load("shapes", "test", size=2 * size)
        ours = pipe.upscale(low, seed=0)
        tiles = []
        for i, im in enumerate(low):
            tiles += [im.resize((2 * size,) * 2, Image.BICUBIC), ours[i], high[i].image]
        make_grid(tiles, columns=3, scale=2).save(out / "readme_upscale.png")
        print("\nSuper-resolution, columns: bicubic, cogview upscale, true 64 px rendering")


if __name__ == "__main__":
    main()
