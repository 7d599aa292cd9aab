"""Cached decoding against the released code's cache of hidden states ("mems"), on large activations.

The released CogView recomputes K/V over every cached position at each step, through a
LayerNorm that first divides by one max|x| / 8 over all of them (SPEC 1.3-1.4, 3.1): the
eps of that LayerNorm then moves with the largest activation in the cache. A plain KV cache keeps
each position's K/V at its own step's scale. This measures, on a tiny model of the original
layout whose weights are scaled so the hidden states reach the hundreds (as in the 4B model;
optionally with one "massive activation" at the first position, as large models have), the max
logit difference over the decode steps between:

- ``kv``: a plain :class:`~cogview.model.KVCache` (what converted models decoded with before);
- ``exact``: :class:`~cogview.model.original_cache.OriginalMemsCache` (what they decode with now);
- ``full``: a full forward at every step (one scale over the whole sequence, no cache),

and the reference: the released algorithm in plain torch over the original-named weights
(``tests/convert/original_files.reference_mems_logits``), in fp64 for the fp64 rows, else fp32.

    python benchmarks/original_cache.py [--steps 32] [--gain 40] [--outlier 8]

Prints a table and writes benchmarks/results/original_cache.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from cogview.model import CogViewTransformer, KVCache, TransformerConfig, original_key_map

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "convert"))
from original_files import reference_mems_logits  # noqa: E402  (the test suite's reference, one copy)


def scaled_model(dim: int, layers: int, gain: float, outlier: float, seed: int) -> CogViewTransformer:
    """A random original-layout model whose residual stream reaches the hundreds.

    The Sandwich-LN output norms' gains set how much each branch adds to the trunk (``gain``);
    the embedding of token 0 times ``outlier`` puts one much larger activation at the position
    holding it (the first one here).
    """
    torch.manual_seed(seed)
    config = TransformerConfig(
        vocab_size=512, dim=dim, n_layers=layers, n_heads=4, max_seq_len=256, ln_input_scaling="original"
    )
    model = CogViewTransformer(config).eval()
    with torch.no_grad():
        model.tok_embeddings.weight.mul_(50.0)  # embeddings of order 1, as trained models have
        model.pos_embeddings.weight.mul_(25.0)
        model.tok_embeddings.weight[0].mul_(outlier)
        for layer in model.layers:
            for norm in (layer.attention_out_norm, layer.ffn_out_norm):
                norm.weight.mul_(gain)
                norm.bias.normal_(0.0, 0.1 * gain)
    return model


def layer_input_max(model: CogViewTransformer, tokens: torch.Tensor) -> float:
    seen: list[float] = []
    hooks = [
        layer.register_forward_pre_hook(lambda _m, a: seen.append(float(a[0].abs().max())))
        for layer in model.layers
    ]
    with torch.no_grad():
        model(tokens, torch.arange(tokens.shape[1]))
    for h in hooks:
        h.remove()
    return max(seen)


@torch.no_grad()
def cached(model: CogViewTransformer, tokens: torch.Tensor, prompt: int, cache: KVCache) -> torch.Tensor:
    """``[B, steps + 1, V]`` last logits of the prompt, then of each token fed alone."""
    out = [model(tokens[:, :prompt], torch.arange(prompt), cache, kv_len=prompt)[:, -1]]
    for t in range(prompt, tokens.shape[1]):
        out.append(model(tokens[:, t : t + 1], torch.tensor([t]), cache, kv_len=t + 1)[:, -1])
    return torch.stack(out, dim=1).double()


@torch.no_grad()
def full(model: CogViewTransformer, tokens: torch.Tensor, prompt: int) -> torch.Tensor:
    out = [model(tokens[:, : t + 1], torch.arange(t + 1))[:, -1] for t in range(prompt - 1, tokens.shape[1])]
    return torch.stack(out, dim=1).double()


def measure(args: argparse.Namespace, outlier: float, batch: int, dtype: torch.dtype) -> dict:
    model = scaled_model(args.dim, args.layers, args.gain, outlier, args.seed)
    names = original_key_map(model.config.n_layers)
    state = {names[k]: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(args.seed)
    tokens = torch.randint(1, 512, (batch, args.prompt + args.steps), generator=g)
    tokens[:, 0] = 0  # the outlier token opens every prompt (as [ROI1] / [BASE] do)
    tokens[:, : args.prompt] = tokens[:1, : args.prompt]  # one prompt, rows differ after it
    ref_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    reference = reference_mems_logits(state, tokens, args.prompt, model.config.n_heads, ref_dtype)
    model = model.to(dtype)
    model.original_mems = True  # model.new_cache() -> OriginalMemsCache
    c = model.config
    plain = KVCache(c.n_layers, batch, c.n_heads, tokens.shape[1], c.head_dim, dtype=dtype)
    paths = {
        "kv": cached(model, tokens, args.prompt, plain),
        "exact": cached(model, tokens, args.prompt, model.new_cache(batch, tokens.shape[1])),  # the fix
        "full": full(model, tokens, args.prompt),
    }
    row = {
        "dtype": str(dtype).removeprefix("torch."),
        "outlier": outlier,
        "batch": batch,
        "max_abs_x": layer_input_max(model.float(), tokens),
        "max_abs_logit": float(reference.abs().max()),
    }
    for name, logits in paths.items():
        diff = (logits - reference.double()).abs()
        row[f"{name}_max_diff"] = float(diff.max())
        row[f"{name}_argmax_changes"] = int((logits.argmax(-1) != reference.argmax(-1)).sum())
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=32, help="decode steps after the prompt (default 32)")
    p.add_argument("--prompt", type=int, default=16, help="prompt tokens (default 16)")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--gain", type=float, default=40.0, help="Sandwich-LN output gain (default 40)")
    p.add_argument("--outlier", type=float, default=8.0, help="first-token embedding factor (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "original_cache.json"))
    args = p.parse_args(argv)
    started = time.time()
    rows = [
        measure(args, outlier, batch, dtype)
        for dtype in (torch.float64, torch.float32, torch.float16)
        for outlier in (1.0, args.outlier)
        for batch in (1, 4)
    ]
    head = f"{'dtype':8} {'outlier':>7} {'B':>2} {'max|x|':>8} {'max|logit|':>10} {'kv diff':>9} {'exact diff':>10} {'full diff':>9}  argmax changes kv/exact/full"
    print(head)
    for r in rows:
        print(
            f"{r['dtype']:8} {r['outlier']:7g} {r['batch']:2d} {r['max_abs_x']:8.1f} {r['max_abs_logit']:10.2f} "
            f"{r['kv_max_diff']:9.2e} {r['exact_max_diff']:10.2e} {r['full_max_diff']:9.2e}  "
            f"{r['kv_argmax_changes']}/{r['exact_argmax_changes']}/{r['full_argmax_changes']}"
        )
    record = {
        "command": "python benchmarks/original_cache.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "reference": "released filling_sequence mems semantics in plain torch (tests/convert/original_files.py); fp64 for fp64 rows, else fp32",
        "rows": rows,
        "seconds": round(time.time() - started, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
