"""Image-tokenizer evaluation: round trip of dataset images with PSNR, codebook use and checkers.

The tokenizer bounds every later alignment figure: a generated image can only be as faithful as
a reconstruction, so we measure the project's own checkers (shapes detector, digit classifier)
on reconstructions of real test images, next to PSNR.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from cogview.images import make_grid, psnr, to_pil, to_tensor
from cogview.tokenizers.image import ImageTokenizer


def checker_pass_rate(name: str, images: Sequence, examples: Sequence) -> dict[str, float]:
    """Fraction of ``images`` on which the dataset's checker agrees with the examples' attributes."""
    from cogview.datasets import checkers

    if name == "shapes":
        results = [checkers.check_shapes(im, ex.attributes) for im, ex in zip(images, examples, strict=True)]
        fields = (*checkers.SHAPE_FIELDS, "all")
        return {f"checker_{f}": sum(r[f] for r in results) / len(results) for f in fields}
    if name == "digits":
        predicted = checkers.DigitClassifier.fit_default(size=images[0].size[0]).predict(images)
        truth = [ex.attributes["digit"] for ex in examples]
        return {"checker_digit": sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(truth)}
    if name == "emoji":
        results = checkers.EmojiChecker.build().check(images, [ex.attributes["emoji"] for ex in examples])
        toned = [r for r, ex in zip(results, examples, strict=True) if ex.attributes.get("tone")]
        out = {f"checker_{k}": sum(r[k] for r in results) / len(results) for k in ("emoji", "base")}
        if toned:
            out["checker_tone_variants_base_and_tone"] = sum(r["base"] and r["tone"] for r in toned) / len(toned)
        return out
    return {}


def roundtrip_report(
    tokenizer: ImageTokenizer,
    names: Sequence[str],
    split: str = "test",
    num: int = 200,
    out_dir: Path | None = None,
    checkers: bool = True,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Encode and decode the first ``num`` images of each dataset; metrics per dataset, grids on disk."""
    from cogview import datasets

    report: dict[str, Any] = {"split": split, "tokenizer": tokenizer.fingerprint, "datasets": {}}
    rows = []
    for name in names:
        ds = datasets.load(name, split, size=tokenizer.image_size)
        examples = ds[: min(num, len(ds))]
        if not examples:
            raise ValueError(f"dataset {name!r} has no {split} images")
        pixels = to_tensor([ex.image for ex in examples])
        codes = torch.cat(
            [tokenizer.encode(pixels[i : i + batch_size]) for i in range(0, len(pixels), batch_size)]
        )
        recon = torch.cat(
            [tokenizer.decode_pixels(codes[i : i + batch_size]) for i in range(0, len(codes), batch_size)]
        )
        used = torch.bincount(codes.flatten(), minlength=tokenizer.codebook_size) > 0
        row: dict[str, Any] = {
            "n": len(examples),
            "psnr": float(psnr(recon, pixels).mean()),
            "usage": float(used.float().mean()),
        }
        if checkers:
            row.update(checker_pass_rate(Path(str(name)).name, to_pil(recon), examples))
        report["datasets"][str(name)] = row
        originals, reconstructions = to_pil(pixels[:32]), to_pil(recon[:32])
        rows.append((originals, reconstructions))
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        tiles = []
        for (
            originals,
            reconstructions,
        ) in rows:  # each dataset: a row of originals, then their reconstructions
            for start in range(0, len(originals), 16):
                tiles += originals[start : start + 16] + reconstructions[start : start + 16]
        grid_path = out_dir / "roundtrip.png"
        make_grid(tiles, columns=16, scale=3).save(grid_path)
        metrics_path = out_dir / "roundtrip.json"
        metrics_path.write_text(json.dumps(report, indent=2) + "\n")
        report["grid"], report["metrics"] = str(grid_path), str(metrics_path)
    return report
