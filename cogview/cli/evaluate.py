"""``cogview fid``: FID between two folders of images, with the shipped VQ-VAE as feature extractor."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cogview.tokenizers.image import ImageTokenizer


def _image_tokenizer(path: str | None) -> ImageTokenizer:
    # Imported here, not at the top: `cogview --help` stays fast.
    from cogview.pipeline import IMAGE_TOKENIZER_DIR
    from cogview.tokenizers.image import ImageTokenizer

    if path is None:
        return ImageTokenizer.from_pretrained()
    folder = Path(path)
    # A model folder holds its tokenizer in image_tokenizer/; a tokenizer folder is taken as is.
    return ImageTokenizer.from_pretrained(
        folder / IMAGE_TOKENIZER_DIR if (folder / IMAGE_TOKENIZER_DIR).is_dir() else folder
    )


def cmd_fid(args: argparse.Namespace) -> int:
    from cogview.evaluation.fid import VQVAEFeatures, fid_from_folders

    tokenizer = _image_tokenizer(args.model)
    if args.device:
        tokenizer.to(args.device)
    extractor = VQVAEFeatures(tokenizer, batch_size=args.batch_size)
    report = fid_from_folders(args.real_dir, args.fake_dir, extractor)
    print(f"FID {report['fid']:.4f}  (extractor {report['extractor']})")
    for side in ("real", "fake"):
        r = report[side]
        print(f"{side}: {r['images']} images, {r['skipped']} unreadable skipped, {r['path']}")
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fid",
        help="FID between two folders of images (features from the VQ-VAE encoder)",
        description="Frechet distance between Gaussians fitted to features of the images in REAL_DIR and "
        "FAKE_DIR (every PNG/JPEG directly in each folder; unreadable files are skipped and counted; "
        "cogview generate's *_grid.png files would count too, so move them away). Features are the "
        "image tokenizer's continuous encoder map, mean and std per channel, not Inception's: "
        "numbers are only comparable with others from the same extractor (printed). Lower is closer.",
    )
    p.add_argument("real_dir", metavar="REAL_DIR", help="folder of reference images")
    p.add_argument("fake_dir", metavar="FAKE_DIR", help="folder of images to compare (e.g. generated)")
    p.add_argument(
        "--model",
        help="model folder (its image_tokenizer/ is used) or image tokenizer folder "
        "(default: the tokenizer shipped with cogview)",
    )
    p.add_argument("--batch-size", type=int, default=64, help="images per encoder pass (default: 64)")
    p.add_argument("--device", help="torch device for the encoder, e.g. cuda (default: cpu)")
    p.add_argument("--json", metavar="OUT", help="also write the FID and image counts to this JSON file")
    p.set_defaults(func=cmd_fid)
