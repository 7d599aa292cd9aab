"""CogView's stability claim at toy scale: deep narrow models in fp16, with and without its tricks.

The paper (Sec. 2.4; SPEC 1.3-1.4) says that in fp16 ("O2": weights, activations and softmax in
half precision, fp32 master weights) pre-LN transformers overflow in their deep layers, and that
Sandwich-LN plus PB-relax (attention computed as softmax((Q/(a*sqrt d)) K^T - max) * a, and
LayerNorm of x / max|x|) remove the overflow. This script trains the same tiny deep model on real
token rows (shapes captions + codes from a random tiny VQ-VAE) at an aggressive learning rate in
four variants over a few seeds, counts the runs whose forward pass hit inf/NaN, and reports their
final losses. An fp32 control run of the plain variant shows the failures come from the precision.

How fp16 is run on a CPU (checked at start): the model is cast to fp16 (``model.half()``) and
every elementwise op, LayerNorm and softmax runs natively in fp16. Matrix products take fp16
inputs and give fp16 outputs with fp32 accumulation (what tensor cores do); the CPU's native fp16
GEMM (no AVX512-FP16 here) gives the same results but is ~35-50x slower (about 1.5 against 50-75
GFLOP/s; both rates are measured at start and stored), so they are computed as fp32 GEMMs of the fp16 inputs and
rounded back. Standard attention is written out as the original's (fp16 scores Q K^T, then
/sqrt(d), fp16 softmax) instead of PyTorch's fused kernel, whose fp32 internals would hide the
overflow. AdamW steps fp32 master weights; a dynamic loss scale (DeepSpeed-style: halve and skip
on gradient overflow, double after a window of good steps) handles gradients. A step whose
*forward* loss is inf/NaN is an overflow (no loss scale can fix it): it is skipped and counted,
and a run stops after ``--max-bad`` of them in a row.

    .venv/bin/python benchmarks/stability.py            # ~5 minutes on 2 busy cores
    .venv/bin/python benchmarks/stability.py --steps 60 --seeds 1   # quick look

Writes benchmarks/results/stability.json and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing as mp
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from cogview.data.prepare import prepare
from cogview.data.shards import TokenShards
from cogview.model import CogViewTransformer, TransformerConfig
from cogview.tokenizers.image import ImageTokenizer
from cogview.tokenizers.text import TextTokenizer
from cogview.tokenizers.vqvae import VQVAE, VQVAE_PRESETS
from cogview.training.batches import make_batch
from cogview.training.objective import next_token_loss
from cogview.training.optim import param_groups

RESULTS = Path(__file__).resolve().parent / "results" / "stability.json"
# name -> (sandwich_ln, pb_relax): PB-relax = alpha-attention (alpha 32) + LN(x / max|x|).
VARIANTS = {
    "pre-LN": (False, False),
    "Sandwich-LN": (True, False),
    "PB-relax": (False, True),
    "Sandwich-LN + PB-relax": (True, True),
}
# Names of the torch functions where an overflow first shows, as the paper names the bottlenecks.
_SITES = {
    "__add__": "residual stream (x + branch)",
    "add": "residual stream (x + branch)",
    "linear": "linear layer output",
    "__matmul__": "attention scores (PB-relax matmul)",
    "matmul": "attention scores (PB-relax matmul)",
}
_GEMMS = {F.linear, torch.matmul, torch.bmm, torch.Tensor.matmul, torch.Tensor.__matmul__}


class FP16Arithmetic(TorchFunctionMode):
    """fp16 GEMMs with fp32 accumulation, and the original's explicit fp16 attention (see module doc).

    With ``detect=True`` it records the first op whose output is inf/NaN although its inputs are
    finite: where the forward pass overflowed.
    """

    def __init__(self, detect: bool = False) -> None:
        super().__init__()
        self.detect, self.site = detect, None

    def _check(self, name: str, inputs: Any, output: Any) -> None:
        if (
            self.detect
            and self.site is None
            and _nonfinite(output)
            and not any(_nonfinite(a) for a in inputs)
        ):
            self.site = name

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        half = [isinstance(a, torch.Tensor) and a.dtype == torch.float16 for a in args]
        if func in _GEMMS and any(half):
            up = [a.float() if h else a for a, h in zip(args, half, strict=True)]
            out = func(*up, **kwargs).half()
        elif func is F.scaled_dot_product_attention and half[0]:
            q, k, v = args[:3]  # [B, H, T, D]
            T = q.shape[-2]
            scores = (q.float() @ k.float().transpose(-2, -1)).half()  # [B, H, T, T] fp16: may overflow
            self._check("attention scores Q K^T", (q, k), scores)
            scores = scores * (1.0 / math.sqrt(q.shape[-1]))
            scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
            probs = torch.softmax(scores, dim=-1)  # fp16 in, fp16 out
            return (probs.float() @ v.float()).half()
        else:
            out = func(*args, **kwargs)
        name = getattr(func, "__name__", str(func))
        if name != "masked_fill":  # the causal mask writes -inf on purpose
            self._check(name, args, out)
        return out


def _nonfinite(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.is_floating_point() and not bool(torch.isfinite(x).all())


def check_fp16_matmul() -> dict[str, Any]:
    """Native fp16 GEMM works on this CPU and agrees with the emulation; how fast each is."""
    g = torch.Generator().manual_seed(0)
    out: dict[str, Any] = {}
    for m, k, n in ((128, 64, 256), (512, 512, 512)):  # this model's FFN GEMM, and a larger one
        a = torch.randn(m, k, generator=g).half()
        b = torch.randn(k, n, generator=g).half()
        native, emulated = a @ b, (a.float() @ b.float()).half()
        rel = float((native.float() - emulated.float()).abs().max() / emulated.float().abs().max())
        if not math.isfinite(rel) or rel > 1e-2:
            raise RuntimeError(f"native fp16 matmul disagrees with fp32-accumulated fp16 ({rel:.2e})")
        rates = {}
        for name, fn in (
            ("native", lambda a=a, b=b: a @ b),
            ("emulated", lambda a=a, b=b: (a.float() @ b.float()).half()),
        ):
            fn()
            count, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < 0.3:
                fn()
                count += 1
            rates[name] = 2 * m * k * n * count / elapsed / 1e9
        out[f"{m}x{k}x{n}"] = {
            "max_rel_diff": rel,
            "native_fp16_gflops": rates["native"],
            "emulated_gflops": rates["emulated"],
        }
    out["fp16_overflow_gives_inf"] = bool(torch.isinf(torch.tensor([300.0]).half() ** 2).item())
    return out


def make_shards(directory: Path) -> Path:
    torch.manual_seed(0)
    out = directory / "shapes"
    prepare(
        "shapes",
        out,
        image_tokenizer=ImageTokenizer(VQVAE(VQVAE_PRESETS["tiny"])),
        text_tokenizer=TextTokenizer.from_pretrained(),
        max_examples=1024,
        text_budget=16,
        progress=False,
    )
    return out


def run(job: dict[str, Any]) -> dict[str, Any]:
    """One training run; returns counts of overflow steps, the loss curve's end and the peak activation."""
    torch.set_num_threads(1)
    args, variant, seed, precision = job["args"], job["variant"], job["seed"], job["precision"]
    sandwich, pb_relax = VARIANTS[variant]
    shards = TokenShards.open(job["data"])
    config = TransformerConfig(
        vocab_size=shards.vocab.size,
        dim=args["dim"],
        n_layers=args["layers"],
        n_heads=args["dim"] // 16,
        max_seq_len=args["seq_len"],
        sandwich_ln=sandwich,
        pb_relax_alpha=32.0 if pb_relax else None,
        ln_input_scaling="max" if pb_relax else "none",
    )
    torch.manual_seed(seed)
    master = CogViewTransformer(config).train()  # fp32 master weights
    model = CogViewTransformer(config).train()
    model.load_state_dict(master.state_dict())
    if precision == "fp16":
        model.half()
    optimizer = torch.optim.AdamW(
        param_groups(master, args["weight_decay"]), lr=args["lr"], betas=(0.9, 0.95), eps=1e-8
    )
    peak = {"value": 0.0}

    def track(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
        value = float(output.detach().abs().max())
        peak["value"] = max(peak["value"], math.inf if math.isnan(value) else value)

    for block in model.layers:
        block.register_forward_hook(track)
    scale, good_steps = 2.0**16 if precision == "fp16" else 1.0, 0
    g = torch.Generator().manual_seed(10_000 + seed)
    losses, overflow_steps, scale_skips, in_a_row, first_overflow, site = [], 0, 0, 0, None, None
    started = time.perf_counter()
    step = 0
    for step in range(1, args["steps"] + 1):
        lr = args["lr"] * min(1.0, step / args["warmup"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        rows = torch.from_numpy(
            shards.rows(torch.randint(0, len(shards), (args["batch"],), generator=g).numpy())
        )
        batch = make_batch(rows[:, : args["seq_len"] + 1], shards.vocab)
        model.zero_grad(set_to_none=True)
        with FP16Arithmetic() if precision == "fp16" else contextlib.nullcontext():
            logits = model(batch.inputs, batch.positions)  # [B, T, V]
            loss = next_token_loss(logits, batch.targets, batch.loss_mask, batch.text_mask).loss
            if not torch.isfinite(loss):
                if first_overflow is None and precision == "fp16":  # replay the forward to find the op
                    with torch.no_grad(), FP16Arithmetic(detect=True) as probe:
                        model(batch.inputs, batch.positions)
                    site = _SITES.get(probe.site, probe.site)
                overflow_steps += 1
                in_a_row += 1
                first_overflow = first_overflow or step
                if in_a_row >= args["max_bad"]:
                    break
                continue
            in_a_row = 0
            (loss * scale).backward()
        grads = [p.grad.float() / scale if p.grad is not None else None for p in model.parameters()]
        if not all(gr is None or torch.isfinite(gr).all() for gr in grads):
            scale_skips += 1
            scale, good_steps = max(scale / 2, 1.0), 0  # DeepSpeed: min loss scale 1
            continue
        for p, gr in zip(master.parameters(), grads, strict=True):
            p.grad = gr
        torch.nn.utils.clip_grad_norm_(master.parameters(), args["grad_clip"])
        optimizer.step()
        with torch.no_grad():
            for p, q in zip(model.parameters(), master.parameters(), strict=True):
                p.copy_(q)  # rounds to fp16 in the half model
        losses.append(float(loss.detach()))
        good_steps += 1
        if precision == "fp16" and good_steps % args["scale_window"] == 0:
            scale *= 2
    tail = losses[-10:]
    return {
        "variant": variant,
        "precision": precision,
        "seed": seed,
        "steps_run": step,
        "overflow_steps": overflow_steps,
        "first_overflow_step": first_overflow,
        "first_overflow_site": site,
        "diverged": in_a_row >= args["max_bad"],
        "loss_scale_skips": scale_skips,
        "final_loss": sum(tail) / len(tail) if tail else None,
        "peak_activation": peak["value"],
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--grad-clip", type=float, default=1.0)
    parser.add_argument("--scale-window", type=int, default=100)
    parser.add_argument("--max-bad", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="parallel runs, one thread each")
    parser.add_argument(
        "--data", help="token shards to use (default: prepare 2048 shapes rows in a temp folder)"
    )
    parser.add_argument("--out", default=str(RESULTS))
    ns = parser.parse_args()
    args = {k: v for k, v in vars(ns).items() if k not in ("data", "out", "seeds", "workers")}
    check = check_fp16_matmul()
    for shape, c in check.items():
        if isinstance(c, dict):
            print(
                f"fp16 GEMM {shape} on this CPU: works (max rel. diff to fp32-accumulated {c['max_rel_diff']:.1e}); "
                f"native {c['native_fp16_gflops']:.1f} GFLOP/s, emulated {c['emulated_gflops']:.1f} GFLOP/s"
            )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data = ns.data or str(make_shards(Path(tmp)))
        jobs = [
            {"args": args, "variant": v, "seed": s, "precision": "fp16", "data": data}
            for s in range(ns.seeds)
            for v in VARIANTS
        ]
        jobs += [
            {"args": args, "variant": "pre-LN", "seed": s, "precision": "fp32", "data": data}
            for s in range(ns.seeds)
        ]
        with mp.get_context("spawn").Pool(ns.workers) as pool:
            runs = pool.map(run, jobs, chunksize=1)
    total = time.perf_counter() - started

    summary = []
    print(
        f"\n{args['layers']} layers x dim {args['dim']}, seq {args['seq_len']}, batch {args['batch']}, "
        f"{args['steps']} steps at lr {args['lr']} (AdamW, no weight decay), {ns.seeds} seeds"
    )
    print(
        f"{'variant':<24} {'prec':<5} {'runs with inf/NaN':>17} {'first inf/NaN at step':>22} "
        f"{'final loss':>18} {'peak |x|':>9}  where it overflowed first"
    )
    for precision, names in (("fp16", list(VARIANTS)), ("fp32", ["pre-LN"])):
        for name in names:
            rs = [r for r in runs if r["variant"] == name and r["precision"] == precision]
            bad = sum(r["overflow_steps"] > 0 for r in rs)
            finals = [r["final_loss"] for r in rs]
            shown = ", ".join(
                "-" if f is None or (r["diverged"]) else f"{f:.2f}" for f, r in zip(finals, rs, strict=True)
            )
            peak = max(r["peak_activation"] for r in rs)
            summary.append(
                {
                    "variant": name,
                    "precision": precision,
                    "runs": len(rs),
                    "runs_with_overflow": bad,
                    "runs_diverged": sum(r["diverged"] for r in rs),
                    "overflow_steps": [r["overflow_steps"] for r in rs],
                    "first_overflow_step": [r["first_overflow_step"] for r in rs],
                    "first_overflow_site": [r["first_overflow_site"] for r in rs],
                    "final_losses": finals,
                    "peak_activation": peak,
                }
            )
            first = ", ".join(str(r["first_overflow_step"] or "-") for r in rs)
            sites = sorted({r["first_overflow_site"] for r in rs if r["first_overflow_site"]})
            print(
                f"{name:<24} {precision:<5} {f'{bad}/{len(rs)}':>17} {first:>22} {shown:>18} {peak:>9.3g}"
                f"  {'; '.join(sites)}"
            )
    print(
        f"\n{len(runs)} runs in {total:.0f} s ('-': stopped after {args['max_bad']} overflow steps in a row)"
    )
    result = {
        "benchmark": "stability",
        "what": "runs whose fp16 forward pass hit inf/NaN, per variant (CogView Sec. 2.4)",
        "precision_note": "fp16 O2: model.half(), fp32 master weights + dynamic loss scale; GEMMs fp16 in/out "
        "with fp32 accumulation (emulated: the native CPU fp16 GEMM is much slower); attention scores and "
        "softmax in fp16 as the original; fp32 control = same recipe in fp32",
        "settings": args,
        "seeds": ns.seeds,
        "fp16_matmul_check": check,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch": torch.__version__,
        },
        "seconds": round(total, 1),
        "summary": summary,
        "runs": runs,
    }
    out = Path(ns.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
