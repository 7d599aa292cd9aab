"""Generation speed on CPU: seconds per image, decode throughput against Hugging Face, memory floor.

Measures, in one process and with the same thread count throughout:
- seconds per image of the default model (the shipped one, or random weights of the default shape
  when none is installed) through ``CogViewPipeline.generate`` at batch 1 and 16: with the
  model's defaults (post-selection of 2 candidates for the shipped one), one sample per image,
  and one sample without classifier-free guidance;
- decode throughput (image tokens/s, prefill included) of our sampler against
  ``transformers.GPT2LMHeadModel.generate`` (use_cache=True, top-k sampling) with the same
  layers, width, heads, MLP width, vocabulary and sequence lengths, random weights, fp32, at
  batch 1 and 16, runs interleaved and repeated (the median is reported; CPUs here are shared);
- the same decode with the step compiled (``DecodeStep(compile=True)``: inductor, frozen weights,
  autotuned C++ GEMMs on a CPU), its first run (compilation included) reported on its own;
- peak memory of decoding, ours against HF: the rise of the process's peak resident set over
  one decode (``/proc/self/clear_refs`` resets the peak; Linux only, else not reported);
- our batch-1 decode time per token against the floor set by reading every weight once per
  token at the measured copy bandwidth (a copy's read + write bytes per second);
- float32 against bfloat16 for our sampler, with a quality proxy (KL and top-1 agreement of the
  next-code distributions along one fp32 sample).

Run: .venv/bin/pip install "transformers>=4.40" torch==2.13.0   (once; the `bench` extra)
     .venv/bin/python benchmarks/generate_speed.py [--threads 1] [--repeats 3] [--out benchmarks/results/generate_speed.json]
         [--before an/earlier/result.json]
Decode times are reported as wall-clock and as CPU seconds of the one thread (steadier when other
processes share the cores); the compiled rows compile once per batch size (minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import gc
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cogview.generation.decode import DecodeStep, prefill, sample_tokens
from cogview.generation.sampling import SamplingConfig
from cogview.model import PRESETS, CogViewTransformer
from cogview.pipeline import CogViewPipeline, default_model_path
from cogview.tokenizers.image import ImageTokenizer
from cogview.tokenizers.text import TextTokenizer
from cogview.tokenizers.vocab import default_vocab
from cogview.tokenizers.vqvae import VQVAE, VQVAEConfig

PROMPT = "a red circle on the left"
TOP_K = 100


CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def load_pipeline(path: str | None = None) -> tuple[CogViewPipeline, str]:
    """The model folder at ``path``; else the shipped default model, or random weights of its shape
    (``configs/default-t2i.json``, ``configs/tokenizer-small.json``) with the shipped tokenizers
    where present."""
    if path is not None:
        return CogViewPipeline.from_pretrained(path), f"model folder {path}"
    try:
        return CogViewPipeline.from_pretrained(), "shipped default model"
    except ValueError:
        pass
    text = TextTokenizer.from_pretrained()
    image_dir = default_model_path() / "image_tokenizer"
    if image_dir.is_dir():
        image, image_source = ImageTokenizer.from_pretrained(image_dir), "shipped image tokenizer"
    else:
        torch.manual_seed(0)
        vq = json.loads((CONFIGS / "tokenizer-small.json").read_text())["model"]
        image, image_source = (
            ImageTokenizer(VQVAE(VQVAEConfig.from_dict(vq))),
            "random VQ-VAE of the default shape",
        )
    vocab = default_vocab(image, text)
    model_cfg = dict(json.loads((CONFIGS / "default-t2i.json").read_text())["model"])
    preset = PRESETS[model_cfg.pop("preset", "small")]
    config = dataclasses.replace(preset, **{**model_cfg, "vocab_size": vocab.size, "dropout": 0.0})
    torch.manual_seed(0)
    model = CogViewTransformer(config).eval()
    return CogViewPipeline(
        model, text, image, vocab
    ), f"random transformer of the default shape, {image_source}"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def copy_bandwidth(n_bytes: int = 256 * 2**20, repeats: int = 15) -> float:
    """Best (read + written) bytes per second of a large tensor copy."""
    src = torch.ones(n_bytes // 4)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * n_bytes / best


def weight_bytes(model: CogViewTransformer) -> int:
    """Bytes a decode step reads: every parameter once (the tied word table as the output layer)
    except the position table, of which it reads one row."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    pos = model.pos_embeddings.weight
    return total - (pos.shape[0] - 1) * pos.shape[1] * pos.element_size()


def hf_model(config: Any) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_config = GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.max_seq_len,
        n_embd=config.dim,
        n_layer=config.n_layers,
        n_head=config.n_heads,
        n_inner=config.ffn_dim,
        activation_function="gelu_new",  # tanh GELU, as ours
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=config.norm_eps,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    return GPT2LMHeadModel(hf_config).eval()


def ours_decode(
    model: CogViewTransformer,
    prompt: torch.Tensor,
    batch: int,
    steps: int,
    allowed: range,
    step: DecodeStep | None = None,
) -> Callable[[], None]:
    """The engine as the text-to-image job runs it; ids collected on the device, copied once."""
    config = SamplingConfig(top_k=TOP_K)

    def run() -> None:
        state = prefill(model, [prompt], steps)
        uniforms = torch.rand(batch, steps, generator=torch.Generator().manual_seed(0))
        out = torch.empty(batch, steps, dtype=torch.long)
        for i, ids in enumerate(sample_tokens(model, state, uniforms, config, allowed, step)):
            out[:, i] = ids
        out.tolist()

    return run


def hf_decode(model: Any, prompt: torch.Tensor, batch: int, steps: int) -> Callable[[], None]:
    ids = prompt[None].expand(batch, -1).contiguous()

    def run() -> None:
        with torch.inference_mode():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                top_k=TOP_K,
                max_new_tokens=steps,
                min_new_tokens=steps,
                use_cache=True,
                pad_token_id=0,
            )
        assert out.shape[1] == ids.shape[1] + steps

    return run


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def peak_rss_rise(fn: Callable[[], None]) -> int | None:
    """Bytes by which ``fn`` raises the process's peak resident set (None where Linux's reset is missing).

    Freed heap is first handed back to the OS (``malloc_trim``), so memory left over from earlier
    runs does not hide this one's allocations.
    """
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")  # peak resident set := current
        before = _status_kib("VmRSS")
        fn()
        return (_status_kib("VmHWM") - before) * 1024
    except (OSError, KeyError):
        return None


def ratio(times: dict[str, list[float]], a: str, b: str) -> float:
    """Median seconds of ``a`` over those of ``b``: how many times faster ``b`` ran."""
    return round(statistics.median(times[a]) / statistics.median(times[b]), 2)


def _mb(n: int | None) -> float | None:
    return None if n is None else round(n / 1e6, 1)


def timed(fn: Callable[[], None]) -> tuple[float, float]:
    """Wall-clock and CPU seconds of ``fn``. On a shared machine the CPU seconds (one thread) are
    the steadier measure: they leave out the time the scheduler gave to other processes."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def interleaved(
    runs: dict[str, Callable[[], None]], repeats: int
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, float]]:
    """Wall-clock and CPU seconds per run of each entry, alternating entries so that load changes
    hit all of them, and the wall seconds of each entry's first (warm-up) run: allocator and oneDNN
    primitive caches, and for a compiled step its compilation."""
    first = {name: timed(fn)[0] for name, fn in runs.items()}
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            w, c = timed(fn)
            wall[name].append(w)
            cpu[name].append(c)
    return wall, cpu, first


@torch.inference_mode()
def bf16_quality(
    model: CogViewTransformer, prompt: torch.Tensor, steps: int, allowed: range
) -> dict[str, float]:
    """KL(fp32 || bf16) and top-1 agreement of next-code distributions along one fp32 sample."""
    tokens = torch.stack(
        list(
            sample_tokens(
                model,
                prefill(model, [prompt], steps),
                torch.rand(1, steps, generator=torch.Generator().manual_seed(1)),
                SamplingConfig(),
                allowed,
            )
        ),
        dim=1,
    )  # [1, steps]
    seq = torch.cat([prompt[None], tokens], dim=1)[:, :-1]  # [1, T]
    positions = torch.arange(seq.shape[1])
    lo, hi = allowed.start, allowed.stop
    p32 = model(seq, positions)[0, len(prompt) - 1 :, lo:hi].float().log_softmax(-1)  # [steps, V']
    p16 = model.to(torch.bfloat16)(seq, positions)[0, len(prompt) - 1 :, lo:hi].float().log_softmax(-1)
    model.to(torch.float32)
    kl = (p32.exp() * (p32 - p16)).sum(-1)  # [steps]
    return {
        "mean_kl_nats": float(kl.mean()),
        "max_kl_nats": float(kl.max()),
        "top1_agreement": float((p32.argmax(-1) == p16.argmax(-1)).float().mean()),
        "fp32_mean_entropy_nats": float(-(p32.exp() * p32).sum(-1).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: shared 2-core CPUs)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each decode setting (median)")
    parser.add_argument("--batches", default="1,16", help="batch sizes (default 1,16)")
    parser.add_argument("--model", help="model folder to measure (default: the shipped one)")
    parser.add_argument("--out", default="benchmarks/results/generate_speed.json")
    parser.add_argument("--note", default="", help="what else ran on the machine, kept in the JSON beside the load average")
    parser.add_argument(
        "--before", help="an earlier result file to keep in the new one under 'before' (e.g. the file --out replaces)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    load = [round(x, 2) for x in os.getloadavg()]
    batches = [int(b) for b in args.batches.split(",")]

    pipe, source = load_pipeline(args.model)
    model, t2i = pipe.transformer, pipe.text_to_image
    config = model.config
    steps, allowed = t2i.num_tokens, pipe.vocab.image_range
    prompt, _ = t2i.prompt_tokens(PROMPT)
    print(
        f"model: {source}; {model.num_parameters():,} parameters; prompt {len(prompt)} tokens + {steps} codes"
    )

    bandwidth = copy_bandwidth()
    w_bytes = weight_bytes(model)
    floor_s = w_bytes / bandwidth
    print(
        f"copy bandwidth {bandwidth / 1e9:.2f} GB/s (read + write); weights {w_bytes / 1e6:.1f} MB; floor {floor_s * 1e3:.2f} ms/token"
    )

    hf = hf_model(config)
    model_bf16 = CogViewTransformer(config).eval()
    model_bf16.load_state_dict(model.state_dict())
    model_bf16 = model_bf16.to(torch.bfloat16)

    decode: dict[str, Any] = {}
    compiled_step = DecodeStep(model, compile=True)  # one per model: it keeps a graph per batch bucket
    for batch in batches:
        runs = {
            "ours_fp32": ours_decode(model, prompt, batch, steps, allowed),
            "hf_fp32": hf_decode(hf, prompt, batch, steps),
            # The fixed-shape step compiled (inductor; on a CPU frozen weights and autotuned GEMMs).
            "ours_compiled_fp32": ours_decode(model, prompt, batch, steps, allowed, compiled_step),
            "ours_bf16": ours_decode(model_bf16, prompt, batch, steps, allowed),
            # The fixed-shape step (whole cache read under a slot mask), eager: what compile and
            # CUDA graphs take; on a CPU it reads more cache than the kv_len-sliced default.
            "ours_static_fp32": ours_decode(model, prompt, batch, steps, allowed, DecodeStep(model, static=True)),
        }
        times, cpu, first = interleaved(runs, args.repeats)
        row: dict[str, Any] = {}
        for name, ts in times.items():
            median = statistics.median(ts)
            row[name] = {
                "seconds": [round(t, 3) for t in ts],
                "cpu_seconds": [round(t, 3) for t in cpu[name]],
                "first_run_seconds": round(first[name], 2),
                "image_tokens_per_s": round(batch * steps / median, 1),
                "ms_per_step": round(median / steps * 1e3, 2),
                "cpu_ms_per_step": round(statistics.median(cpu[name]) / steps * 1e3, 2),
            }
        for name in ("ours_fp32", "ours_compiled_fp32", "hf_fp32"):
            row[name]["peak_rss_rise_mb"] = _mb(peak_rss_rise(runs[name]))

        row["speedup_vs_hf_fp32"] = ratio(times, "hf_fp32", "ours_fp32")
        row["compiled_speedup_vs_hf_fp32"] = ratio(times, "hf_fp32", "ours_compiled_fp32")
        row["compiled_vs_default"] = ratio(times, "ours_fp32", "ours_compiled_fp32")
        row["static_step_vs_default"] = ratio(times, "ours_fp32", "ours_static_fp32")
        row["bf16_speedup_vs_fp32"] = ratio(times, "ours_fp32", "ours_bf16")
        row["cpu_time"] = {  # the same ratios over CPU seconds
            "speedup_vs_hf_fp32": ratio(cpu, "hf_fp32", "ours_fp32"),
            "compiled_speedup_vs_hf_fp32": ratio(cpu, "hf_fp32", "ours_compiled_fp32"),
            "compiled_vs_default": ratio(cpu, "ours_fp32", "ours_compiled_fp32"),
            "static_step_vs_default": ratio(cpu, "ours_fp32", "ours_static_fp32"),
            "bf16_speedup_vs_fp32": ratio(cpu, "ours_fp32", "ours_bf16"),
        }
        decode[f"batch_{batch}"] = row
        print(
            f"batch {batch}: "
            + ", ".join(f"{k} {v['image_tokens_per_s']} tok/s" for k, v in row.items() if k in runs)
            + f"; vs HF: eager x{row['speedup_vs_hf_fp32']}, compiled x{row['compiled_speedup_vs_hf_fp32']}"
            + f" (CPU time: x{row['cpu_time']['speedup_vs_hf_fp32']}, x{row['cpu_time']['compiled_speedup_vs_hf_fp32']})"
            + f"; bf16 x{row['bf16_speedup_vs_fp32']}; compile+first run {first['ours_compiled_fp32']:.1f} s"
            + "; peak RSS rise MB: "
            + ", ".join(f"{k} {row[k]['peak_rss_rise_mb']}" for k in ("ours_fp32", "ours_compiled_fp32", "hf_fp32")),
            flush=True,
        )

    floor: dict[str, Any] = {}
    if "batch_1" in decode:
        per_token = decode["batch_1"]["ours_fp32"]["ms_per_step"] / 1e3
        compiled = decode["batch_1"]["ours_compiled_fp32"]["ms_per_step"] / 1e3
        cpu_ms = {k: decode["batch_1"][k]["cpu_ms_per_step"] for k in ("ours_fp32", "ours_compiled_fp32")}
        floor = {
            "weight_bytes": w_bytes,
            "copy_bandwidth_gb_s": round(bandwidth / 1e9, 2),
            "floor_ms_per_token": round(floor_s * 1e3, 3),
            "ours_fp32_ms_per_token": round(per_token * 1e3, 2),
            "ratio_to_floor": round(per_token / floor_s, 2),
            "ours_compiled_fp32_ms_per_token": round(compiled * 1e3, 2),
            "compiled_ratio_to_floor": round(compiled / floor_s, 2),
            "cpu_time_ratio_to_floor": {k: round(v / 1e3 / floor_s, 2) for k, v in cpu_ms.items()},
        }
        print(
            f"batch-1 decode {per_token * 1e3:.2f} ms/token = {per_token / floor_s:.2f} x the floor; "
            f"compiled {compiled * 1e3:.2f} ms/token = {compiled / floor_s:.2f} x"
        )

    quality = bf16_quality(model, prompt, steps, allowed)
    print(f"bf16 vs fp32 next-code distributions: {quality}")

    per_image: dict[str, Any] = {}
    shipped = t2i.settings_for(PROMPT)
    for batch in batches:
        # The model's defaults (post-selection included), its candidates scored by the caption model
        # alone (CogView's post-selection; the shipped default adds the generator's own likelihood),
        # one sample per image, and one unguided.
        for label, scale, candidates, selection in (
            ("default_settings", None, None, None),
            ("caption_selection", None, None, "caption"),
            ("one_sample", None, 1, None),
            ("unguided_one_sample", 1.0, 1, None),
        ):
            kw = dict(guidance_scale=scale, candidates=candidates, selection=selection)
            pipe.generate(PROMPT, num_images=1, seed=0, **kw)  # warm-up
            t0 = time.perf_counter()
            pipe.generate(PROMPT, num_images=batch, seed=0, max_batch_size=batch, **kw)
            t = time.perf_counter() - t0
            per_image.setdefault(f"batch_{batch}", {})[label] = round(t / batch, 3)
        print(f"pipeline batch {batch}: {per_image[f'batch_{batch}']} s/image")

    result = {
        "command": "python " + " ".join(sys.argv),
        "model": source,
        "shape": {
            k: getattr(config, k)
            for k in ("n_layers", "dim", "n_heads", "ffn_dim", "vocab_size", "max_seq_len")
        },
        "parameters": model.num_parameters(),
        "prompt": PROMPT,
        "prompt_tokens": len(prompt),
        "image_tokens": steps,
        "top_k": TOP_K,
        "default_settings": {**shipped.to_dict(), "candidates": pipe.candidates, "selection": pipe.selection},
        "seconds_per_image": per_image,
        "decode": decode,
        "memory_floor_batch_1": floor,
        "bf16_quality": quality,
        "environment": {
            "torch": torch.__version__,
            "transformers": __import__("transformers").__version__,
            "threads": args.threads,
            "cpu": cpu_name(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "repeats": args.repeats,
            "machine": f"{os.cpu_count()} cores; {args.note}" if args.note else f"{os.cpu_count()} cores",
            "load_average_at_start": load,
        },
    }
    if args.before:
        result["before"] = json.loads(Path(args.before).read_text())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
