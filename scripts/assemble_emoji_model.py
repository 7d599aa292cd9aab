"""Assemble the emoji model folder: trained transformers + tokenizers -> one pipeline folder.

The transformers were trained on shards made with the 8x8 tokenizer; the folder decodes with the
one whose decoder was trained further (``STAGE=dec`` of scripts/train_default_model.sh). That
tokenizer records whose codes it keeps (``codes_of`` in its config, checked against its encoder
and codebook), so the training records of the transformers accept it. Weights are written in
16 bits (``--dtype``; they are loaded back as float32 for CPU compute), with OpenMoji's
attribution beside them, and the folder is loaded back and run once.

    python scripts/assemble_emoji_model.py --transformer runs/emoji/multitask/model \\
        [--caption runs/emoji/caption/model] [--super-resolution runs/emoji/sr/model] \\
        --out runs/emoji/assembled
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

from cogview.generation.text_to_image import DEFAULT_SAMPLING
from cogview.model import CogViewTransformer
from cogview.pipeline import CogViewPipeline
from cogview.tokenizers.image import ImageTokenizer

WIP = Path("models/emoji-wip")
ATTRIBUTION = """# Emoji model

Text-to-image, captioning and super-resolution for ~1,900 emoji concepts named in Chinese and
English, beside coloured shapes and handwritten-style digits (docs/emoji_model.md).

The tokenizers and transformers were trained in part on renders of OpenMoji 17
(https://openmoji.org): "All emojis designed by OpenMoji - the open-source emoji and icon project.
License: CC BY-SA 4.0" (https://creativecommons.org/licenses/by-sa/4.0/). This folder is shared
under the same licence. Emoji names: Unicode CLDR via the `emoji` package (BSD).
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--transformer", required=True, help="text-to-image model folder (multi-task: captioning too)")
    p.add_argument("--caption", help="captioning model folder, instead of the multi-task model's (optional)")
    p.add_argument("--super-resolution", help="super-resolution model folder (optional)")
    p.add_argument("--image-tokenizer", default=str(WIP / "image_tokenizer_8x8_decoder"), help="tokenizer to ship")
    p.add_argument("--text-tokenizer", default=str(WIP / "text_tokenizer"))
    p.add_argument("--candidates", type=int, default=None, help="post-selection default (default: 2 with captioning)")
    p.add_argument(
        "--caption-candidates",
        type=int,
        default=1,
        help="captions re-ranked by default (pipeline.json post_selection.captions; 1 = greedy)",
    )
    p.add_argument(
        "--selection",
        choices=["caption", "joint"],
        default="caption",
        help="how post-selection scores candidates (pipeline.json post_selection.score)",
    )
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16", help="weights on disk")
    p.add_argument(
        "--max-shard-mb",
        type=float,
        default=24.0,
        help="a transformer's weights larger than this go into shards of at most this size, with an "
        "index (the repository keeps every file under 30 MB; default: 24)",
    )
    p.add_argument("--out", required=True, help="the folder to write (new or empty)")
    args = p.parse_args()
    if not args.max_shard_mb > 0:
        p.error(f"--max-shard-mb must be positive, got {args.max_shard_mb}")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        p.error(f"{out} is not empty")

    if not (Path(args.transformer) / "cogview.json").is_file():
        # Without its training record the prompt's text budget would be whatever fits the positions
        # (29 for the emoji model), not the one it was trained with (24): a silently different layout.
        p.error(f"{args.transformer} has no training record (cogview.json): pass a training run's RUN/model")
    image_tok = ImageTokenizer.from_pretrained(args.image_tokenizer)
    # Each folder's training record (tasks, vocabulary, tokenizer fingerprints) is checked here.
    trained = CogViewPipeline.from_components(args.transformer, args.text_tokenizer, image_tok)
    models = {job: trained.models[job] for job in trained.jobs}
    for job, folder in (("image_to_text", args.caption), ("super_resolution", args.super_resolution)):
        if folder:  # a separate model for the job replaces the multi-task one's
            part = CogViewPipeline.from_components({job: folder}, args.text_tokenizer, image_tok)
            models[job] = part.models[job]
    captions = "image_to_text" in models
    candidates = args.candidates if args.candidates is not None else (2 if captions else 1)
    t2i = trained.text_to_image
    assert t2i is not None
    pipe = CogViewPipeline.from_components(
        models,
        trained.text_tokenizer,
        image_tok,
        trained.vocab,
        text_budget=t2i.text_budget,
        sampling=DEFAULT_SAMPLING,
        candidates=candidates,
    )
    dtype = getattr(torch, args.dtype)
    stored = copy.copy(pipe)
    converted: dict[int, CogViewTransformer] = {}  # a model serving two jobs stays one folder
    stored.models = {
        job: converted.setdefault(id(m), copy.deepcopy(m).to(dtype)) for job, m in pipe.models.items()
    }
    stored.caption_candidates = args.caption_candidates
    stored.selection = args.selection
    stored.save_pretrained(out, max_shard_bytes=int(args.max_shard_mb * 2**20))
    (out / "README.md").write_text(ATTRIBUTION)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out}: jobs {list(pipe.jobs)}, {size / 2**20:.1f} MiB", file=sys.stderr)

    loaded = CogViewPipeline.from_pretrained(out)
    start = time.perf_counter()
    images = loaded.generate("披萨", num_images=1, seed=0)
    print(f"loaded back; one image of 披萨 in {time.perf_counter() - start:.1f} s ({images[0].size})", file=sys.stderr)


if __name__ == "__main__":
    main()
