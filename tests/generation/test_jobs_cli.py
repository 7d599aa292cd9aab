"""``cogview caption | score | upscale`` and ``generate --candidates --upscale`` end to end on a tiny model folder."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from small_parts import small_text_tokenizer

from cogview.cli import main
from cogview.images import to_pil
from cogview.model import PRESETS, CogViewTransformer
from cogview.pipeline import CogViewPipeline
from cogview.tokenizers.image import ImageTokenizer
from cogview.tokenizers.vocab import default_vocab
from cogview.tokenizers.vqvae import VQVAE, VQVAE_PRESETS


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir: Path) -> Path:
    return tiny_model_dir


@pytest.fixture(scope="module")
def image_files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i, im in enumerate(to_pil(torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(0)))):
        paths.append(str(folder / f"im{i}.png"))
        im.save(paths[-1])
    return paths


def test_caption_cli(model_dir: Path, image_files: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["caption", *image_files, "-l", "en", "-n", "2", "--model", str(model_dir), "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in records] == image_files
    assert all(len(r["captions"]) == 2 for r in records)
    assert main(["caption", "missing.png", "--model", str(model_dir)]) == 2
    assert "cannot read image missing.png" in capsys.readouterr().err


def test_caption_cli_candidates_is_the_library_s_choice(
    model_dir: Path, image_files: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["caption", *image_files, "-l", "en", "--candidates", "3", "--model", str(model_dir), "--json"])
        == 0
    )
    records = json.loads(capsys.readouterr().out)
    pipe = CogViewPipeline.from_pretrained(model_dir)
    images = [Image.open(f) for f in image_files]
    assert [r["captions"] for r in records] == [[c] for c in pipe.caption(images, "en", candidates=3)]
    assert main(["caption", image_files[0], "-n", "2", "--candidates", "3", "--model", str(model_dir)]) == 2
    assert "one caption per image" in capsys.readouterr().err


def test_caption_cli_beams_print_the_most_likely_captions(
    model_dir: Path, image_files: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "caption",
        *image_files,
        "-l",
        "en",
        "-n",
        "2",
        "--beams",
        "3",
        "--model",
        str(model_dir),
        "--json",
    ]
    assert main(args) == 0
    records = json.loads(capsys.readouterr().out)
    pipe = CogViewPipeline.from_pretrained(model_dir)
    found = pipe.captioner.beam_captions([Image.open(f) for f in image_files], "en", 3)
    assert [r["captions"] for r in records] == [[t for t, _ in texts[:2]] for texts in found]
    assert main(["caption", image_files[0], "--beams", "2", "--top-k", "4", "--model", str(model_dir)]) == 2
    assert "does not sample" in capsys.readouterr().err


def test_score_cli_ranks_best_first(
    model_dir: Path, image_files: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["score", "a red circle", *image_files, "--model", str(model_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    scores = [r["score"] for r in report["images"]]
    assert scores == sorted(scores, reverse=True) and [r["rank"] for r in report["images"]] == [1, 2]
    assert all(r["caption_loss"] > 0 for r in report["images"])
    assert main(["score", " ", *image_files, "--model", str(model_dir)]) == 2


def test_upscale_cli(model_dir: Path, image_files: list[str], tmp_path: Path) -> None:
    assert (
        main(["upscale", *image_files, "--model", str(model_dir), "--out", str(tmp_path), "--no-progress"])
        == 0
    )
    with Image.open(tmp_path / "im0_x2.png") as im:
        assert im.size == (80, 80)


def test_generate_rerank_and_upscale_in_one_call(model_dir: Path, tmp_path: Path) -> None:
    args = ["generate", "a red circle", "-n", "2", "--candidates", "3", "--upscale", "--seed", "1"]
    assert main([*args, "--model", str(model_dir), "--out", str(tmp_path), "--no-progress"]) == 0
    report = json.loads((tmp_path / "generate.json").read_text(encoding="utf-8"))
    assert report["candidates"] == 3 and report["upscale"] is True and report["selection"] == "caption"
    record = report["prompts"][0]
    assert len(record["rerank"]["scores"]) == 2 and len(record["rerank"]["scores"][0]) == 3
    with Image.open(tmp_path / record["files"][0]) as im:
        assert im.size == (64, 64)
    joint = tmp_path / "joint"
    assert (
        main([*args, "--selection", "joint", "--model", str(model_dir), "--out", str(joint), "--no-progress"])
        == 0
    )
    report = json.loads((joint / "generate.json").read_text(encoding="utf-8"))
    pipe = CogViewPipeline.from_pretrained(model_dir)
    library = pipe.generate_results("a red circle", 2, candidates=3, selection="joint", seed=1)[0]
    assert report["selection"] == "joint" and report["prompts"][0]["rerank"] == library.rerank


def test_jobs_the_model_lacks_are_clean_errors(image_files: list[str], tmp_path: Path, capsys) -> None:
    text, image = small_text_tokenizer(), ImageTokenizer(VQVAE(VQVAE_PRESETS["tiny"]))
    vocab = default_vocab(image, text)
    model = CogViewTransformer(dataclasses.replace(PRESETS["tiny"], vocab_size=vocab.size))
    CogViewPipeline(model, text, image, vocab).save_pretrained(tmp_path / "t2i")
    assert main(["caption", image_files[0], "--model", str(tmp_path / "t2i")]) == 2
    assert "does not serve image_to_text" in capsys.readouterr().err
    assert (
        main(["generate", "x", "--candidates", "2", "--model", str(tmp_path / "t2i"), "--out", str(tmp_path)])
        == 2
    )
    assert "--candidates needs" in capsys.readouterr().err
