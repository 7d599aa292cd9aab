"""The shipped default model on a GPU: every job runs, is seeded, and how fast it is.

Loads ``cogview/assets/default`` onto ``--device`` and, for float32 and bfloat16:
- generates one Chinese and one English prompt at batch 1 and 16 (seconds per image, guidance as
  shipped), twice with the same seed, and checks the PNG bytes are identical on that device;
- reranks (best of 4 by caption likelihood); captions and upscales a generated image in float32.
Also reports how many image codes the device's float32 batch-1 images share with the CPU's for
the same seed (sampling draws its uniforms on the CPU, so the two differ only where rounding
moves a logit across a sampling boundary).

    python benchmarks/gpu_default_model.py --out $OUT/gpu_default_model.json   # CUDA machine
    python benchmarks/gpu_default_model.py --device cpu --out /tmp/gdm.json       # CPU rehearsal
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cogview.images import png_bytes
from cogview.pipeline import CogViewPipeline

PROMPTS = {"zh": "蓝色背景上左边有一个红色圆形", "en": "a handwritten digit 7"}


def timed(device: torch.device, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, Any]:
    """Seconds of ``fn(*args, **kwargs)`` with the device's queue drained before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0, result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--model", default=None, help="model folder (default: the shipped one)")
    parser.add_argument("--batch", type=int, default=16, help="the larger batch size (default 16)")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--out", default="out/gpu_default_model.json")
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_default_model: no CUDA device here; nothing measured (try --device cpu)", file=sys.stderr)
        return 0
    pipe = CogViewPipeline.from_pretrained(args.model, device=device)
    cpu_pipe = CogViewPipeline.from_pretrained(args.model)
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "prompts": PROMPTS,
        "jobs": {},
    }
    for dtype in args.dtypes.split(","):
        row: dict[str, Any] = {}
        pipe.generate(PROMPTS["zh"], num_images=1, seed=0, dtype=dtype)  # warm-up (kernels, cache)
        for lang, prompt in PROMPTS.items():
            for batch in (1, args.batch):
                s, first = timed(
                    device, pipe.generate, prompt, num_images=batch, seed=1, max_batch_size=batch, dtype=dtype
                )
                again = pipe.generate(prompt, num_images=batch, seed=1, max_batch_size=batch, dtype=dtype)
                row[f"{lang}_batch_{batch}"] = {
                    "seconds_per_image": round(s / batch, 4),
                    "identical_png_bytes_on_rerun": png_bytes(first) == png_bytes(again),
                }
        s_rank, _ = timed(
            device, pipe.generate, PROMPTS["zh"], num_images=1, seed=3, candidates=4, dtype=dtype
        )
        row["rerank_best_of_4_seconds"] = round(s_rank, 3)
        result["jobs"][dtype] = row
        print(dtype, json.dumps(row, ensure_ascii=False), flush=True)

    # Captioning and upscaling run in the weights' dtype (float32).
    image = pipe.generate(PROMPTS["zh"], num_images=1, seed=2)[0]
    s_cap, caption = timed(device, pipe.caption, image)
    small = image.resize((32, 32), Image.BICUBIC)
    s_up, up = timed(device, pipe.upscale, small)
    result["caption"] = {"seconds": round(s_cap, 3), "text": caption[0]}
    result["upscale_32_to_64"] = {"seconds": round(s_up, 3), "size": list(up.size)}
    print("caption/upscale:", result["caption"], result["upscale_32_to_64"], flush=True)

    ours = pipe.generate(list(PROMPTS.values()), num_images=4, seed=5, dtype="float32")
    cpu = cpu_pipe.generate(list(PROMPTS.values()), num_images=4, seed=5, dtype="float32")
    tok = cpu_pipe.image_tokenizer
    codes = [tok.encode(imgs).flatten(1) for imgs in (ours, cpu)]
    result["float32_code_agreement_with_cpu"] = round(float((codes[0] == codes[1]).float().mean()), 4)
    result["float32_identical_images_with_cpu"] = sum(
        bool(np.array_equal(np.asarray(a), np.asarray(b))) for a, b in zip(ours, cpu, strict=True)
    )
    print(
        "float32 vs cpu:",
        result["float32_code_agreement_with_cpu"],
        "codes,",
        result["float32_identical_images_with_cpu"],
        f"of {len(cpu)} images identical",
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
