"""A shared sharded checkpoint is untrusted: reading it never runs code or reads outside its folder.

Each payload writes a marker file if it runs; the tests assert the marker never appears and the
read is refused with a CheckpointError naming what was refused.
"""

from __future__ import annotations

import ast
import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from cogview.cli import main
from cogview.model import PRESETS, CogViewTransformer
from cogview.serialization import CONFIG_NAME, CheckpointError, write_json
from cogview.training.dcp_reader import load_metadata
from cogview.training.sharded_checkpoint import DCP_DIR, consolidate, read_sharded

ROOT = Path(__file__).resolve().parents[2]


class _Payload:
    """Unpickling this runs a shell command (what an attacker would ship)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _sharded_checkpoint(folder: Path, extra: dict | None = None) -> CogViewTransformer:
    torch.manual_seed(0)
    model = CogViewTransformer(PRESETS["tiny"])
    folder.mkdir(parents=True)
    write_json(folder / CONFIG_NAME, model.config.to_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"model": {**model.state_dict(), **(extra or {})}}, checkpoint_id=folder / DCP_DIR, no_dist=True)
    return model


def test_a_clean_sharded_checkpoint_still_consolidates(tmp_path: Path) -> None:
    model = _sharded_checkpoint(tmp_path / "ckpt")
    out = consolidate(tmp_path / "ckpt", tmp_path / "out")
    loaded = CogViewTransformer.from_pretrained(out)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_metadata_payload_never_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt, marker = tmp_path / "ckpt", tmp_path / "pwned"
    _sharded_checkpoint(ckpt)
    (ckpt / DCP_DIR / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(CheckpointError, match=r"refusing to load .*posix\.system|refusing to load .*os\.system"):
        consolidate(ckpt, tmp_path / "out")
    weights = CogViewTransformer(PRESETS["tiny"]).state_dict()
    with pytest.raises(CheckpointError, match="refusing to load"):
        read_sharded(ckpt, {"model": weights})  # the path train --resume takes
    assert main(["consolidate", str(ckpt), "--out", str(tmp_path / "out2")]) == 2
    assert "refusing to load" in capsys.readouterr().err
    assert not marker.exists()
    assert not (tmp_path / "out2").exists()


def test_payload_inside_the_metadata_object_never_runs(tmp_path: Path) -> None:
    """A genuine Metadata whose planner_data smuggles the payload is refused as well."""
    ckpt, marker = tmp_path / "ckpt", tmp_path / "pwned"
    _sharded_checkpoint(ckpt)
    metadata = load_metadata(ckpt / DCP_DIR / ".metadata")
    metadata.planner_data = {"x": _Payload(marker)}
    (ckpt / DCP_DIR / ".metadata").write_bytes(pickle.dumps(metadata))
    with pytest.raises(CheckpointError, match="is not part of a checkpoint's metadata"):
        consolidate(ckpt, tmp_path / "out")
    assert not marker.exists()


def test_byte_entry_payload_never_runs(tmp_path: Path) -> None:
    """torch's default planner loads non-tensor entries with weights_only=False; ours does not."""
    ckpt, marker = tmp_path / "ckpt", tmp_path / "pwned"
    _sharded_checkpoint(ckpt, extra={"norm.weight": _Payload(marker)})
    with pytest.raises(CheckpointError, match="refusing to load the checkpoint entry 'model.norm.weight'"):
        consolidate(ckpt, tmp_path / "out")
    assert not marker.exists()


@pytest.mark.parametrize("name", ["../outside.distcp", "/etc/passwd", "sub/../../x", "..", ""])
def test_data_files_must_lie_in_the_folder(tmp_path: Path, name: str) -> None:
    ckpt = tmp_path / "ckpt"
    _sharded_checkpoint(ckpt)
    metadata = load_metadata(ckpt / DCP_DIR / ".metadata")
    first = next(iter(metadata.storage_data))
    metadata.storage_data[first].relative_path = name
    (ckpt / DCP_DIR / ".metadata").write_bytes(pickle.dumps(metadata))
    with pytest.raises(CheckpointError, match="not a file in its own folder"):
        consolidate(ckpt, tmp_path / "out")


def test_truncated_metadata_is_a_clear_error(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    _sharded_checkpoint(ckpt)
    meta = ckpt / DCP_DIR / ".metadata"
    meta.write_bytes(meta.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="truncated or damaged|refusing"):
        consolidate(ckpt, tmp_path / "out")


def test_only_the_safe_reader_calls_dcp_load() -> None:
    """Every DCP read in the package goes through read_sharded (and so through the safe reader)."""
    callers = []
    for path in (ROOT / "cogview").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
                if isinstance(node.func.value, ast.Name) and node.func.value.id == "dcp":
                    callers.append(path.name)
    assert callers == ["sharded_checkpoint.py"]
    source = (ROOT / "cogview/training/sharded_checkpoint.py").read_text(encoding="utf-8")
    assert "storage_reader=SafeFileSystemReader" in source and "planner=SafeLoadPlanner()" in source
