"""Decode step time of the one decoding engine on a GPU: eager against CUDA graphs, against the floor.

For ``PRESETS["cogview-4b"]`` (random weights made on the device, bf16; same shapes and kernels as
the released ones) it times the engine's text-to-image decode (``prefill`` + ``sample_tokens``,
top-k 200) at batch 1, 8 and 32, with the step eager (the kv_len-sliced step) and captured in a
CUDA graph (``DecodeStep(cuda_graph=True)``: the fixed-shape step replayed with one launch), and
compares the time per step with the floor of reading every weight once per step at the measured
device copy bandwidth. Then it times the shipped model's three jobs (generate, caption, upscale)
on the device, and prints one table. Peak device memory is reported per row.

Run (CUDA machine, well under 8 minutes):
    python benchmarks/gpu_decode.py            writes benchmarks/results/gpu_decode.json
CPU check of the logic:
    python benchmarks/gpu_decode.py --device cpu --preset tiny   (CUDA graph rows are skipped)
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from generate_speed import weight_bytes
from gpu_original_4b import DTYPES, TOP_K, build_model, copy_bandwidth, prompt_tokens, sync

from cogview.generation.decode import DecodeStep, prefill, sample_tokens
from cogview.generation.sampling import SamplingConfig
from cogview.serialization import write_json

RESULTS = Path(__file__).resolve().parent / "results" / "gpu_decode.json"


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def decode_seconds(model: Any, prompt: torch.Tensor, allowed: range, batch: int, steps: int, step: DecodeStep) -> float:
    """Seconds of ``steps`` decode steps for ``batch`` images (the prefill excluded)."""
    device = model.tok_embeddings.weight.device
    config = SamplingConfig(temperature=1.0, top_k=TOP_K)
    uniforms = torch.rand(batch, steps, generator=torch.Generator().manual_seed(batch))
    out = torch.empty(batch, steps, dtype=torch.long, device=device)
    state = prefill(model, [prompt], steps)
    sync(device)
    t0 = time.perf_counter()
    for i, ids in enumerate(sample_tokens(model, state, uniforms, config, allowed, step)):
        out[:, i] = ids
    sync(device)
    return time.perf_counter() - t0


def engine_rows(
    model: Any, prompt: torch.Tensor, allowed: range, batches: list[int], steps: int, repeats: int, floor_ms: float
) -> list[dict[str, Any]]:
    device = model.tok_embeddings.weight.device
    modes = {"eager": DecodeStep(model)}
    if device.type == "cuda":
        modes["cuda_graph"] = DecodeStep(model, cuda_graph=True)
    rows = []
    for batch in batches:
        for mode, step in modes.items():
            decode_seconds(model, prompt, allowed, batch, min(steps, 8), step)  # warm-up
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            times = [decode_seconds(model, prompt, allowed, batch, steps, step) for _ in range(repeats)]
            ms = 1e3 * statistics.median(times) / steps
            rows.append(
                {
                    "batch": batch,
                    "mode": mode,
                    "ms_per_step": ms,
                    "x_floor": ms / floor_ms,
                    "tokens_per_s": 1e3 * batch / ms,
                    "peak_memory_gib": peak_gib(device),
                    "seconds": times,
                }
            )
            print(f"  batch {batch:>3} {mode:>10}: {ms:8.2f} ms/step = {ms / floor_ms:6.2f} x floor", flush=True)
    return rows


def shipped_jobs(device: torch.device) -> dict[str, Any]:
    """Seconds of the shipped model's jobs on ``device`` (eager and compiled generate)."""
    from cogview import datasets
    from cogview.pipeline import CogViewPipeline

    pipe = CogViewPipeline.from_pretrained(device=device)
    images = [datasets.load("shapes", "test", size=32)[i].image for i in range(4)]
    out: dict[str, Any] = {}

    def timed(name: str, fn: Any) -> None:
        fn()  # warm-up (and, compiled, the capture)
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        out[name] = time.perf_counter() - t0
        print(f"  {name}: {out[name]:.2f} s", flush=True)

    timed("generate_16_images", lambda: pipe.generate("a red circle", 16, seed=0, candidates=1))
    if device.type == "cuda":  # --compile on CUDA: the step captured in CUDA graphs
        timed(
            "generate_16_images_compile",
            lambda: pipe.generate("a red circle", 16, seed=0, candidates=1, compile=True),
        )
    if pipe.captioner is not None:
        timed("caption_4_images", lambda: pipe.caption(images, "en"))
    if pipe.super_resolution is not None:
        timed("upscale_4_images", lambda: pipe.upscale(images, seed=0))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cogview-4b")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--steps", type=int, default=128, help="decode steps timed per run (default 128)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per setting (median)")
    parser.add_argument("--no-jobs", action="store_true", help="skip the shipped model's jobs")
    parser.add_argument("--out", help="JSON path (default: results/ for cogview-4b on CUDA, else out/)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_decode: no CUDA device here; nothing measured (check with --device cpu --preset tiny)", file=sys.stderr)
        return 0
    if device.type == "cpu":
        torch.set_num_threads(1)
    model = build_model(args.preset, device, DTYPES[args.dtype], seed=0)
    prompt, allowed = prompt_tokens(model.config.vocab_size, 0)
    steps = min(args.steps, model.config.max_seq_len - len(prompt))
    bandwidth = copy_bandwidth(device, 2**30 if device.type == "cuda" else 2**26)
    w_bytes = weight_bytes(model)
    floor_ms = 1e3 * w_bytes / bandwidth
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{args.preset} {args.dtype} on {device_name}: floor {floor_ms:.3f} ms/step ({w_bytes / 2**30:.2f} GiB of weights)")
    rows = engine_rows(model, prompt, allowed, args.batch_sizes, steps, args.repeats, floor_ms)
    del model
    result = {
        "command": "python " + " ".join(sys.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "preset": args.preset,
        "dtype": args.dtype,
        "device": device_name,
        "torch": torch.__version__,
        "steps": steps,
        "top_k": TOP_K,
        "weight_bytes_per_step": w_bytes,
        "copy_bandwidth_bytes_per_s": bandwidth,
        "floor_ms_per_step": floor_ms,
        "engine": rows,
        "shipped_jobs_seconds": {},
    }
    default = RESULTS if (args.preset, device.type) == ("cogview-4b", "cuda") else Path("out") / (
        f"gpu_decode-{args.preset}-{device.type}.json"
    )
    out = Path(args.out) if args.out else default
    write_json(out, result)  # the engine rows are kept even if the jobs below fail or time out

    print(f"\n{'batch':>5} {'mode':>10} {'ms/step':>8} {'x floor':>7} {'tokens/s':>9} {'peak GiB':>8}")
    for r in rows:
        peak = "-" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.2f}"
        print(
            f"{r['batch']:>5} {r['mode']:>10} {r['ms_per_step']:>8.2f} {r['x_floor']:>7.2f} "
            f"{r['tokens_per_s']:>9.1f} {peak:>8}"
        )
    if not args.no_jobs:
        result["shipped_jobs_seconds"] = shipped_jobs(device)
        write_json(out, result)
    for name, seconds in result["shipped_jobs_seconds"].items():
        print(f"shipped model {name}: {seconds:.2f} s")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
