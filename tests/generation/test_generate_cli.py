"""``cogview generate`` end to end on a tiny random model folder: files, JSON, byte-identical reruns, errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from small_parts import small_text_tokenizer

from cogview.cli import main
from cogview.generation.sampling import SamplingConfig
from cogview.generation.text_to_image import TextToImage
from cogview.model import PRESETS, CogViewTransformer
from cogview.pipeline import CogViewPipeline
from cogview.tokenizers.image import ImageTokenizer
from cogview.tokenizers.vocab import default_vocab
from cogview.tokenizers.vqvae import VQVAE, VQVAE_PRESETS


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    text, image = small_text_tokenizer(), ImageTokenizer(VQVAE(VQVAE_PRESETS["tiny"]))
    vocab = default_vocab(image, text)
    model = CogViewTransformer(dataclasses.replace(PRESETS["tiny"], vocab_size=vocab.size))
    folder = tmp_path_factory.mktemp("models") / "tiny"
    sampling = {"default": SamplingConfig(top_k=50, guidance_scale=2.0)}
    CogViewPipeline(model, text, image, vocab, sampling=sampling).save_pretrained(folder)
    return folder


def test_generate_end_to_end_and_byte_identical_reruns(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("红色的圆形\n\n", encoding="utf-8")
    args = ["generate", "a red circle", "--prompts-file", str(prompts_file), "-n", "3", "--seed", "11"]
    args += ["--model", str(model_dir), "--top-k", "20", "--max-batch-size", "2"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "6 images" in err and "tok" in err  # the tqdm bar counts tokens
    assert main([*args, "--out", str(tmp_path / "b"), "--no-progress"]) == 0

    report = json.loads((tmp_path / "a" / "generate.json").read_text(encoding="utf-8"))
    assert report["seed"] == 11 and report["dtype"] == "float32" and report["max_batch_size"] == 2
    first, second = report["prompts"]
    assert (first["prompt"], second["prompt"]) == ("a red circle", "红色的圆形")
    assert second["kind"] == "zh" and first["settings"] == {
        "temperature": 1.0,
        "top_k": 20,
        "top_p": 0.0,
        "guidance_scale": 2.0,
        "min_p": 0.0,
    }
    assert len(first["image_seeds"]) == 3 and first["image_seeds"] == second["image_seeds"]
    names = sorted(p.name for p in (tmp_path / "a").glob("*.png"))
    assert names == sorted(
        [f"00{k}_00{i}.png" for k in range(2) for i in range(3)] + ["000_grid.png", "001_grid.png"]
    )
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_compile_flag_gives_the_same_png_bytes(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # --compile: a fixed-shape step under torch.compile(fullgraph=True), 3 images padded to a
    # batch bucket of 4. aot_eager captures the same graph as inductor without minutes of codegen.
    monkeypatch.setattr(TextToImage, "compile_backend", "aot_eager")
    args = ["generate", "a red circle", "-n", "3", "--seed", "5", "--model", str(model_dir), "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "eager")]) == 0
    assert main([*args, "--out", str(tmp_path / "compiled"), "--compile"]) == 0
    report = json.loads((tmp_path / "compiled" / "generate.json").read_text(encoding="utf-8"))
    assert report["compile"] is True
    names = sorted(p.name for p in (tmp_path / "eager").glob("*.png"))
    assert len(names) == 4
    for name in names:
        assert (tmp_path / "eager" / name).read_bytes() == (tmp_path / "compiled" / name).read_bytes(), name


def test_clear_errors(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        (["generate", "", "--model", str(model_dir)], "empty"),
        (["generate", "--model", str(model_dir)], "no prompts"),
        (["generate", "a red circle", "--model", str(tmp_path / "missing")], "does not exist"),
        (["generate", "a red circle", "--model", str(tmp_path)], "no pipeline.json"),
        (["generate", "a", "--model", str(model_dir), "--top-p", "2"], "top_p"),
        (["generate", "a", "--model", str(model_dir), "--dtype", "float16"], "float16"),
        (["generate", "a", "--prompts-file", str(tmp_path / "none.txt")], "cannot read prompts file"),
    ]
    for argv, message in cases:
        assert main([*argv, "--out", str(tmp_path / "out"), "--no-progress"]) == 2, argv
        err = capsys.readouterr().err
        assert "cogview generate: error:" in err and message in err, (argv, err)


def test_a_skin_tone_prompt_records_its_modifier_and_no_modifiers_draws_it_as_given(tmp_path: Path) -> None:
    """The shipped model: its base drawn and mapped by default, as given with --no-modifiers (a
    held-out pair, which the two draw differently)."""
    args = [
        "generate",
        "kiss dark skin tone",
        "-n",
        "1",
        "--seed",
        "0",
        "--candidates",
        "1",
        "--no-progress",
    ]
    assert main([*args, "--out", str(tmp_path / "m")]) == 0
    assert main([*args, "--out", str(tmp_path / "d"), "--no-modifiers"]) == 0
    mapped, direct = (json.loads((tmp_path / d / "generate.json").read_text())["prompts"][0] for d in "md")
    assert mapped["modifier"] == {"name": "dark", "drawn_prompt": "kiss"} and "modifier" not in direct
    assert mapped["prompt"] == direct["prompt"] == "kiss dark skin tone"
    assert (tmp_path / "m" / "000_000.png").read_bytes() != (tmp_path / "d" / "000_000.png").read_bytes()
