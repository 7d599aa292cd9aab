"""Weight averaging of model folders (``cogview average``): the weighted mean, and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cogview.cli import main
from cogview.model import CogViewTransformer
from cogview.model.config import TransformerConfig
from cogview.serialization import MODEL_INFO_NAME, CheckpointError
from cogview.training.averaging import average_models

INFO = {"format": "cogview-transformer", "tasks": ["text_to_image"], "text_tokenizer": {"fingerprint": "abc"}}


def _folder(path: Path, seed: int, step: int = 100, dim: int = 32, info: dict | None = None) -> Path:
    torch.manual_seed(seed)
    model = CogViewTransformer(
        TransformerConfig(vocab_size=64, dim=dim, n_layers=2, n_heads=4, max_seq_len=16)
    )
    model.save_pretrained(path)
    (path / MODEL_INFO_NAME).write_text(json.dumps({**(info or INFO), "step": step}))
    return path


def test_weighted_mean_of_two_runs(tmp_path: Path) -> None:
    a, b = _folder(tmp_path / "a", 0, step=100), _folder(tmp_path / "b", 1, step=250)
    out = average_models([a, b], tmp_path / "mean", weights=[3, 1])
    mean = CogViewTransformer.from_pretrained(out).state_dict()
    sa = CogViewTransformer.from_pretrained(a).state_dict()
    sb = CogViewTransformer.from_pretrained(b).state_dict()
    for k, v in mean.items():
        torch.testing.assert_close(v, 0.75 * sa[k] + 0.25 * sb[k])
    assert not torch.equal(mean["tok_embeddings.weight"], sa["tok_embeddings.weight"])
    info = json.loads((out / MODEL_INFO_NAME).read_text())
    assert info["tasks"] == ["text_to_image"]
    assert info["averaged_from"] == [{"path": str(a), "weight": 0.75}, {"path": str(b), "weight": 0.25}]
    # the mean of a model with itself is the model
    same = average_models([a, a], tmp_path / "same")
    for k, v in CogViewTransformer.from_pretrained(same).state_dict().items():
        torch.testing.assert_close(v, sa[k])


def test_refuses_what_cannot_be_averaged(tmp_path: Path) -> None:
    a, b = _folder(tmp_path / "a", 0), _folder(tmp_path / "b", 1)
    wide = _folder(tmp_path / "wide", 2, dim=64)
    other = _folder(tmp_path / "other", 3, info={**INFO, "text_tokenizer": {"fingerprint": "xyz"}})
    with pytest.raises(CheckpointError, match="config.json differs"):
        average_models([a, wide], tmp_path / "out")
    with pytest.raises(CheckpointError, match="one vocabulary"):
        average_models([a, other], tmp_path / "out")
    bare = _folder(tmp_path / "bare", 4)
    (bare / MODEL_INFO_NAME).unlink()
    with pytest.raises(CheckpointError, match="has none"):
        average_models([a, bare], tmp_path / "out")
    with pytest.raises(ValueError, match="at least two"):
        average_models([a], tmp_path / "out")
    with pytest.raises(ValueError, match="one per folder"):
        average_models([a, b], tmp_path / "out", weights=[1.0])
    with pytest.raises(ValueError, match="positive sum"):
        average_models([a, b], tmp_path / "out", weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="one of the inputs"):
        average_models([a, b], a)
    (b / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        average_models([a, b], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = _folder(tmp_path / "a", 0), _folder(tmp_path / "b", 1)
    assert main(["average", str(a), str(b), "--out", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "model.safetensors").is_file()
    assert main(["average", str(a), str(b), "--weights", "1", "--out", str(tmp_path / "n")]) == 2
    assert "one per folder" in capsys.readouterr().err
