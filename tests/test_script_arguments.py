"""Scripts refuse arguments that would silently do the wrong thing, before any work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_assembling_refuses_a_transformer_without_its_training_record(tmp_path: Path) -> None:
    # An assembled folder's transformer has no cogview.json: its text budget would come out wrong.
    done = _run(
        "scripts/assemble_emoji_model.py",
        "--transformer",
        "cogview/assets/default/transformer",
        "--out",
        str(tmp_path / "out"),
    )
    assert done.returncode == 2 and "no training record" in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()


def test_super_resolution_benchmark_refuses_a_file_as_its_out_folder(tmp_path: Path) -> None:
    done = _run("benchmarks/super_resolution.py", "--out", str(tmp_path / "sr.json"))
    assert done.returncode == 2 and "names a folder" in done.stderr, done.stderr
    assert not (tmp_path / "sr.json").exists()


def test_captioning_benchmark_refuses_beams_with_candidates(tmp_path: Path) -> None:
    # --beams shows the beam's best caption; --candidates re-ranks a beam: asking both is ambiguous.
    out = tmp_path / "c.json"
    done = _run("benchmarks/captioning.py", "--beams", "4", "--candidates", "8", "--out", str(out))
    assert done.returncode == 2 and "leave --candidates out" in done.stderr, done.stderr
    assert not out.exists()


def test_learning_modifiers_refuses_a_missing_model_or_a_file_as_its_out_folder(tmp_path: Path) -> None:
    done = _run("scripts/learn_modifiers.py", "--model", str(tmp_path / "none"), "--out", str(tmp_path))
    assert done.returncode == 2 and "--model" in done.stderr and "Traceback" not in done.stderr, done.stderr
    (tmp_path / "file").write_text("x")
    done = _run("scripts/learn_modifiers.py", "--out", str(tmp_path / "file"))
    assert done.returncode == 2 and "is a file" in done.stderr, done.stderr
    assert not (tmp_path / "modifiers.json").exists()


def test_modifier_pictures_refuses_a_row_count_out_of_range(tmp_path: Path) -> None:
    done = _run("scripts/modifier_pictures.py", "--n", "0", "--out", str(tmp_path / "m.png"))
    assert done.returncode == 2 and "--n must be in 1..100" in done.stderr, done.stderr
    assert not (tmp_path / "m.png").exists()
