"""Token shards: write -> memmap read round trip, dtype choice, manifest checks, truncated files."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from cogview.data.shards import FORMAT, FORMAT_VERSION, ShardWriter, TokenShards, token_dtype, write_manifest
from cogview.tokenizers.vocab import Vocabulary


def _write(path: Path, vocab: Vocabulary, counts: list[int], seq_len: int = 6) -> np.ndarray:
    """Shards of random rows with the given row counts; returns all rows in order."""
    rng = np.random.default_rng(0)
    writer = ShardWriter(path, seq_len, token_dtype(vocab))
    shards, rows = [], []
    for i, n in enumerate(counts):
        block = rng.integers(0, vocab.size, size=(n, seq_len))
        writer.append(block[: n // 2])
        writer.append(block[n // 2 :])
        shards.append(writer.write_shard(i))
        rows.append(block)
    write_manifest(
        path,
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "seq_len": seq_len,
            "dtype": token_dtype(vocab).name,
            "vocab": vocab.to_dict(),
            "shards": shards,
            "total_rows": sum(counts),
            "text_tokenizer": {"fingerprint": "text-abc"},
            "image_tokenizer": {"fingerprint": "image-abc"},
        },
    )
    return np.concatenate(rows)


@pytest.mark.parametrize(
    ("vocab", "dtype"),
    [
        (Vocabulary(image_size=16, text_size=20), "uint16"),
        (Vocabulary(image_size=70000, text_size=10), "int32"),
    ],
)
def test_round_trip_exact_values_and_dtype(tmp_path: Path, vocab: Vocabulary, dtype: str) -> None:
    rows = _write(tmp_path, vocab, [5, 3, 4])
    shards = TokenShards.open(
        tmp_path, text_fingerprint="text-abc", image_fingerprint="image-abc", vocab=vocab
    )
    assert len(shards) == 12 and shards.dtype.name == dtype and shards.vocab == vocab
    assert (tmp_path / "shard-00000.bin").stat().st_size == 5 * 6 * np.dtype(dtype).itemsize
    order = np.array([11, 0, 5, 4, 7, 7, 3])
    got = shards.rows(order)
    assert got.dtype == np.int64 and np.array_equal(got, rows[order])
    assert np.array_equal(shards[8], rows[8])
    assert np.array_equal(pickle.loads(pickle.dumps(shards)).rows(np.arange(12)), rows)
    with pytest.raises(IndexError):
        shards.rows([12])


def test_rows_for_rank_split_evenly(tmp_path: Path) -> None:
    _write(tmp_path, Vocabulary(image_size=16, text_size=20), [5, 6])
    shards = TokenShards.open(tmp_path)
    parts = [shards.rows_for_rank(r, 3) for r in range(3)]
    assert [len(p) for p in parts] == [3, 3, 3]
    assert sorted(np.concatenate(parts).tolist()) == list(range(9))
    with pytest.raises(ValueError, match="rank"):
        shards.rows_for_rank(3, 3)


def test_ranks_read_blocks_of_the_global_batch(tmp_path: Path) -> None:
    """Rank r reads block r of a global batch: together the ranks read one process's rows, in order."""
    from cogview.data.shards import ShardMixture, rank_part

    rows = _write(tmp_path, Vocabulary(image_size=16, text_size=20), [5, 6])
    shards = TokenShards.open(tmp_path)
    batch = np.array([10, 3, 3, 7, 0, 9])
    parts = [shards.rows_of_rank(batch, r, 3) for r in range(3)]
    assert np.array_equal(np.concatenate(parts), rows[batch])
    assert rank_part(batch, 1, 2).tolist() == [7, 0, 9]
    with pytest.raises(ValueError, match="make batch_size a multiple of the number of processes"):
        rank_part(batch, 0, 4)
    mix = ShardMixture([shards], [2])
    assert np.array_equal(mix.rows_of_rank(batch + 11, 1, 2), rows[[7, 0, 9]])
    assert len(mix.rows_for_rank(1, 2)) == 11 and mix.rows_for_rank(1, 2)[0] == 1


def test_other_tokenizers_or_vocab_refused(tmp_path: Path) -> None:
    vocab = Vocabulary(image_size=16, text_size=20)
    _write(tmp_path, vocab, [4])
    with pytest.raises(ValueError, match="made with text tokenizer text-abc, but the model uses text-xyz"):
        TokenShards.open(tmp_path, text_fingerprint="text-xyz")
    with pytest.raises(
        ValueError, match="image tokenizer image-abc, but the model uses image-xyz.*cogview prepare"
    ):
        TokenShards.open(tmp_path, image_fingerprint="image-xyz")
    with pytest.raises(ValueError, match="vocabulary"):
        TokenShards.open(tmp_path, vocab=Vocabulary(image_size=16, text_size=21))


def test_truncated_or_missing_shard_refused(tmp_path: Path) -> None:
    _write(tmp_path, Vocabulary(image_size=16, text_size=20), [4, 4])
    shard = tmp_path / "shard-00001.bin"
    shard.write_bytes(shard.read_bytes()[:-3])
    with pytest.raises(ValueError, match="shard-00001.bin has 45 bytes .* 48.*truncated"):
        TokenShards.open(tmp_path)
    shard.unlink()
    with pytest.raises(ValueError, match="shard-00001.bin is missing"):
        TokenShards.open(tmp_path)


def test_missing_manifest_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no manifest.json.*cogview prepare"):
        TokenShards.open(tmp_path)


def test_writer_rejects_ids_beyond_the_dtype(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path, 2, "uint16")
    with pytest.raises(ValueError, match="uint16"):
        writer.append(np.array([[0, 70000]]))
    with pytest.raises(ValueError, match="shape"):
        writer.append(np.zeros((1, 3), dtype=np.int64))
    assert writer.write_shard(0) is None and not list(tmp_path.iterdir())


def test_mixture_repeats_sources_and_checks_compatibility(tmp_path: Path) -> None:
    from cogview.data.shards import ShardMixture, open_data

    vocab = Vocabulary(image_size=16, text_size=20)
    a_rows = _write(tmp_path / "a", vocab, [3])
    b_rows = _write(tmp_path / "b", vocab, [1, 1])
    mix = open_data([str(tmp_path / "a"), {"path": str(tmp_path / "b"), "repeat": 2}])
    assert isinstance(mix, ShardMixture) and len(mix) == 3 + 2 * 2
    got = mix.rows(np.arange(len(mix)))
    assert np.array_equal(got[:3], a_rows)
    assert np.array_equal(got[3:5], b_rows) and np.array_equal(got[5:7], b_rows)
    assert isinstance(open_data(str(tmp_path / "a")), TokenShards)
    _write(tmp_path / "c", vocab, [2], seq_len=5)
    with pytest.raises(ValueError, match="differ in seq_len"):
        open_data([str(tmp_path / "a"), str(tmp_path / "c")])
    with pytest.raises(ValueError, match="repeat counts must be positive"):
        open_data([{"path": str(tmp_path / "a"), "repeat": 0}, str(tmp_path / "b")])
