"""A model folder's weights in shards with an index: the same model back, kill-safe saves, and an
index that cannot point outside its folder or lie about its shards."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from cogview import serialization
from cogview.model import PRESETS, CogViewTransformer
from cogview.serialization import (
    INDEX_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    load_folder_weights,
    save_folder_weights,
)


@pytest.fixture(scope="module")
def model() -> CogViewTransformer:
    torch.manual_seed(0)
    return CogViewTransformer(dataclasses.replace(PRESETS["tiny"], vocab_size=512)).eval()


def weight_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != "config.json")


def test_shards_give_the_same_model_and_replace_a_single_file(
    model: CogViewTransformer, tmp_path: Path
) -> None:
    total = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    model.save_pretrained(tmp_path)
    assert weight_files(tmp_path) == [WEIGHTS_NAME]
    model.save_pretrained(tmp_path, max_shard_bytes=total // 3)
    files = weight_files(tmp_path)
    assert WEIGHTS_NAME not in files and INDEX_NAME in files and len(files) >= 4  # 3+ shards and the index
    assert all((tmp_path / f).stat().st_size <= total // 3 + 2**16 for f in files if f != INDEX_NAME)
    loaded = CogViewTransformer.from_pretrained(tmp_path)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    ids = torch.arange(8)[None]
    assert torch.equal(loaded(ids, torch.arange(8)), model(ids, torch.arange(8)))
    model.save_pretrained(tmp_path)  # back to one file: the shards and the index go
    assert weight_files(tmp_path) == [WEIGHTS_NAME]
    with pytest.raises(ValueError, match="positive"):
        save_folder_weights(tmp_path, model.state_dict(), max_shard_bytes=0)


@pytest.mark.parametrize("before", ["one file", "shards"])
def test_a_save_killed_before_its_index_leaves_the_old_weights(
    model: CogViewTransformer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, before: str
) -> None:
    """New shards never overwrite the indexed ones (their names carry the tensors' hash): a save
    killed after writing its shards, before its index, leaves the previous save loadable as it was."""
    total = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    model.save_pretrained(tmp_path, max_shard_bytes=None if before == "one file" else total // 2)
    old = load_folder_weights(tmp_path)
    changed = {k: v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}

    def killed(path: Path, obj: object, indent: int | None = 2) -> None:
        raise KeyboardInterrupt("killed before the index")

    monkeypatch.setattr(serialization, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        save_folder_weights(tmp_path, changed, max_shard_bytes=total // 2)
    monkeypatch.undo()
    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) >= 2  # the new shards are there...
    now = load_folder_weights(tmp_path)
    assert now.keys() == old.keys() and all(torch.equal(now[k], old[k]) for k in old)  # ...unindexed
    save_folder_weights(tmp_path, changed, max_shard_bytes=total // 2)  # a save that finishes
    assert all(torch.equal(load_folder_weights(tmp_path)[k], v) for k, v in changed.items())
    named = set(json.loads((tmp_path / INDEX_NAME).read_text())["weight_map"].values())
    assert {p.name for p in tmp_path.glob("model-*-of-*.safetensors")} == named  # the stale ones went
    assert not (tmp_path / WEIGHTS_NAME).exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: {k: "../outside.safetensors" for k in m}, "shards are model-0000i-of-0000n"),
        (lambda m: {k: "/etc/passwd" for k in m}, "shards are model-0000i-of-0000n"),
        (lambda m: {**m, "extra.weight": next(iter(m.values()))}, "does not hold what"),
        (lambda m: dict(list(m.items())[1:]), "does not hold what"),
        (lambda m: {}, "no weight_map"),
        (lambda m: {k: 3 for k in m}, "shards are"),
    ],
)
def test_a_bad_index_is_refused_with_what_is_wrong(
    model: CogViewTransformer, tmp_path: Path, change, message: str
) -> None:
    total = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    model.save_pretrained(tmp_path, max_shard_bytes=total // 2)
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    index["weight_map"] = change(index["weight_map"])
    (tmp_path / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=message):
        CogViewTransformer.from_pretrained(tmp_path)


def test_a_missing_shard_is_named(model: CogViewTransformer, tmp_path: Path) -> None:
    total = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    model.save_pretrained(tmp_path, max_shard_bytes=total // 2)
    sorted(tmp_path.glob("model-*-of-*.safetensors"))[1].unlink()
    with pytest.raises(CheckpointError, match="does not exist"):
        CogViewTransformer.from_pretrained(tmp_path)
