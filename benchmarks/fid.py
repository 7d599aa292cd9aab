"""FID of the shipped model's shapes samples against reference rows, with the shipped VQ-VAE extractor.

Run:  nice -n 5 .venv/bin/python benchmarks/fid.py [--n 150] [--lang en] [--threads 1]
Every row is an FID against the same real set, the first N shapes test images. The generated set
is one image for each canonical caption of the next N test scenes (seed = seed + k for the k-th,
the model's default sampling), so the "ideal" row (those scenes' true images) is what a perfect
generator would score. References: the ideal set through the VQ-VAE (the best any generator over
these codes can do) and blurred (a visible defect), disjoint draws of train images (sampling
noise), and digits test images (another data set). Prints a table and writes
benchmarks/results/fid.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from PIL import Image, ImageFilter

from cogview.datasets import digits, shapes
from cogview.evaluation.fid import VQVAEFeatures, feature_statistics, frechet_distance
from cogview.pipeline import CogViewPipeline

TRAIN_DRAWS = 4


def generated(
    pipe: CogViewPipeline, scenes: shapes.ShapesDataset, indices: range, lang: str, seed: int
) -> list[Image.Image]:
    """One image for the canonical caption of each scene in ``indices``, seed + k for the k-th."""
    images = []
    for k, i in enumerate(indices):
        images += pipe.generate(shapes.canonical_caption(scenes.scene(i).attributes, lang), seed=seed + k)
    return images


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="model folder (default: the shipped one)")
    parser.add_argument("--n", type=int, default=150, help="images per set (generation: ~1.5 s each)")
    parser.add_argument("--lang", choices=("zh", "en"), default="en", help="prompt language")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    pipe = CogViewPipeline.from_pretrained(args.model)
    tokenizer = pipe.image_tokenizer
    extractor = VQVAEFeatures(tokenizer)
    n = args.n
    test, train, digit_test = shapes.load("test"), shapes.load("train"), digits.load("test")
    if 2 * n > len(test) or n > len(digit_test):
        raise SystemExit(
            f"--n {n} is too large: shapes test has {len(test)} images, digits test {len(digit_test)}"
        )
    t0 = time.perf_counter()
    fake = generated(pipe, test, range(n, 2 * n), args.lang, args.seed)
    generate_seconds = time.perf_counter() - t0
    ideal = [test[i].image for i in range(n, 2 * n)]
    sets = {
        f"shapes test [{n}, {2 * n}) (ideal)": ideal,
        "ideal through the VQ-VAE": tokenizer.decode(tokenizer.encode(ideal)),
        "ideal, Gaussian blur radius 1": [im.filter(ImageFilter.GaussianBlur(1)) for im in ideal],
        **{
            f"shapes train [{j * n}, {(j + 1) * n})": [train[i].image for i in range(j * n, (j + 1) * n)]
            for j in range(TRAIN_DRAWS)
        },
        f"generated from the ideal's {args.lang} captions": fake,
        f"digits test [0, {n})": [digit_test[i].image for i in range(n)],
    }
    real_stats = feature_statistics(extractor([test[i].image for i in range(n)]))
    rows = []
    print(f"FID against shapes test [0, {n}) (extractor {extractor.name})")
    for name, images in sets.items():
        value = frechet_distance(*real_stats, *feature_statistics(extractor(images)))
        rows.append({"set": name, "images": len(images), "fid": value})
        print(f"{name:<44} {len(images):>5} images  FID {value:9.4f}", flush=True)
    draws = [r["fid"] for r in rows if r["set"].startswith("shapes train")]
    noise = {"mean": statistics.mean(draws), "stdev": statistics.stdev(draws)}
    print(f"train draws: mean {noise['mean']:.4f}, standard deviation {noise['stdev']:.4f}")
    report = {
        "command": "nice -n 5 python benchmarks/fid.py "
        + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None and k != "out"
        ),
        "model": args.model or "shipped default",
        "extractor": extractor.name,
        "real": f"shapes test [0, {n})",
        "prompts": f"canonical {args.lang} captions of shapes test [{n}, {2 * n})",
        "generate_seconds": generate_seconds,
        "seconds": time.perf_counter() - started,
        "rows": rows,
        "train_draws": noise,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fid.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"{report['seconds']:.0f} s (generation {generate_seconds:.0f} s); wrote {out / 'fid.json'}")


if __name__ == "__main__":
    main()
