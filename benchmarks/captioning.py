"""Captioning and caption-likelihood scoring, measured with the datasets' own captions.

- Captioning: greedy captions of held-out images (digits test split, shapes test scenes) in both
  languages, parsed back into attributes (``parse_caption``); a caption that is not well formed
  counts as wrong.
- Emoji (``--datasets emoji-train,emoji-test``): captions of n emoji drawn at random from a split.
  Right when the caption names the emoji (its name or an English alias, in any template); for
  the held-out skin-tone variants also the base and the tone on their own.
- Scoring as a classifier: for each test digit, the canonical prompt of every digit is scored
  against the image; right when the true digit's prompt scores highest.

    python benchmarks/captioning.py [--model DIR | --caption-model RUN/model] [-n 200] [--candidates 8 | --beams 8]
    python benchmarks/captioning.py --transformer RUN/model --image-tokenizer T --text-tokenizer T \
        --datasets emoji-train,emoji-test,shapes,digits

Prints a table and writes benchmarks/results/captioning.json.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

import torch

from cogview import datasets
from cogview.datasets import digits, emoji, shapes
from cogview.pipeline import CogViewPipeline

FIELDS = ("colour", "shape", "background", "position")


def load(args: argparse.Namespace) -> CogViewPipeline:
    tokenizers = {"text_tokenizer": args.text_tokenizer, "image_tokenizer": args.image_tokenizer}
    if args.transformer:
        return CogViewPipeline.from_components(args.transformer, **tokenizers)
    if args.caption_model:
        return CogViewPipeline.from_components({"image_to_text": args.caption_model}, **tokenizers)
    return CogViewPipeline.from_pretrained(args.model)


def caption_digits(pipe: CogViewPipeline, n: int, lang: str, batch: int, **decoding: Any) -> dict[str, float]:
    ds = datasets.load("digits", "test")
    n = min(n, len(ds))
    examples = [ds[i] for i in range(n)]
    captions = pipe.caption([e.image for e in examples], lang, max_batch_size=batch, **decoding)
    right = [
        digits.parse_caption(c, lang) == e.attributes["digit"]
        for c, e in zip(captions, examples, strict=True)
    ]
    well_formed = [digits.parse_caption(c, lang) is not None for c in captions]
    return {"n": n, "accuracy": sum(right) / n, "well_formed": sum(well_formed) / n, "examples": captions[:5]}


def caption_shapes(pipe: CogViewPipeline, n: int, lang: str, batch: int, **decoding: Any) -> dict[str, float]:
    ds = datasets.load("shapes", "test")
    examples = [ds[i] for i in range(n)]
    captions = pipe.caption([e.image for e in examples], lang, max_batch_size=batch, **decoding)
    parsed = [shapes.parse_caption(c, lang) for c in captions]
    out: dict[str, float] = {"n": n, "well_formed": sum(p is not None for p in parsed) / n}
    for f in FIELDS:
        out[f] = (
            sum(p is not None and p[f] == e.attributes[f] for p, e in zip(parsed, examples, strict=True)) / n
        )
    out["colour_shape_background"] = (
        sum(
            p is not None and all(p[f] == e.attributes[f] for f in ("colour", "shape", "background"))
            for p, e in zip(parsed, examples, strict=True)
        )
        / n
    )
    out["all_four"] = (
        sum(
            p is not None and all(p[f] == e.attributes[f] for f in FIELDS)
            for p, e in zip(parsed, examples, strict=True)
        )
        / n
    )
    out["examples"] = captions[:5]
    return out


def emoji_examples(split: str, n: int, size: int) -> list[datasets.Example]:
    """A fixed random draw of n emoji of `split` (the same draw in every run)."""
    ds = emoji.load(split, size=size)
    picks = sorted(random.Random(f"captioning-{split}").sample(range(len(ds)), min(n, len(ds))))
    return [ds[i] for i in picks]


def names_emoji(caption: str, example: datasets.Example, lang: str) -> bool:
    """Whether `caption` names the example's emoji: the emoji itself, or its name in `lang`."""
    parsed = emoji.parse_caption(caption, lang)
    if parsed is None:
        return False
    name = "name_zh" if lang == "zh" else "name_en"
    want = example.attributes
    return parsed == want["emoji"] or getattr(emoji.emoji_info(parsed), name) == want[name]


def caption_emoji(
    pipe: CogViewPipeline, split: str, n: int, lang: str, batch: int, **decoding: Any
) -> dict[str, float]:
    """Captions of n emoji of `split` (a fixed random draw): the name right, and base / tone apart."""
    examples = emoji_examples(split, n, pipe.image_tokenizer.image_size)
    captions = pipe.caption([e.image for e in examples], lang, max_batch_size=batch, **decoding)
    name = "name_zh" if lang == "zh" else "name_en"
    named = base = tone = parsed_any = 0
    for c, e in zip(captions, examples, strict=True):
        parsed = emoji.parse_caption(c, lang)
        if parsed is None:
            continue
        parsed_any += 1
        got, want = emoji.emoji_info(parsed), e.attributes
        named += names_emoji(c, e, lang)
        base += got.base == want["base"]
        tone += got.tone == want["tone"]
    count = len(examples)
    return {
        "n": count,
        "accuracy": named / count,
        "base": base / count,
        "tone": tone / count,
        "well_formed": parsed_any / count,
        "examples": captions[:8],
        "asked": [e.attributes[name] for e in examples[:8]],
    }


def score_digits(pipe: CogViewPipeline, n: int, lang: str, batch: int) -> dict[str, float]:
    ds = datasets.load("digits", "test")
    n = min(n, len(ds))
    examples = [ds[i] for i in range(n)]
    captioner = pipe.captioner
    codes = captioner.codes([e.image for e in examples])  # [n, h, w]
    prompts = [digits.canonical_caption(d, lang) for d in range(10)]
    pair_codes = codes.repeat_interleave(10, dim=0)
    scores, _ = captioner.log_likelihoods(pair_codes, prompts * n, max_batch_size=batch)
    predicted = scores.view(n, 10).argmax(1)
    truth = torch.tensor([e.attributes["digit"] for e in examples])
    return {"n": n, "accuracy": float((predicted == truth).float().mean())}


def write_record(args: argparse.Namespace, seconds: float, results: dict[str, Any]) -> None:
    """``args.out``: the arguments, the time and the results, as JSON (the caption benchmarks' record)."""
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    record = {"args": vars(args), "seconds": seconds, "results": results}
    Path(args.out).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    p.add_argument(
        "--caption-model", default=None, help="a caption transformer folder from training (RUN/model)"
    )
    p.add_argument("--transformer", default=None, help="a training run's RUN/model serving its own jobs")
    p.add_argument(
        "--image-tokenizer", default=None, help="with --transformer/--caption-model (default: shipped)"
    )
    p.add_argument(
        "--text-tokenizer", default=None, help="with --transformer/--caption-model (default: shipped)"
    )
    p.add_argument(
        "--datasets",
        default="digits,shapes",
        help="comma-separated: digits (captions and scoring), shapes, emoji-train, emoji-test",
    )
    p.add_argument("-n", type=int, default=200, help="test images per dataset (digits: at most 297)")
    p.add_argument(
        "--candidates",
        type=int,
        default=None,
        help="caption candidates re-ranked by the text-to-image model (a beam of this width; "
        "default: the model's own, post_selection.captions)",
    )
    p.add_argument(
        "--beams", type=int, default=None, help="the best caption of a beam of this width (no re-ranking)"
    )
    p.add_argument("--batch", type=int, default=32, help="batch size")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/captioning.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.beams is not None and args.candidates not in (None, 1):
        p.error("--beams shows the beam's best caption; leave --candidates out (it re-ranks a beam)")
    pipe = load(args)
    decoding = {} if args.beams is None else {"beams": args.beams, "candidates": 1}
    if args.candidates is not None:
        pipe.caption_candidates = args.candidates
    pipe.max_samples = max(pipe.max_samples, args.batch * max(args.candidates or 1, args.beams or 1))
    started = time.perf_counter()
    chosen = args.datasets.split(",")
    unknown = set(chosen) - {"digits", "shapes", "emoji-train", "emoji-test"}
    if unknown:
        p.error(f"unknown --datasets {sorted(unknown)}")
    results = {}
    rows = []
    for lang in ("zh", "en"):
        if "digits" in chosen:
            results[f"digits_{lang}"] = caption_digits(pipe, args.n, lang, args.batch, **decoding)
            results[f"score_digits_{lang}"] = score_digits(pipe, args.n, lang, args.batch)
        if "shapes" in chosen:
            results[f"shapes_{lang}"] = caption_shapes(pipe, args.n, lang, args.batch, **decoding)
        for split in ("train", "test"):
            if f"emoji-{split}" in chosen:
                results[f"emoji_{split}_{lang}"] = caption_emoji(
                    pipe, split, args.n, lang, args.batch, **decoding
                )
    if "digits" in chosen:
        rows += [("digits caption accuracy", "digits", "accuracy")]
    if "shapes" in chosen:
        rows += [
            ("shapes colour+shape+bg", "shapes", "colour_shape_background"),
            ("shapes all four fields", "shapes", "all_four"),
            ("shapes well-formed", "shapes", "well_formed"),
        ]
    if "digits" in chosen:
        rows += [("digit scoring as classifier", "score_digits", "accuracy")]
    for split in ("train", "test"):
        if f"emoji-{split}" in chosen:
            rows += [
                (f"emoji {split}: named", f"emoji_{split}", "accuracy"),
                (f"emoji {split}: base", f"emoji_{split}", "base"),
                (f"emoji {split}: tone", f"emoji_{split}", "tone"),
            ]
    seconds = time.perf_counter() - started
    print(f"{'measure':<28} {'zh':>8} {'en':>8}")
    for name, key, field in rows:
        print(f"{name:<28} {results[key + '_zh'][field]:>8.1%} {results[key + '_en'][field]:>8.1%}")
    print(f"({seconds:.0f} s)")
    write_record(args, seconds, results)


if __name__ == "__main__":
    main()
