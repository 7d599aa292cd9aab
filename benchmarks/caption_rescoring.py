"""Caption candidates re-ranked by the text-to-image model: does "post-selection backwards" help?

CogView keeps, of several images drawn for a prompt, the one whose caption model likes the prompt
best. The reverse for captioning: draw several captions of an image (greedy + sampled), and keep
the one under which the text-to-image transformer finds the image most likely,
``log p(codes | caption)`` (for one image, the same ranking as the pointwise mutual information
of caption and image). ``captioner+t2i`` adds the captioner's own ``log p(caption | image)``.
``pipe.caption(..., candidates=N)`` serves the ``captioner+t2i`` choice. ``oracle`` is the share of images with a right name among the candidates: the ceiling of any
re-ranking.

    python benchmarks/caption_rescoring.py [--model DIR] [-n 200] [--samples 8] [--top-k 8]

Emoji of the captioning benchmark's fixed draw (benchmarks/captioning.py), both splits, zh and en.
Prints a table and writes benchmarks/results/caption_rescoring.json.
"""

from __future__ import annotations

import argparse
import time

import torch
from captioning import emoji_examples, names_emoji, write_record

from cogview.generation.reranking import CAPTION_CANDIDATE_SAMPLING, caption_scores
from cogview.pipeline import CogViewPipeline

METHODS = ("greedy", "t2i", "captioner+t2i", "oracle")


def measure(pipe: CogViewPipeline, split: str, lang: str, args: argparse.Namespace) -> dict[str, float]:
    t2i, cap = pipe.text_to_image, pipe.captioner
    examples = emoji_examples(split, args.n, pipe.image_tokenizer.image_size)
    images = [e.image for e in examples]
    codes = cap.codes(images)  # [n, g, g]
    greedy = pipe.caption(images, lang)
    sampling = CAPTION_CANDIDATE_SAMPLING | {"top_k": args.top_k}
    sampled = pipe.caption(images, lang, num_captions=args.samples, seed=args.seed, **sampling)
    right = dict.fromkeys(METHODS, 0)
    for i, example in enumerate(examples):
        candidates = list(dict.fromkeys([greedy[i], *sampled[i * args.samples : (i + 1) * args.samples]]))
        text_scores, image_scores = caption_scores(cap, t2i, codes[i], candidates)
        ok = [names_emoji(c, example, lang) for c in candidates]
        right["greedy"] += ok[0]
        right["t2i"] += ok[int(image_scores.argmax())]
        right["captioner+t2i"] += ok[int((image_scores + text_scores).argmax())]
        right["oracle"] += any(ok)
    return {m: right[m] / len(examples) for m in METHODS} | {"n": len(examples)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model", default=None, help="model folder with text_to_image and image_to_text (default: shipped)"
    )
    p.add_argument("-n", type=int, default=200, help="emoji per split")
    p.add_argument("--samples", type=int, default=8, help="sampled captions per image, beside the greedy one")
    p.add_argument("--top-k", type=int, default=8, help="top-k of the sampled captions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--splits", default="train,test", help="comma-separated emoji splits")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/caption_rescoring.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pipe = CogViewPipeline.from_pretrained(args.model)
    pipe.max_samples = max(pipe.max_samples, args.n * args.samples)
    started = time.perf_counter()
    results = {}
    print(f"{'emoji named':<16}" + "".join(f"{m:>15}" for m in METHODS))
    for split in args.splits.split(","):
        for lang in ("zh", "en"):
            r = results[f"{split}_{lang}"] = measure(pipe, split, lang, args)
            print(f"{split + ' ' + lang:<16}" + "".join(f"{r[m]:>15.1%}" for m in METHODS), flush=True)
    seconds = time.perf_counter() - started
    print(f"({seconds:.0f} s)")
    write_record(args, seconds, results)


if __name__ == "__main__":
    main()
