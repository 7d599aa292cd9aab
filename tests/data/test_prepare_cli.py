"""``cogview prepare``: help text, an end-to-end run on a few shapes, clean errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cogview.cli import main
from cogview.data.shards import TokenShards
from cogview.tokenizers.image import ImageTokenizer
from cogview.tokenizers.vqvae import VQVAE, VQVAE_PRESETS


def test_prepare_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in (
        "--dataset",
        "--out",
        "--tasks",
        "--languages",
        "--image-tokenizer",
        "--max-examples",
        "--resume",
    ):
        assert flag in out


def test_prepare_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    ImageTokenizer(VQVAE(VQVAE_PRESETS["tiny"])).save_pretrained(tmp_path / "tok")
    args = [
        "prepare",
        "--dataset",
        "shapes",
        "--out",
        str(tmp_path / "out"),
        "--image-tokenizer",
        str(tmp_path / "tok"),
    ]
    args += [
        "--tasks",
        "text_to_image,image_to_text",
        "--languages",
        "en",
        "--max-examples",
        "20",
        "--no-progress",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "40 rows of 101 tokens (text_to_image 20, image_to_text 20)" in out and "skipped 0" in out
    assert len(TokenShards.open(tmp_path / "out")) == 40

    assert main(args) == 2  # the folder is taken
    assert "already holds finished token shards" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 0  # already finished: nothing to do
    assert main([*args[:-1], "--tasks", "captions", "--no-progress"]) == 2
    assert "unknown task 'captions'" in capsys.readouterr().err
    typo = [
        "prepare",
        "--dataset",
        "shapez",
        "--out",
        str(tmp_path / "typo"),
        "--image-tokenizer",
        str(tmp_path / "tok"),
    ]
    assert main(typo) == 2
    assert "unknown dataset 'shapez'" in capsys.readouterr().err and not (tmp_path / "typo").exists()


def test_dataset_options_reach_the_loader_and_the_manifest(tmp_path, capsys) -> None:
    import json

    from cogview.cli import main

    out = tmp_path / "emoji"
    argv = ["prepare", "--dataset", "emoji", "--split", "test", "--out", str(out), "--max-examples", "8",
            "--dataset-option", "all_templates=true", "--no-progress"]
    assert main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["dataset_options"] == {"all_templates": True}
    assert manifest["examples"]["total"] == 8
    assert main([*argv[:-3], "--dataset-option", "nonsense", "--no-progress"]) == 2
    assert "--dataset-option expects key=value" in capsys.readouterr().err
