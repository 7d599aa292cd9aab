"""The command line: every subcommand explains itself, bad input fails cleanly, the round trip runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cogview.cli import build_parser, main
from cogview.tokenizers.image import ImageTokenizer
from cogview.tokenizers.vqvae import VQVAE, VQVAE_PRESETS


def subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


@pytest.mark.parametrize("command", subcommands())
def test_every_subcommand_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: cogview {command}" in out and len(out) > 200


def test_python_dash_m_works() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cogview", "--help"], capture_output=True, text=True, check=True
    )
    assert "roundtrip" in result.stdout


def test_roundtrip_end_to_end_on_a_tiny_tokenizer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    ImageTokenizer(VQVAE(VQVAE_PRESETS["tiny"])).save_pretrained(tmp_path / "tok")
    code = main(
        [
            "roundtrip",
            "--tokenizer",
            str(tmp_path / "tok"),
            "-n",
            "8",
            "--out",
            str(tmp_path / "out"),
            "--no-checkers",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "shapes: 8 test images  PSNR" in out and "digits: 8 test images" in out
    report = json.loads((tmp_path / "out" / "roundtrip.json").read_text())
    assert set(report["datasets"]) == {"shapes", "digits"}
    assert (tmp_path / "out" / "roundtrip.png").stat().st_size > 0


def test_unreadable_tokenizer_folder_is_a_clean_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["roundtrip", "--tokenizer", str(tmp_path / "missing")]) == 2
    assert "error:" in capsys.readouterr().err
