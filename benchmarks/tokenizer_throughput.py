"""Image tokenizer throughput on CPU: encode and decode images/s at several batch sizes.

Run:  .venv/bin/python benchmarks/tokenizer_throughput.py [--tokenizer PATH] [--threads 2]
Prints a table and writes benchmarks/results/tokenizer_throughput.json. The machine's fp32 matmul
rate is measured in the same run (interleaved) so numbers from noisy machines can be compared
as ratios: images/s per matmul TFLOP/s.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from cogview.tokenizers.image import ImageTokenizer


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def matmul_gflops(n: int = 1024, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / best_of(lambda: a @ b, repeats) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the shipped one)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", default="1,16,64,256")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "tokenizer_throughput.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tok = ImageTokenizer.from_pretrained(args.tokenizer)
    size = tok.image_size
    rows = []
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        pixels = torch.rand(bs, 3, size, size, generator=torch.Generator().manual_seed(0))
        codes = tok.encode(pixels)
        gflops = matmul_gflops()
        enc = best_of(lambda: tok.encode(pixels), args.repeats)  # noqa: B023
        dec = best_of(lambda: tok.decode_pixels(codes), args.repeats)  # noqa: B023
        rows.append(
            {
                "batch": bs,
                "encode_images_per_s": bs / enc,
                "decode_images_per_s": bs / dec,
                "matmul_gflops": gflops,
            }
        )
    print(
        f"tokenizer {tok.image_size}px -> {tok.grid_size}x{tok.grid_size} codes, K={tok.codebook_size}, threads={args.threads}"
    )
    print(f"{'batch':>6} {'encode img/s':>13} {'decode img/s':>13} {'matmul GFLOP/s':>15}")
    for r in rows:
        print(
            f"{r['batch']:>6} {r['encode_images_per_s']:>13.0f} {r['decode_images_per_s']:>13.0f} {r['matmul_gflops']:>15.0f}"
        )
    result = {
        "command": "python benchmarks/tokenizer_throughput.py "
        + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None and k != "out"
        ),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "tokenizer": {
            "image_size": size,
            "grid": tok.grid_size,
            "codebook": tok.codebook_size,
            "fingerprint": tok.fingerprint,
        },
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
