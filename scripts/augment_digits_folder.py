"""Write K random affine variants of every train digit as a captioned image folder (an experiment).

Usage: python scripts/augment_digits_folder.py OUT_DIR K
then:  cogview prepare --dataset OUT_DIR --split all --out runs/shards/digits-augK --text-budget 24

Each variant rotates the 32 px digit by up to 10 degrees, scales it by 0.9-1.1 and shifts it by
up to 1.5 px (white fill), seeded; captions.jsonl holds one zh and one en caption line per image.
Used for configs/default-t2i-digits-aug-not-shipped.json, which lowered digit alignment
(docs/shapes_model.md), so the shipped model does not use it.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from PIL import Image

from cogview.datasets import digits


def main(out: Path, k: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    ds = digits.load("train")
    rng = random.Random(0)
    lines = []
    for i in range(len(ds)):
        ex = ds[i]
        d = ex.attributes["digit"]
        for j in range(k):
            angle, scale = rng.uniform(-10, 10), rng.uniform(0.9, 1.1)
            dx, dy = rng.uniform(-1.5, 1.5), rng.uniform(-1.5, 1.5)
            im = ex.image.convert("L").rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=255)
            w = round(32 * scale)
            canvas = Image.new("L", (48, 48), 255)
            canvas.paste(
                im.resize((w, w), Image.Resampling.BICUBIC),
                (8 + (32 - w) // 2 + round(dx), 8 + (32 - w) // 2 + round(dy)),
            )
            name = f"{i:04d}_{j}.png"
            canvas.crop((8, 8, 40, 40)).convert("RGB").save(out / name)
            for lang, templates in (("zh", digits.ZH_TEMPLATES), ("en", digits.EN_TEMPLATES)):
                caption = digits.caption(d, lang, rng.randrange(len(templates)))
                lines.append(json.dumps({"image": name, "caption": caption}, ensure_ascii=False))
    (out / "captions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{len(lines)} caption lines for {len(ds) * k} images in {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
