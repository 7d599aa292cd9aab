"""Training throughput: tokens/s and model FLOP utilisation (MFU) against this machine's matmul rate.

Runs the real training step (:func:`cogview.training.step.train_step`: forward, fp32 loss,
backward, clipping, fused AdamW) on real token rows of the config's shape, and counts
``6 x N x tokens`` FLOPs per step, where N is the number of parameters that take part in matrix
products (all but the position table, a lookup; the tied word table counts once, as the output
GEMM). MFU is that rate divided by the machine's fp32 matmul rate, measured in the same process
with the same threads, interleaved with the training rounds (other jobs may share the CPU, so
each round is compared with the rate measured just before and after it; the median over rounds
is reported, and the best round as the closest to "one job at a time"). The baseline is the
faster of a 1024^3 GEMM and the model's own largest GEMM (tokens x dim x 4dim).

Rows are made by ``cogview prepare`` from the shapes data set with the shipped image tokenizer if
there is one, else a random VQ-VAE of ``configs/tokenizer-small.json`` (same 16x16 codes, K=512:
throughput depends only on shapes), unless ``--data`` names shards.

    .venv/bin/python benchmarks/train_throughput.py --also-dropout 0.1   # small + tiny, 1 and 2 threads
    .venv/bin/python benchmarks/train_throughput.py --configs configs/small.json --threads 2

Writes benchmarks/results/train_throughput.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from cogview.data.prepare import prepare
from cogview.data.shards import TokenShards
from cogview.model import CogViewTransformer
from cogview.tokenizers.image import DEFAULT_PATH, ImageTokenizer
from cogview.tokenizers.text import TextTokenizer
from cogview.tokenizers.vqvae import VQVAE, VQVAEConfig
from cogview.training.batches import BatchSource
from cogview.training.config import TrainConfig, apply_overrides
from cogview.training.optim import param_groups
from cogview.training.step import train_step

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "train_throughput.json"


def matmul_gflops(m: int, k: int, n: int, seconds: float = 0.4) -> float:
    """Best fp32 GEMM rate over a few short repetitions (GFLOP/s)."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    a @ b
    best = 0.0
    for _ in range(3):
        count, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds / 3 or count == 0:
            a @ b
            count += 1
        best = max(best, 2 * m * k * n * count / elapsed / 1e9)
    return best


def make_shards(directory: Path, examples: int) -> Path:
    if (DEFAULT_PATH / "config.json").is_file():
        image_tokenizer = ImageTokenizer.from_pretrained()
    else:
        torch.manual_seed(0)
        model = json.loads((ROOT / "configs" / "tokenizer-small.json").read_text())["model"]
        image_tokenizer = ImageTokenizer(VQVAE(VQVAEConfig.from_dict(model)))
    out = directory / "shapes"
    prepare(
        "shapes",
        out,
        image_tokenizer=image_tokenizer,
        text_tokenizer=TextTokenizer.from_pretrained(),
        max_examples=examples,
        progress=False,
    )
    return out


def measure(
    cfg: TrainConfig, shards: TokenShards, threads: int, rounds: int, round_seconds: float
) -> dict[str, Any]:
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    model = CogViewTransformer(cfg.transformer_config(shards.vocab.size, shards.seq_len)).train()
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=True
    )
    source = BatchSource(shards, cfg)
    n_matmul = model.num_parameters() - model.pos_embeddings.weight.numel()
    c = model.config
    T = shards.seq_len - 1
    attention_flops_per_token = 12 * c.n_layers * T * c.dim  # PaLM's count (full T x T scores)

    def step(s: int) -> int:
        return train_step(
            model,
            optimizer,
            source.step_batches(s),
            text_loss_weight=cfg.text_loss_weight,
            grad_clip=cfg.grad_clip,
        ).tokens

    step(0)  # warm-up: allocations, first-call overheads
    s = 1
    per_round = []

    def baseline() -> float:
        return max(matmul_gflops(1024, 1024, 1024), matmul_gflops(cfg.batch_size * T, c.dim, c.ffn_dim))

    for _ in range(rounds):
        before = baseline()
        tokens, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < round_seconds or tokens == 0:
            tokens += step(s)
            s += 1
        base = (before + baseline()) / 2  # the machine's rate around this round
        tok_s = tokens / elapsed
        gflops = 6 * n_matmul * tok_s / 1e9
        per_round.append(
            {
                "tokens_per_s": tok_s,
                "gflops": gflops,
                "gflops_with_attention": (6 * n_matmul + attention_flops_per_token) * tok_s / 1e9,
                "matmul_gflops": base,
                "mfu": gflops / base,
            }
        )

    def med(key: str) -> float:
        return statistics.median(r[key] for r in per_round)

    return {
        "threads": threads,
        "parameters": model.num_parameters(),
        "matmul_parameters": n_matmul,
        "tokens_per_step": cfg.sequences_per_step * T,
        "steps": s - 1,
        "tokens_per_s": med("tokens_per_s"),
        "gflops": med("gflops"),
        "matmul_gflops": med("matmul_gflops"),
        "mfu": statistics.median(r["mfu"] for r in per_round),
        "mfu_best_round": max(r["mfu"] for r in per_round),
        "mfu_with_attention": statistics.median(
            r["gflops_with_attention"] / r["matmul_gflops"] for r in per_round
        ),
        "rounds": per_round,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="configs/small.json,configs/tiny.json")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per step (MFU is flat above ~8)")
    parser.add_argument(
        "--also-dropout", type=float, help="also measure each config with this model.dropout (e.g. 0.1)"
    )
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--round-seconds", type=float, default=6.0)
    parser.add_argument("--data", help="token shards (default: prepare 256 shapes examples in a temp folder)")
    parser.add_argument("--out", default=str(RESULTS))
    ns = parser.parse_args()
    load_before = os.getloadavg()
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = ns.data or str(make_shards(Path(tmp), 256))
        shards = TokenShards.open(data)
        for path in ns.configs.split(","):
            raw = json.loads((ROOT / path).read_text())
            variants = [("as configured", {})]
            if ns.also_dropout is not None:
                variants.append((f"dropout {ns.also_dropout:g}", {"model.dropout": ns.also_dropout}))
            for label, extra in variants:
                overrides = {"data": data, "batch_size": ns.batch_size, "grad_accum": 1, **extra}
                cfg = TrainConfig.from_dict(apply_overrides(raw, overrides))
                for threads in (int(t) for t in ns.threads.split(",")):
                    row = measure(cfg, shards, threads, ns.rounds, ns.round_seconds)
                    row.update(
                        config=Path(path).stem,
                        variant=label,
                        dropout=cfg.transformer_config(shards.vocab.size, shards.seq_len).dropout,
                    )
                    rows.append(row)
                    print(
                        f"{row['config']:>6} {label:<13} threads {threads}: {row['tokens_per_s']:8.0f} tok/s "
                        f"{row['gflops']:6.1f} GFLOP/s  matmul {row['matmul_gflops']:6.1f}  MFU {row['mfu']:.0%} "
                        f"(best round {row['mfu_best_round']:.0%})",
                        flush=True,
                    )
    print(
        f"\n{'config':<7}{'variant':<15}{'params':>10}{'threads':>8}{'tok/s':>9}{'GFLOP/s':>9}{'matmul':>8}{'MFU':>6}{'+attn':>7}"
    )
    for r in rows:
        print(
            f"{r['config']:<7}{r['variant']:<15}{r['parameters'] / 1e6:>9.2f}M{r['threads']:>8}{r['tokens_per_s']:>9.0f}"
            f"{r['gflops']:>9.1f}{r['matmul_gflops']:>8.1f}{r['mfu']:>6.0%}{r['mfu_best_round']:>6.0%}"
            f"{r['mfu_with_attention']:>7.0%}"
        )
    result = {
        "benchmark": "train_throughput",
        "flops": "6 x matmul parameters (all but the position table) x tokens; +attn adds 12 x layers x T x dim per token",
        "baseline": "max(fp32 1024^3 GEMM, model-shaped tokens x dim x 4dim GEMM), same threads, mean of the "
        "rates measured just before and just after each round; MFU = median over rounds (best round also given)",
        "seq_len": shards.seq_len,
        "batch_size": ns.batch_size,
        "precision": "fp32",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        "seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    out = Path(ns.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
