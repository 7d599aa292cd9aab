"""Prompt alignment of text-to-image samples, with and without classifier-free guidance.

Run:  .venv/bin/python benchmarks/alignment.py [--model PATH] [--prompts 40] [--per-prompt 5]
For each bundled dataset (shapes, digits) and language (zh, en), canonical prompts from the test
attributes are sampled with fixed seeds, and the project's checkers judge every image (shapes:
colour, shape, background and position all right; digits: the classifier reads the prompted
digit; emoji-train / emoji-test: the nearest OpenMoji render is the asked emoji / its base and
skin tone; emoji-train-tones: the seen skin-tone pairs, the control for emoji-test). Prints a
table, writes benchmarks/results/NAME.json and a PNG grid per setting.
A training run's transformer is measured with --transformer RUN/model and its tokenizers.
By default it compares guidance 1 and 3 with one sample each; --as-shipped measures the model's
own guidance scale and post-selection (best of N) instead.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from cogview.datasets.checkers import DigitClassifier, EmojiChecker
from cogview.evaluation.alignment import evaluate_alignment, headline, summary_row
from cogview.images import make_grid
from cogview.pipeline import CogViewPipeline


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="model folder (default: the shipped one)")
    parser.add_argument(
        "--transformer", default=None, help="instead of --model: a training run's RUN/model folder"
    )
    parser.add_argument("--image-tokenizer", default=None, help="with --transformer: its image tokenizer")
    parser.add_argument("--text-tokenizer", default=None, help="with --transformer: its text tokenizer")
    parser.add_argument(
        "--emoji-pool", type=int, default=None, help="emoji-*: draw prompts from the first N emoji only"
    )
    parser.add_argument("--prompts", type=int, default=40, help="distinct prompts per dataset and language")
    parser.add_argument("--per-prompt", type=int, default=5, help="images per prompt (seeds seed+k)")
    parser.add_argument("--guidance", default="1,3", help="comma-separated guidance scales to compare")
    parser.add_argument(
        "--as-shipped",
        action="store_true",
        help="measure the model's own defaults: its guidance scale and post-selection candidates "
        "(overrides --guidance and --candidates)",
    )
    parser.add_argument("--datasets", default="shapes,digits")
    parser.add_argument("--langs", default="zh,en")
    parser.add_argument(
        "--candidates",
        default="1",
        help="comma-separated candidates per image to compare (reranking; 1 = off)",
    )
    parser.add_argument("--top-k", type=int, default=None, help="sampling top-k (default: the model's)")
    parser.add_argument(
        "--temperature", type=float, default=None, help="sampling temperature (default: the model's)"
    )
    parser.add_argument(
        "--min-p", default=None, help="comma-separated min-p values to compare (default: the model's)"
    )
    parser.add_argument(
        "--modifiers",
        default="on",
        help="comma-separated: on (the model's modifiers, e.g. skin tones drawn as base + code map) "
        "and/or off (every prompt drawn as given), to compare in one run",
    )
    parser.add_argument(
        "--negative-base",
        action="store_true",
        help="emoji skin-tone variants: the base emoji's bare name as the negative prompt",
    )
    parser.add_argument("--name", default="alignment", help="file name stem of the JSON result")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    if not set(args.modifiers.split(",")) <= {"on", "off"}:
        parser.error(f"--modifiers takes on and/or off, got {args.modifiers!r}")
    torch.set_num_threads(args.threads)
    if args.transformer:
        pipe = CogViewPipeline.from_components(
            args.transformer, text_tokenizer=args.text_tokenizer, image_tokenizer=args.image_tokenizer
        )
    else:
        pipe = CogViewPipeline.from_pretrained(args.model)
    if args.as_shipped:
        default = pipe.text_to_image.sampling["default"]
        args.guidance, args.candidates = f"{default.guidance_scale:g}", str(pipe.candidates)
    datasets = args.datasets.split(",")
    classifier = DigitClassifier.fit_default(size=pipe.image_tokenizer.image_size)
    emoji_checker = EmojiChecker.build() if any(d.startswith("emoji") for d in datasets) else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    started = time.perf_counter()
    for dataset in datasets:
        for lang in args.langs.split(","):
            settings = [
                (float(s), int(c), m, mod)
                for s in args.guidance.split(",")
                for c in args.candidates.split(",")
                for m in ([None] if args.min_p is None else [float(m) for m in args.min_p.split(",")])
                for mod in args.modifiers.split(",")
            ]
            for scale, candidates, min_p, mod in settings:
                extra = {
                    k: v
                    for k, v in (("top_k", args.top_k), ("temperature", args.temperature), ("min_p", min_p))
                    if v is not None
                }
                result = evaluate_alignment(
                    pipe,
                    dataset,
                    lang,
                    n_prompts=args.prompts,
                    images_per_prompt=args.per_prompt,
                    seed=args.seed,
                    guidance_scale=scale,
                    classifier=classifier,
                    emoji_checker=emoji_checker,
                    emoji_pool=args.emoji_pool,
                    candidates=candidates,
                    negative_base=args.negative_base,
                    modifiers=mod == "on",
                    **extra,
                )
                rows.append(
                    {**summary_row(result), "candidates": candidates, "min_p": min_p, "modifiers": mod}
                )
                tiles = [im for _, images in result["samples"][:16] for im in images[:8]]
                make_grid(tiles, columns=min(8, args.per_prompt), scale=2).save(
                    out / f"{args.name}_{dataset}_{lang}_cfg{scale:g}_c{candidates}"
                    f"{'' if min_p is None else f'_minp{min_p:g}'}{'' if mod == 'on' else '_nomod'}.png"
                )
                print(
                    f"{dataset:>7} {lang} cfg={scale:<4g} min_p={min_p} candidates={candidates} modifiers={mod} "
                    f"aligned {headline(result):6.1%}  "
                    + "  ".join(f"{k} {v:.1%}" for k, v in result["accuracy"].items()),
                    flush=True,
                )
    report = {
        "command": "python benchmarks/alignment.py "
        + " ".join(
            f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}")
            for k, v in vars(args).items()
            if v is not None and v is not False and k not in ("out", "as_shipped")
        ),
        "model": args.transformer or args.model or "shipped default",
        "seconds": time.perf_counter() - started,
        "rows": rows,
    }
    (out / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out / (args.name + '.json')}")


if __name__ == "__main__":
    main()
