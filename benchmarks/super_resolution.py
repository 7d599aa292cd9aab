"""Token-space super-resolution (32 -> 64 px) against the true 64 px rendering of test images.

Each test image (shapes scenes, or emoji with ``--dataset emoji``) is rendered at 32 px (the input)
and at 64 px (the truth). Reported PSNR (dB, mean over images) for: our ``upscale``; bicubic and
nearest upscaling of the input (baselines); and the image tokenizer's own round trip of the true
64 px image (the ceiling any token-space method has).

    python benchmarks/super_resolution.py [--model DIR | --sr-model RUN/model] [-n 100]
    python benchmarks/super_resolution.py --dataset emoji --baselines-only --image-tokenizer T

Prints a table, writes benchmarks/results/super_resolution[_DATASET].json and a comparison grid PNG
(``--baselines-only``: no model, only the baselines and the tokenizer's ceiling, no grid).
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
from cogview.tokenizers.image import ImageTokenizer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    p.add_argument("--sr-model", default=None, help="a super-resolution transformer folder from training")
    p.add_argument("--image-tokenizer", default=None, help="image tokenizer folder (with --sr-model or --baselines-only)")
    p.add_argument("--text-tokenizer", default=None, help="text tokenizer folder (with --sr-model)")
    p.add_argument("--dataset", default="shapes", choices=["shapes", "digits", "emoji"], help="test images")
    p.add_argument("--baselines-only", action="store_true", help="no model: bicubic, nearest and the ceiling")
    p.add_argument("-n", type=int, default=100, help="test images (evenly spaced over the test split)")
    p.add_argument("--top-k", type=int, default=None, help="sampling top-k (default: the model's, greedy)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--out",
        default="benchmarks/results",
        help="folder for super_resolution[_DATASET].json and its grid PNG (default: benchmarks/results)",
    )
    args = p.parse_args()
    if Path(args.out).suffix in (".json", ".png"):
        p.error(f"--out names a folder, not a file: {args.out}")
    torch.set_num_threads(args.threads)
    if args.baselines_only:
        if args.image_tokenizer is None:
            p.error("--baselines-only needs --image-tokenizer (the ceiling is its round trip)")
        image_tokenizer = ImageTokenizer.from_pretrained(args.image_tokenizer)
    else:
        if args.sr_model:
            pipe = CogViewPipeline.from_components(
                {"super_resolution": args.sr_model}, args.text_tokenizer, args.image_tokenizer
            )
        else:
            pipe = CogViewPipeline.from_pretrained(args.model)
        image_tokenizer = pipe.image_tokenizer
    size = image_tokenizer.image_size
    low_ds = datasets.load(args.dataset, "test", size=size)
    high_ds = datasets.load(args.dataset, "test", size=2 * size)
    if not 0 < args.n <= len(low_ds):
        p.error(f"-n must lie in [1, {len(low_ds)}] for {args.dataset}")
    picked = [i * len(low_ds) // args.n for i in range(args.n)]
    low = [low_ds[i].image.convert("RGB") for i in picked]
    high = [high_ds[i].image.convert("RGB") for i in picked]
    truth = to_tensor(high)
    codes = image_tokenizer.encode(high, size=2 * size)
    methods = {
        "bicubic": to_tensor([im.resize((2 * size, 2 * size), Image.BICUBIC) for im in low]),
        "nearest": to_tensor([im.resize((2 * size, 2 * size), Image.NEAREST) for im in low]),
        "tokenizer round trip of the truth (ceiling)": image_tokenizer.decode_pixels(codes).clamp(0, 1),
    }
    seconds, ours = 0.0, []
    if not args.baselines_only:
        started = time.perf_counter()
        ours = pipe.upscale(low, seed=0, top_k=args.top_k, max_batch_size=args.batch, progress=True)
        seconds = time.perf_counter() - started
        methods = {"cogview upscale": to_tensor(ours), **methods}
    results = {name: float(psnr(x, truth).mean()) for name, x in methods.items()}
    print(f"{'method':<45} {'PSNR dB':>8}")
    for name, value in results.items():
        print(f"{name:<45} {value:>8.2f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.dataset == "shapes" else f"_{args.dataset}"
    record: dict = {
        "command": "python benchmarks/super_resolution.py "
        + " ".join(
            ("-" if len(k) == 1 else "--") + k.replace("_", "-") + ("" if v is True else f" {v}")
            for k, v in vars(args).items()
            if v is not None and v is not False
        ),
        "dataset": args.dataset,
        "n": args.n,
        "psnr_db": results,
    }
    if args.baselines_only:
        (out / f"super_resolution{suffix}_baselines.json").write_text(json.dumps(record, indent=2) + "\n")
        return
    gain = results["cogview upscale"] - results["bicubic"]
    print(f"gain over bicubic: {gain:+.2f} dB; {seconds / args.n:.2f} s per image")
    tiles = []
    for i in range(min(8, args.n)):
        tiles += [
            low[i].resize((2 * size, 2 * size), Image.NEAREST),
            low[i].resize((2 * size, 2 * size), Image.BICUBIC),
        ]
        tiles += [ours[i], high[i]]
    make_grid(tiles, columns=4, scale=2).save(out / f"super_resolution{suffix}.png")
    record.update(
        gain_over_bicubic_db=gain,
        seconds_per_image=seconds / args.n,
        grid=f"super_resolution{suffix}.png (columns: input nearest, input bicubic, cogview upscale, truth)",
    )
    (out / f"super_resolution{suffix}.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
