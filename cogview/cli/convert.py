"""``cogview convert-original``: the released CogView weights -> one of our model folders."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

DESCRIPTION = """\
Convert the released CogView files into one model folder that CogViewPipeline.from_pretrained
loads: text_tokenizer/, image_tokenizer/, transformer/, pipeline.json and conversion.json
(provenance). pipeline.json records the job, "semantics": "original" (the job is served as the
released code served it: query syntax, 20-token captions over all text ids, nine-window
super-resolution in the original order and rows, 256 px bilinear input, min-max stretched output)
and the job's sampling defaults from the original scripts (top-k 200; temperature 1, or 1.02 for
super-resolution).

The pickles are read with torch.load(weights_only=True) and memory-mapped, and converted tensor
by tensor, so a 7.9 GB checkpoint needs about the written model's size in RAM (fp16/bf16: 7.9 GB,
fp32: 15.7 GB). Every key and shape is checked against the architecture (original or
SwissArmyTransformer key names); the folder appears only when complete."""

EXAMPLE = """example (the released text-to-image model, see docs/original_weights.md):
  cogview convert-original --checkpoint pretrained/cogview/cogview-base \\
      --vqvae pretrained/vqvae/vqvae_hard_biggerset_011.pt \\
      --text-tokenizer pretrained/chinese_sentencepiece/cog-pretrain.model \\
      --out models/cogview-base
  then: cogview generate --model models/cogview-base '一只可爱的猫' --device cuda
  (--job image_to_text for cogview-caption, --job super_resolution for cogview-sr)"""


def _config(value: str, presets: dict[str, Any], cls: Any, what: str) -> Any:
    """A preset name or a JSON file of the config's fields (a component's config.json works)."""
    if value in presets:
        return presets[value]
    path = Path(value)
    if not path.is_file():
        raise ValueError(f"{what} {value!r} is neither a preset ({', '.join(presets)}) nor a JSON file")
    from cogview.config_io import read_config_file

    data = read_config_file(value)
    data.pop("model_type", None)  # written by ImageTokenizer.save_pretrained
    return cls.from_dict(data)


def cmd_convert_original(args: argparse.Namespace) -> int:
    from cogview.convert import convert_original
    from cogview.model import PRESETS, TransformerConfig
    from cogview.tokenizers.vqvae import VQVAE_PRESETS, VQVAEConfig

    if args.max_shard_gb is not None and not args.max_shard_gb > 0:
        raise ValueError(f"--max-shard-gb must be positive, got {args.max_shard_gb}")
    record = convert_original(
        args.checkpoint,
        args.vqvae,
        args.text_tokenizer,
        args.out,
        dtype=args.dtype,
        job=args.job,
        config=_config(args.config, PRESETS, TransformerConfig, "--config"),
        vqvae_config=_config(args.vqvae_config, VQVAE_PRESETS, VQVAEConfig, "--vqvae-config"),
        max_shard_bytes=None if args.max_shard_gb is None else int(args.max_shard_gb * 2**30),
    )
    print(json.dumps(record, indent=2, ensure_ascii=False))
    print(f"wrote {args.out}: load it with CogViewPipeline.from_pretrained({str(args.out)!r})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from cogview.convert.folder import DEFAULT_DTYPE, DTYPES
    from cogview.pipeline import JOBS

    p = sub.add_parser(
        "convert-original",
        help="convert the released CogView weights (DeepSpeed checkpoint + VQ-VAE + tokenizer) to a model folder",
        description=DESCRIPTION,
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        metavar="DIR",
        help="checkpoint folder holding latest_checkpointed_iteration.txt and <iter>/mp_rank_00_model_states.pt "
        "(e.g. pretrained/cogview/cogview-base), an iteration folder, or the .pt file itself",
    )
    p.add_argument(
        "--vqvae", required=True, metavar="FILE", help="the VQ-VAE file vqvae_hard_biggerset_011.pt"
    )
    p.add_argument(
        "--text-tokenizer",
        required=True,
        metavar="FILE",
        help="the SentencePiece model cog-pretrain.model (or a text tokenizer folder)",
    )
    p.add_argument(
        "--out", required=True, metavar="MODEL_DIR", help="the model folder to write (new or empty)"
    )
    p.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default=DEFAULT_DTYPE,
        help="weight precision of the written transformer (default: fp16, the release's values bit "
        "for bit; bf16 rounds every weight; fp32 is exact at twice the size). The VQ-VAE is always "
        "fp32. Generation computes in the dtype the folder is loaded in (see docs/original_weights.md)",
    )
    p.add_argument(
        "--job",
        choices=JOBS,
        default="text_to_image",
        help="the job the weights serve, recorded in pipeline.json: text_to_image (cogview-base, the "
        "default), image_to_text (cogview-caption), super_resolution (cogview-sr)",
    )
    p.add_argument(
        "--config",
        default="cogview-4b",
        metavar="PRESET|JSON",
        help="transformer architecture the checkpoint must match: a preset name (default: cogview-4b) "
        "or a JSON file of TransformerConfig fields, for smaller models in the original layout",
    )
    p.add_argument(
        "--vqvae-config",
        default="original",
        metavar="PRESET|JSON",
        help="VQ-VAE architecture the file must match: a preset name (default: original) or a JSON "
        "file of VQVAEConfig fields",
    )
    p.add_argument(
        "--max-shard-gb",
        type=float,
        metavar="GB",
        help="write the transformer in shards of at most GB GiB with an index (model.safetensors.index.json), "
        "e.g. 5 for a model hub; the folder loads the same (default: one model.safetensors)",
    )
    p.set_defaults(func=cmd_convert_original)
