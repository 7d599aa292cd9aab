"""Accuracy of the prompt-alignment checkers on real test images, clean and degraded.

The checkers later judge blurry generated images, so besides the clean test splits this measures
them after the degradations a VQ-VAE reconstruction tends to add (blur, a 16 px bottleneck, noise).
Shapes: per-field accuracy of `detect_shape_attributes` on the shapes test split; digits: accuracy
of `DigitClassifier.fit_default()` (trained on the train split only) on the 297 test digits.

Run: .venv/bin/python benchmarks/checkers_accuracy.py [--shapes-n 1000] [--out benchmarks/results/checkers_accuracy.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import sklearn
from PIL import Image, ImageFilter

from cogview.datasets import load
from cogview.datasets.checkers import SHAPE_FIELDS, DigitClassifier, detect_shape_attributes


def degradations(seed: int) -> dict[str, Callable[[Image.Image], Image.Image]]:
    rng = np.random.default_rng(seed)

    def noise(image: Image.Image, sigma: float = 15.0) -> Image.Image:
        arr = np.asarray(image, dtype=np.float32)
        return Image.fromarray(np.clip(arr + rng.normal(0, sigma, arr.shape), 0, 255).astype(np.uint8))

    return {
        "clean": lambda im: im,
        "blur sigma=1": lambda im: im.filter(ImageFilter.GaussianBlur(1.0)),
        "blur sigma=1.5": lambda im: im.filter(ImageFilter.GaussianBlur(1.5)),
        "16px bottleneck": lambda im: im.resize((16, 16), Image.Resampling.BOX).resize(
            im.size, Image.Resampling.BILINEAR
        ),
        "noise sigma=15": noise,
        "blur 1 + noise 10": lambda im: noise(im.filter(ImageFilter.GaussianBlur(1.0)), 10.0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes-n", type=int, default=1000, help="number of shapes test images")
    parser.add_argument("--seed", type=int, default=0, help="shapes dataset seed and noise seed")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/checkers_accuracy.json"))
    args = parser.parse_args()

    shapes = load("shapes", "test", n=args.shapes_n, seed=args.seed)
    shape_examples = list(shapes)
    digits = load("digits", "test")
    digit_images = [e.image for e in digits]
    digit_labels = np.array([e.attributes["digit"] for e in digits])
    start = time.perf_counter()
    classifier = DigitClassifier.fit_default()
    fit_s = time.perf_counter() - start

    rows = []
    for name, degrade in degradations(args.seed).items():
        start = time.perf_counter()
        found = [detect_shape_attributes(degrade(e.image)) for e in shape_examples]
        per_image_ms = 1000 * (time.perf_counter() - start) / len(shape_examples)
        correct = {
            f: np.array([d[f] == e.attributes[f] for d, e in zip(found, shape_examples, strict=True)])
            for f in SHAPE_FIELDS
        }
        shape_acc = {f: float(c.mean()) for f, c in correct.items()}
        shape_acc["all"] = float(np.logical_and.reduce(list(correct.values())).mean())
        predicted = np.array(classifier.predict([degrade(im) for im in digit_images]))
        rows.append(
            {
                "degradation": name,
                "shapes": shape_acc,
                "shapes_ms_per_image": per_image_ms,
                "digits": float((predicted == digit_labels).mean()),
            }
        )

    header = f"{'degradation':<18}" + "".join(f"{f:>11}" for f in (*SHAPE_FIELDS, "all")) + f"{'digits':>9}"
    print(
        f"shapes test n={len(shape_examples)} (32 px), digits test n={len(digit_images)}; digit fit {fit_s:.1f}s"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        cells = "".join(f"{row['shapes'][f]:>11.3f}" for f in (*SHAPE_FIELDS, "all"))
        print(f"{row['degradation']:<18}{cells}{row['digits']:>9.3f}")

    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "shapes_test_n": len(shape_examples),
        "digits_test_n": len(digit_images),
        "seed": args.seed,
        "digit_classifier_fit_s": fit_s,
        "rows": rows,
        "python": platform.python_version(),
        "scikit_learn": sklearn.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
