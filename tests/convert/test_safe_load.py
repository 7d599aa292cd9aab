"""Opening the original pickles: allow-listed weights_only loading, refusals, checkpoint folders."""

from __future__ import annotations

import gc
import os
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import OriginalFiles

from cogview.convert import resolve_checkpoint, safe_torch_load
from cogview.convert.safe_load import allowed_globals, model_states
from cogview.serialization import CheckpointError


def write_marker(path: str) -> None:
    Path(path).write_text("code from the pickle ran")


class Payload:
    """An object whose unpickling calls ``write_marker``: what a malicious checkpoint would carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (write_marker, (str(self.marker),))


def test_deepspeed_file_loads_with_its_bookkeeping(original: OriginalFiles) -> None:
    ckpt = safe_torch_load(original.model_file)
    assert ckpt["iteration"] == 142000 and ckpt["mp_world_size"] == 1
    assert ckpt["np_rng_state"][1].dtype.name == "uint32"  # numpy RNG state (allow-listed globals)
    assert set(model_states(ckpt, "x")) == set(original.module)
    assert ckpt["module"]["word_embeddings.weight"].dtype == torch.float16


def test_sat_file_with_argparse_namespace_loads(original_sat: OriginalFiles) -> None:
    ckpt = safe_torch_load(original_sat.model_file)
    assert ckpt["args"].hidden_size == 64
    assert "transformer.word_embeddings.weight" in ckpt["module"]


def rewrite_pickle(src: Path, dst: Path, old: bytes, new: bytes) -> None:
    """Copy a zip-format torch file, replacing ``old`` by ``new`` in its pickle stream."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("data.pkl"):
                assert old in data
                data = data.replace(old, new)
            zout.writestr(info, data)


def test_numpy_1_file_loads(original: OriginalFiles, tmp_path: Path) -> None:
    # Files written under numpy 1.x name numpy.core.multiarray._reconstruct (numpy 2: numpy._core).
    old = tmp_path / "numpy1.pt"
    rewrite_pickle(original.model_file, old, b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert safe_torch_load(old)["np_rng_state"][0] == "MT19937"


def test_tensors_saved_from_a_gpu_load_on_the_cpu(tmp_path: Path) -> None:
    # The released files were written by DeepSpeed from CUDA tensors: storages tagged "cuda:0".
    torch.save({"module": {"w": torch.arange(4, dtype=torch.float16)}}, tmp_path / "cpu.pt")
    rewrite_pickle(
        tmp_path / "cpu.pt", tmp_path / "gpu.pt", b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0"
    )
    w = safe_torch_load(tmp_path / "gpu.pt")["module"]["w"]
    assert w.device.type == "cpu" and w.tolist() == [0, 1, 2, 3]


def test_arbitrary_object_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    torch.save({"module": {"w": torch.zeros(2)}, "extra": Payload(marker)}, path)
    with pytest.raises(CheckpointError, match=r"refusing to load .*evil\.pt.*write_marker"):
        safe_torch_load(path)
    assert not marker.exists()
    # The payload is live: an unsafe load would have run it.
    torch.load(path, weights_only=False)
    assert marker.read_text() == "code from the pickle ran"


def test_allow_list_is_applied_only_around_the_call(original: OriginalFiles) -> None:
    safe_torch_load(original.model_file)
    # (torch registers some globals of its own lazily, so compare only ours)
    leaked = [g for g in torch.serialization.get_safe_globals() if g in allowed_globals()]
    assert leaked == []
    with pytest.raises(Exception, match="numpy"):
        torch.load(original.model_file, weights_only=True)


def test_truncated_file_is_a_clear_error(original: OriginalFiles, tmp_path: Path) -> None:
    data = original.model_file.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        safe_torch_load(cut)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="not a torch checkpoint"):
        safe_torch_load(tmp_path / "empty.pt")
    (tmp_path / "legacy-cut.pt").write_bytes(b"\x80\x02" + b"\x00" * 10)
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint.*truncated"):
        safe_torch_load(tmp_path / "legacy-cut.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        safe_torch_load(tmp_path / "missing.pt")


def test_legacy_pickle_format_loads_without_mmap(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "legacy.pt"
    torch.save(
        {"module": {"w": torch.ones(3, dtype=torch.float16)}}, path, _use_new_zipfile_serialization=False
    )
    assert torch.equal(safe_torch_load(path)["module"]["w"], torch.ones(3, dtype=torch.float16))
    assert "cannot be memory-mapped" in caplog.text


def test_zip_files_are_memory_mapped(original: OriginalFiles, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: calls.append(kw) or load(*a, **kw))
    safe_torch_load(original.model_file)
    assert calls == [{"map_location": "cpu", "weights_only": True, "mmap": True}]


def test_resolve_checkpoint_folders(original: OriginalFiles) -> None:
    folder = original.checkpoint
    assert resolve_checkpoint(folder) == (original.model_file, "142000")
    assert resolve_checkpoint(folder / "142000") == (original.model_file, "142000")
    assert resolve_checkpoint(original.model_file) == (original.model_file, None)
    # DeepSpeed's own tracker, and the "release" tag (the original wrongly looked in 0/).
    (folder / "latest_checkpointed_iteration.txt").unlink()
    (folder / "latest").write_text("142000\n")
    assert resolve_checkpoint(folder)[0] == original.model_file
    (folder / "142000").rename(folder / "release")
    (folder / "latest").write_text("release")
    assert resolve_checkpoint(folder) == (folder / "release" / "mp_rank_00_model_states.pt", "release")


@pytest.mark.parametrize(
    ("setup", "match"),
    [
        (
            lambda d: (d / "latest_checkpointed_iteration.txt").unlink(),
            "neither latest_checkpointed_iteration",
        ),
        (
            lambda d: (d / "latest_checkpointed_iteration.txt").write_text("30000"),
            r"30000/mp_rank_00.*does not exist",
        ),
        (
            lambda d: (d / "latest_checkpointed_iteration.txt").write_text("../../etc"),
            "not an iteration number",
        ),
        (lambda d: (d / "142000" / "mp_rank_01_model_states.pt").write_bytes(b""), "model-parallel"),
    ],
)
def test_bad_checkpoint_folders(original: OriginalFiles, setup, match: str) -> None:
    setup(original.checkpoint)
    with pytest.raises(CheckpointError, match=match):
        resolve_checkpoint(original.checkpoint)


def test_missing_folder_and_non_state_dicts(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="not a checkpoint dict"):
        model_states([1, 2], "f.pt")
    with pytest.raises(CheckpointError, match="are not tensors"):
        model_states({"module": {"w": torch.zeros(1), "step": 3}}, "f.pt")


def rss_anon() -> int:
    """Bytes of this process's anonymous resident memory (heap; not file pages mapped from disk)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    pytest.skip("no RssAnon in /proc/self/status")


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc")
def test_reading_a_mapped_checkpoint_costs_no_heap(tmp_path: Path) -> None:
    size = 64 * 2**20
    path = tmp_path / "big.pt"
    torch.save({"module": {"w": torch.ones(size // 2, dtype=torch.float16)}}, path)
    gc.collect()
    before = rss_anon()
    weights = safe_torch_load(path)["module"]["w"]
    assert float(weights[:: 2**10].sum()) == size // 2**11  # touch a value on every page
    mapped = rss_anon() - before
    del weights
    before = rss_anon()
    read = torch.load(path, weights_only=True)["module"]["w"]  # the same file read into memory
    copied = rss_anon() - before
    assert copied > size // 2, copied  # the measure sees a copy
    assert mapped < size // 8, mapped  # ... and the mapped load makes none
    del read


class _System:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_os_system_payload_is_refused_with_the_documented_wording(tmp_path: Path) -> None:
    """torch words a blocked module's global differently from an unknown one; both are refusals."""
    marker, path = tmp_path / "marker", tmp_path / "evil.pt"
    torch.save({"module": {"w": torch.zeros(2)}, "extra": _System(marker)}, path)
    with pytest.raises(CheckpointError, match=r"refusing to load .*evil\.pt.*GLOBAL posix\.system"):
        safe_torch_load(path)
    assert not marker.exists()
