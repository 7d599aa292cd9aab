"""Token-space super-resolution (32 -> 64 px) against the true 64 px rendering of shapes test scenes.

Each test scene is rendered at 32 px (the input) and at 64 px (the truth). Reported PSNR (dB, mean
over images) for: our ``upscale``; bicubic and nearest upscaling of the input (baselines); and the
image tokenizer's own round trip of the true 64 px image (the ceiling any token-space method has).

    python benchmarks/super_resolution.py [--model DIR | --sr-model RUN/model] [-n 100]

Prints a table, writes benchmarks/results/super_resolution.json and a comparison grid PNG.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from PIL import Image

from cogview import datasets
from cogview.images import make_grid, psnr, to_tensor
from cogview.pipeline import CogViewPipeline


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    p.add_argument("--sr-model", default=None, help="a super-resolution transformer folder from training")
    p.add_argument("-n", type=int, default=100, help="test scenes")
    p.add_argument("--top-k", type=int, default=None, help="sampling top-k (default: the model's, greedy)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.sr_model:
        pipe = CogViewPipeline.from_components({"super_resolution": args.sr_model})
    else:
        pipe = CogViewPipeline.from_pretrained(args.model)
    size = pipe.image_tokenizer.image_size
    low_ds = datasets.load("shapes", "test", size=size)
    high_ds = datasets.load("shapes", "test", size=2 * size)
    low = [low_ds[i].image for i in range(args.n)]
    truth = to_tensor([high_ds[i].image for i in range(args.n)])
    started = time.perf_counter()
    ours = pipe.upscale(low, seed=0, top_k=args.top_k, max_batch_size=args.batch, progress=True)
    seconds = time.perf_counter() - started
    codes = pipe.image_tokenizer.encode([high_ds[i].image for i in range(args.n)], size=2 * size)
    methods = {
        "cogview upscale": to_tensor(ours),
        "bicubic": to_tensor([im.resize((2 * size, 2 * size), Image.BICUBIC) for im in low]),
        "nearest": to_tensor([im.resize((2 * size, 2 * size), Image.NEAREST) for im in low]),
        "tokenizer round trip of the truth (ceiling)": pipe.image_tokenizer.decode_pixels(codes).clamp(0, 1),
    }
    results = {name: float(psnr(x, truth).mean()) for name, x in methods.items()}
    print(f"{'method':<45} {'PSNR dB':>8}")
    for name, value in results.items():
        print(f"{name:<45} {value:>8.2f}")
    gain = results["cogview upscale"] - results["bicubic"]
    print(f"gain over bicubic: {gain:+.2f} dB; {seconds / args.n:.2f} s per image")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tiles = []
    for i in range(min(8, args.n)):
        tiles += [
            low[i].resize((2 * size, 2 * size), Image.NEAREST),
            low[i].resize((2 * size, 2 * size), Image.BICUBIC),
        ]
        tiles += [ours[i], high_ds[i].image]
    make_grid(tiles, columns=4, scale=2).save(out / "super_resolution.png")
    record = {
        "command": "python benchmarks/super_resolution.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
        "n": args.n,
        "psnr_db": results,
        "gain_over_bicubic_db": gain,
        "seconds_per_image": seconds / args.n,
        "grid": "super_resolution.png (columns: input nearest, input bicubic, cogview upscale, truth)",
    }
    (out / "super_resolution.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
