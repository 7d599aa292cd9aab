"""GPU check of the cogview-4b training path: FSDP2 on one GPU, bf16, activation checkpointing.

Builds the ``cogview-4b`` preset (3,928,849,920 parameters) directly on the GPU (meta device,
then ``to_empty`` + ``reset_parameters``), wraps it exactly as ``cogview train --strategy fsdp``
does (cogview.training.strategies.build_replica: ``fully_shard`` per block + root, MixedPrecisionPolicy
bf16 with fp32 reduction, composable activation checkpointing per block, fused AdamW over fp32
sharded weights) in a one-process group, and times the real training step
(cogview.training.step.train_step: forward, fp32 loss, backward, clipping, AdamW) on synthetic
rows of 1088 tokens. Reports peak GPU memory (allocated and reserved) and tokens/s, plus model
TFLOP/s counted as 6 x N per token (8 x N with recomputation, the work actually done).

    python benchmarks/gpu_fsdp_4b.py                                  # on a CUDA machine
    python benchmarks/gpu_fsdp_4b.py --batch-size 2 --no-checkpointing
    python benchmarks/gpu_fsdp_4b.py --preset tiny --device cpu --out /tmp/fsdp_tiny.json  # code path on CPU

Without CUDA (and without ``--device cpu``) it prints why and exits 0. Prints a table and writes
benchmarks/results/gpu_fsdp_4b.json (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import sys
import time
from pathlib import Path
from typing import Any

import torch

from cogview.model import CogViewTransformer
from cogview.training import distributed
from cogview.training.batches import Batch
from cogview.training.config import TrainConfig
from cogview.training.step import train_step
from cogview.training.strategies import build_replica

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "gpu_fsdp_4b.json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def synthetic_batch(batch_size: int, seq_len: int, vocab_size: int, device: torch.device) -> Batch:
    """Random image-code rows: the step's cost does not depend on the token values."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, vocab_size, (batch_size, seq_len + 1), generator=g)
    positions = torch.arange(seq_len).expand(batch_size, seq_len)
    return Batch(
        inputs=tokens[:, :-1],
        targets=tokens[:, 1:],
        positions=positions,
        loss_mask=torch.ones(batch_size, seq_len),
        text_mask=torch.zeros(batch_size, seq_len, dtype=torch.bool),
        cells=torch.zeros(batch_size, seq_len, dtype=torch.long),  # the 4B model takes no cell inputs
        sources=torch.full((batch_size, seq_len, 9), -1),
    ).to(device)


def peak_memory_gb(device: torch.device) -> dict[str, float]:
    if device.type == "cuda":
        return {
            "peak_allocated_gb": torch.cuda.max_memory_allocated(device) / 2**30,
            "peak_reserved_gb": torch.cuda.max_memory_reserved(device) / 2**30,
        }
    return {"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}  # KiB on Linux


def run(args: argparse.Namespace) -> dict[str, Any]:
    for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    cfg = TrainConfig(
        data="(synthetic rows)",
        model=args.preset,
        batch_size=args.batch_size,
        precision=args.precision,
        device=args.device,
        strategy="fsdp",
        activation_checkpointing=not args.no_checkpointing,
    )
    model_cfg = cfg.transformer_config()
    seq_len = min(args.seq_len, model_cfg.max_seq_len - 1)
    env = distributed.setup("fsdp", args.device)
    try:
        torch.manual_seed(0)
        with torch.device("meta"):
            model = CogViewTransformer(model_cfg)
        model = model.to_empty(device=env.device)  # fp32 weights made on the device, not on the host
        model.reset_parameters()
        n_params = model.num_parameters()
        if env.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(env.device)
        rep = build_replica(model, cfg, env)
        batch = synthetic_batch(args.batch_size, seq_len, model_cfg.vocab_size, env.device)
        times, losses = [], []
        for i in range(args.warmup + args.steps):
            if env.device.type == "cuda":
                torch.cuda.synchronize(env.device)
            start = time.perf_counter()
            result = train_step(
                rep.model, rep.optimizer, [batch], grad_clip=1.0, precision=args.precision, replica=rep
            )
            if env.device.type == "cuda":
                torch.cuda.synchronize(env.device)
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
            losses.append(result.loss)
        step_s = sorted(times)[len(times) // 2]
        tokens_per_s = args.batch_size * seq_len / step_s
        work = 8 if cfg.activation_checkpointing else 6  # recomputation adds one forward
        return {
            "preset": args.preset,
            "parameters": n_params,
            "device": torch.cuda.get_device_name(env.device)
            if env.device.type == "cuda"
            else platform.processor(),
            "precision": args.precision,
            "activation_checkpointing": cfg.activation_checkpointing,
            "batch_size": args.batch_size,
            "seq_len": seq_len,
            "median_step_s": step_s,
            "tokens_per_s": tokens_per_s,
            "model_tflops": 6 * n_params * tokens_per_s / 1e12,
            "hardware_tflops": work * n_params * tokens_per_s / 1e12,
            "losses": losses,
            **peak_memory_gb(env.device),
            "torch": torch.__version__,
        }
    finally:
        distributed.teardown(env)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--preset", default="cogview-4b", help="model preset (default cogview-4b; tiny for a CPU check)"
    )
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--batch-size", type=int, default=4, help="rows per step (default 4)")
    p.add_argument("--seq-len", type=int, default=1088, help="input tokens per row (default 1088, SPEC 4.1)")
    p.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--no-checkpointing", action="store_true", help="keep every block's activations")
    p.add_argument(
        "--out", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS.relative_to(ROOT)})"
    )
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "gpu_fsdp_4b: no CUDA device here; run it on a GPU machine, or check the code path with "
            "--preset tiny --device cpu"
        )
        return 0
    result = run(args)
    mem = {k: v for k, v in result.items() if k.startswith("peak_")}
    print(
        f"{'preset':<12} {'params':>14} {'prec':>5} {'ckpt':>5} {'B x T':>10} {'step s':>8} "
        f"{'tokens/s':>10} {'TFLOP/s':>8}  memory"
    )
    print(
        f"{result['preset']:<12} {result['parameters']:>14,} {result['precision']:>5} "
        f"{'yes' if result['activation_checkpointing'] else 'no':>5} "
        f"{result['batch_size']:>4} x {result['seq_len']:<4} {result['median_step_s']:>8.3f} "
        f"{result['tokens_per_s']:>10.0f} {result['model_tflops']:>8.2f}  "
        + ", ".join(f"{k} {v:.2f}" for k, v in mem.items())
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
