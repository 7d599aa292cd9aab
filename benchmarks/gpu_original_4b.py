"""Text-to-image decode speed of the released CogView size (cogview-4b, 3.93B parameters) on a GPU.

Builds ``PRESETS["cogview-4b"]`` with random weights directly on the device (meta-device init,
``to_empty``, ``reset_parameters``) in bf16, then measures, per batch size (default 1 and 8):
- prefill time of a text-to-image prompt ``[ROI1] 16 text ids [BASE] [BOI1]``;
- decode throughput (image tokens/s) and time per step over 1024 image tokens, through
  ``cogview.generation.decode.prefill`` / ``sample_tokens`` with the original top-k 200;
- peak device memory (weights, KV cache, activations);
and compares the batch-1 time per token with the floor of reading every weight once per token at
the measured device copy bandwidth (read + written bytes per second of a large copy).
Random weights give the same speed as the released ones (same shapes and kernels).

Run (CUDA machine):  python benchmarks/gpu_original_4b.py [--batch-sizes 1 8] [--repeats 3]
    writes benchmarks/results/gpu_original_4b.json; without a CUDA device it says so and exits 0.
CPU check of the logic:  python benchmarks/gpu_original_4b.py --preset tiny --device cpu
    writes out/gpu_original_4b-tiny-cpu.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from generate_speed import weight_bytes

from cogview.generation.decode import prefill, sample_tokens
from cogview.generation.sampling import SamplingConfig
from cogview.model import PRESETS, CogViewTransformer
from cogview.tokenizers.vocab import Vocabulary

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
RESULTS = Path(__file__).resolve().parent / "results" / "gpu_original_4b.json"
TEXT_TOKENS = 16
IMAGE_TOKENS = 1024  # 32 x 32 codes of a 256 px image (SPEC 2.2)
TOP_K = 200  # the original scripts' setting (SPEC 3.7)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(preset: str, device: torch.device, dtype: torch.dtype, seed: int) -> CogViewTransformer:
    """Random weights made on ``device`` in ``dtype``: no full-precision copy on the host first."""
    with torch.device("meta"):
        model = CogViewTransformer(dataclasses.replace(PRESETS[preset], dropout=0.0))
    model = model.to(dtype=dtype).to_empty(device=device)
    torch.manual_seed(seed)
    with torch.no_grad():
        model.reset_parameters()
    return model.eval()


def prompt_tokens(vocab_size: int, seed: int) -> tuple[torch.Tensor, range]:
    """A text-to-image prompt in the original layout (SPEC 2.4) and the image-code id range."""
    g = torch.Generator().manual_seed(seed)
    vocab = Vocabulary.original()
    if vocab_size == vocab.size:
        text = torch.randint(vocab.text_offset, vocab.command_offset, (TEXT_TOKENS,), generator=g)
        ids = [vocab.token_id("[ROI1]"), *text.tolist(), vocab.token_id("[BASE]"), vocab.token_id("[BOI1]")]
        return torch.tensor(ids), vocab.image_range
    # Smaller presets (the CPU check): random ids, the first half of the vocabulary as "image codes".
    return torch.randint(0, vocab_size, (TEXT_TOKENS + 3,), generator=g), range(vocab_size // 2)


def copy_bandwidth(device: torch.device, n_bytes: int, repeats: int = 10) -> float:
    """Best (read + written) bytes per second of a ``n_bytes`` device-to-device copy."""
    src = torch.ones(n_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n_bytes / best


def decode_once(
    model: CogViewTransformer, prompt: torch.Tensor, allowed: range, batch: int, steps: int, seed: int
) -> tuple[float, float]:
    """Seconds of the prefill and of ``steps`` decode steps for ``batch`` images."""
    device = model.tok_embeddings.weight.device
    config = SamplingConfig(temperature=1.0, top_k=TOP_K)
    uniforms = torch.rand(batch, steps, generator=torch.Generator().manual_seed(seed))
    out = torch.empty(batch, steps, dtype=torch.long, device=device)
    sync(device)
    t0 = time.perf_counter()
    state = prefill(model, [prompt], steps)
    sync(device)
    t1 = time.perf_counter()
    for i, ids in enumerate(sample_tokens(model, state, uniforms, config, allowed)):
        out[:, i] = ids
    sync(device)
    t2 = time.perf_counter()
    assert bool(((out >= allowed.start) & (out < allowed.stop)).all())
    return t1 - t0, t2 - t1


def measure(
    model: CogViewTransformer, prompt: torch.Tensor, allowed: range, batch: int, steps: int, repeats: int
) -> dict[str, Any]:
    device = model.tok_embeddings.weight.device
    decode_once(model, prompt, allowed, batch, min(steps, 16), seed=0)  # warm-up: kernels, allocator
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    runs = [decode_once(model, prompt, allowed, batch, steps, seed=r) for r in range(repeats)]
    prefill_s = statistics.median(r[0] for r in runs)
    decode_s = statistics.median(r[1] for r in runs)
    return {
        "batch": batch,
        "steps": steps,
        "prefill_ms": 1e3 * prefill_s,
        "decode_s": decode_s,
        "decode_tokens_per_s": batch * steps / decode_s,
        "ms_per_step": 1e3 * decode_s / steps,
        "seconds_per_image": (prefill_s + decode_s) / batch,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "runs": [{"prefill_s": p, "decode_s": d} for p, d in runs],
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="cogview-4b", choices=sorted(PRESETS))
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument(
        "--steps", type=int, help=f"image tokens per image (default: {IMAGE_TOKENS}, or what fits)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per batch size (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="JSON path (default: results/ for cogview-4b on CUDA, else out/)")
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "gpu_original_4b: no CUDA device here (torch.cuda.is_available() is False); nothing measured. "
            "Run it on a GPU machine, or check the script's logic with --preset tiny --device cpu.",
            file=sys.stderr,
        )
        return 0
    dtype = DTYPES[args.dtype]
    t0 = time.perf_counter()
    model = build_model(args.preset, device, dtype, args.seed)
    build_s = time.perf_counter() - t0
    config = model.config
    prompt, allowed = prompt_tokens(config.vocab_size, args.seed)
    steps = args.steps or min(IMAGE_TOKENS, config.max_seq_len - len(prompt))
    bandwidth = copy_bandwidth(device, 2**30 if device.type == "cuda" else 2**26)
    w_bytes = weight_bytes(model)
    floor_ms = 1e3 * w_bytes / bandwidth
    rows = [measure(model, prompt, allowed, b, steps, args.repeats) for b in args.batch_sizes]
    kv_bytes_per_token = 2 * config.n_layers * config.dim * torch.finfo(dtype).bits // 8

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{args.preset} ({model.num_parameters():,} parameters, {args.dtype}) on {device_name}")
    print(
        f"weights read per decode step {w_bytes / 2**30:.2f} GiB; copy bandwidth {bandwidth / 1e9:.0f} GB/s"
    )
    print(f"floor (weights once per step at that bandwidth): {floor_ms:.2f} ms/step")
    print(
        f"{'batch':>5} {'prefill ms':>10} {'tokens/s':>9} {'ms/step':>8} {'x floor':>7} {'s/image':>8} {'peak GiB':>8}"
    )
    for r in rows:
        peak = "-" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.2f}"
        print(
            f"{r['batch']:>5} {r['prefill_ms']:>10.1f} {r['decode_tokens_per_s']:>9.1f} {r['ms_per_step']:>8.2f} "
            f"{r['ms_per_step'] / floor_ms:>7.2f} {r['seconds_per_image']:>8.2f} {peak:>8}"
        )
    result = {
        "preset": args.preset,
        "config": config.to_dict(),
        "parameters": model.num_parameters(),
        "dtype": args.dtype,
        "device": device_name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "build_seconds": build_s,
        "prompt_tokens": len(prompt),
        "top_k": TOP_K,
        "weight_bytes_per_step": w_bytes,
        "copy_bandwidth_bytes_per_s": bandwidth,
        "floor_ms_per_step": floor_ms,
        "kv_cache_bytes_per_token_per_image": kv_bytes_per_token,
        "batches": rows,
    }
    if args.out:
        out = Path(args.out)
    elif (args.preset, device.type) == ("cogview-4b", "cuda"):
        out = RESULTS
    else:
        out = Path("out") / f"gpu_original_4b-{args.preset}-{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
