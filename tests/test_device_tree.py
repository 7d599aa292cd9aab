"""scripts/device_tree.sh: slimmed paths stop travelling, and restore gives back index and excludes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "device_tree.sh"

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def _travelling(repo: Path) -> set[str]:
    """What the device tool sends: tracked plus untracked-not-ignored files."""
    return set(_git(repo, "ls-files", "--cached", "--others", "--exclude-standard").split())


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    shutil.copy(SCRIPT, tmp_path / "scripts" / "device_tree.sh")
    for name in ("models/a.bin", "models/sub/b.bin", "docs/images/c.png", "code.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    (tmp_path / ".git" / "info").mkdir(exist_ok=True)
    (tmp_path / ".git" / "info" / "exclude").write_text("/own-line/\n")
    return tmp_path


def _run(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "scripts/device_tree.sh", *args], cwd=repo, capture_output=True, text=True, timeout=60
    )


def test_slim_then_restore(repo: Path) -> None:
    before = _travelling(repo)
    out = _run(repo, "slim", "models", "docs/images/")
    assert out.returncode == 0, out.stderr
    assert _travelling(repo) == before - {"models/a.bin", "models/sub/b.bin", "docs/images/c.png"}
    assert (repo / "models" / "a.bin").is_file()  # still on disk
    out = _run(repo, "restore")
    assert out.returncode == 0, out.stderr
    assert _travelling(repo) == before
    assert _git(repo, "status", "--porcelain") == ""
    assert (repo / ".git" / "info" / "exclude").read_text() == "/own-line/\n"  # the user's lines kept


def test_unknown_command_is_refused(repo: Path) -> None:
    out = _run(repo, "shrink")
    assert out.returncode == 2 and "unknown command" in out.stderr
