"""On-disk token shards: fixed-length rows of unified ids, written once, read through ``np.memmap``.

A shard folder holds ``manifest.json`` and raw ``shard-NNNNN.bin`` files of ``(rows, seq_len)``
tokens (uint16 when the vocabulary fits, else int32), so training reads any row without
loading or unpickling anything (SPEC 4.1's ``CompactBinaryDataset`` idea with whole sequences).
The manifest records which tokenizers and vocabulary made the tokens: :meth:`TokenShards.open`
refuses shards that a model with other tokenizers would silently misread, and files that are
missing or truncated. Every file is written atomically.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cogview.serialization import atomic_write, read_json, write_json
from cogview.tokenizers.vocab import Vocabulary

logger = logging.getLogger(__name__)

FORMAT = "cogview-token-shards"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
PROGRESS_NAME = "progress.json"  # written by prepare while it runs; replaced by the manifest at the end
DTYPES = ("uint16", "int32")
# Keys TokenShards needs; prepare adds provenance (sources, counts, settings) beside them.
REQUIRED_KEYS = (
    "format",
    "format_version",
    "seq_len",
    "dtype",
    "vocab",
    "shards",
    "total_rows",
    "text_tokenizer",
    "image_tokenizer",
)


def token_dtype(vocab: Vocabulary) -> np.dtype:
    """The smallest on-disk dtype that holds every id of ``vocab``: uint16, or int32 beyond 65536 ids."""
    return np.dtype(np.uint16) if vocab.size <= 2**16 else np.dtype(np.int32)


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.bin"


class ShardWriter:
    """Buffer token rows and write them as one shard file at a time, atomically.

    ``append`` rows ``(n, seq_len)``, then ``write_shard(index)`` writes everything appended since
    the last shard to ``shard-{index:05d}.bin`` (temporary file, fsync, rename), so a shard file
    that exists is always complete.
    """

    def __init__(self, directory: str | os.PathLike, seq_len: int, dtype: np.dtype | str) -> None:
        self.directory = Path(directory)
        self.seq_len = int(seq_len)
        self.dtype = np.dtype(dtype)
        if self.dtype.name not in DTYPES:
            raise ValueError(f"shard dtype must be one of {DTYPES}, got {self.dtype.name}")
        self._pending: list[np.ndarray] = []

    @property
    def pending(self) -> int:
        """Rows appended since the last written shard."""
        return sum(len(r) for r in self._pending)

    def append(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows)
        if rows.ndim != 2 or rows.shape[1] != self.seq_len:
            raise ValueError(f"rows must have shape (n, {self.seq_len}), got {rows.shape}")
        info = np.iinfo(self.dtype)
        if rows.size and (rows.min() < 0 or rows.max() > info.max):
            raise ValueError(
                f"token ids must lie in [0, {info.max}] to be stored as {self.dtype.name}; "
                f"found {int(rows.min())}..{int(rows.max())}"
            )
        self._pending.append(rows.astype(self.dtype))

    def write_shard(self, index: int) -> dict[str, Any] | None:
        """Write the pending rows as shard ``index``; returns ``{"file", "rows"}``, or None if none pend."""
        if not self._pending:
            return None
        data = np.ascontiguousarray(np.concatenate(self._pending))
        self._pending = []
        name = shard_name(index)

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                f.write(data.tobytes())

        atomic_write(self.directory / name, write)
        return {"file": name, "rows": len(data)}


def write_manifest(directory: str | os.PathLike, manifest: Mapping[str, Any]) -> None:
    """Check the keys :class:`TokenShards` needs and write ``manifest.json`` atomically."""
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    assert not missing, f"manifest lacks {missing}"
    assert manifest["total_rows"] == sum(s["rows"] for s in manifest["shards"])
    write_json(Path(directory) / MANIFEST_NAME, dict(manifest))


def _fingerprint(manifest: Mapping[str, Any], which: str) -> str | None:
    entry = manifest.get(which)
    return entry.get("fingerprint") if isinstance(entry, Mapping) else None


class TokenShards:
    """Read-only view of a shard folder: ``len()`` rows of ``seq_len`` tokens; build with :meth:`open`."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest
        self.seq_len: int = manifest["seq_len"]
        self.dtype = np.dtype(manifest["dtype"])
        self.vocab = Vocabulary.from_dict(manifest["vocab"])
        self.files = [path / s["file"] for s in manifest["shards"]]
        counts = np.array([s["rows"] for s in manifest["shards"]], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(counts)])  # shard i holds rows [o[i], o[i+1])
        self._maps: list[np.memmap] | None = None

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        *,
        text_fingerprint: str | None = None,
        image_fingerprint: str | None = None,
        vocab: Vocabulary | None = None,
    ) -> TokenShards:
        """Open the shard folder ``path``, checking it against the model's tokenizers and vocabulary.

        Each given fingerprint (``TextTokenizer.fingerprint``, ``ImageTokenizer.fingerprint``)
        and ``vocab`` must equal the manifest's, and every shard file must exist with exactly the
        recorded size; otherwise a ValueError says what differs and to re-run ``cogview prepare``.
        """
        path = Path(path)
        manifest_path = path / MANIFEST_NAME
        if not manifest_path.is_file():
            hint = (
                "prepare did not finish there; continue it with cogview prepare --resume"
                if (path / PROGRESS_NAME).is_file()
                else "make shards with cogview prepare --dataset NAME --out DIR"
            )
            raise ValueError(f"{path} has no {MANIFEST_NAME}: {hint}")
        manifest = read_json(manifest_path)
        missing = [k for k in REQUIRED_KEYS if k not in manifest]
        if manifest.get("format") != FORMAT or missing:
            raise ValueError(f"{manifest_path} is not a cogview token-shard manifest (missing {missing})")
        if manifest["format_version"] != FORMAT_VERSION:
            raise ValueError(
                f"{manifest_path} has format version {manifest['format_version']}, this cogview reads "
                f"version {FORMAT_VERSION}; re-run cogview prepare"
            )
        if manifest["dtype"] not in DTYPES:
            raise ValueError(
                f"{manifest_path}: unknown dtype {manifest['dtype']!r}; expected one of {DTYPES}"
            )
        for which, wanted in (("text_tokenizer", text_fingerprint), ("image_tokenizer", image_fingerprint)):
            made_with = _fingerprint(manifest, which)
            if wanted is not None and made_with != wanted:
                raise ValueError(
                    f"the shards in {path} were made with {which.replace('_', ' ')} {made_with}, but the "
                    f"model uses {wanted}; re-run cogview prepare with the model's tokenizers "
                    f"(or train with the tokenizers the shards were made with)"
                )
        if vocab is not None and Vocabulary.from_dict(manifest["vocab"]) != vocab:
            raise ValueError(
                f"the shards in {path} use vocabulary {manifest['vocab']}, but the model uses "
                f"{vocab.to_dict()}; re-run cogview prepare with the model's tokenizers"
            )
        shards = cls(path, manifest)
        if shards.offsets[-1] != manifest["total_rows"]:
            raise ValueError(
                f"{manifest_path} is inconsistent: shards hold {shards.offsets[-1]} rows but total_rows is "
                f"{manifest['total_rows']}; re-run cogview prepare"
            )
        row_bytes = shards.seq_len * shards.dtype.itemsize
        for f, n in zip(shards.files, np.diff(shards.offsets), strict=True):
            if not f.is_file():
                raise ValueError(f"shard file {f} is missing; re-run cogview prepare into a new folder")
            size = f.stat().st_size
            if size != n * row_bytes:
                raise ValueError(
                    f"shard file {f} has {size} bytes but the manifest records {n} rows x {row_bytes} bytes "
                    f"= {n * row_bytes} (truncated or replaced?); re-run cogview prepare into a new folder"
                )
        logger.debug("opened %d token rows of length %d from %s", len(shards), shards.seq_len, path)
        return shards

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __repr__(self) -> str:
        return f"TokenShards({str(self.path)!r}, rows={len(self)}, seq_len={self.seq_len}, dtype={self.dtype.name})"

    # Memmaps are opened on first use and dropped when pickled (DataLoader workers reopen them)
    # so that pickling never copies the data.
    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "manifest": self.manifest}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["manifest"])

    def _memmaps(self) -> list[np.memmap]:
        if self._maps is None:
            self._maps = [
                np.memmap(f, dtype=self.dtype, mode="r", shape=(int(n), self.seq_len))
                for f, n in zip(self.files, np.diff(self.offsets), strict=True)
            ]
        return self._maps

    def rows(self, indices: np.ndarray | list[int]) -> np.ndarray:
        """Token rows ``(n, seq_len)`` as int64 for row ``indices`` (any order, repeats allowed)."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        bad = indices[(indices < 0) | (indices >= n)]
        if bad.size:
            raise IndexError(f"row indices must lie in [0, {n}); found {bad[:5].tolist()}")
        out = np.empty((len(indices), self.seq_len), dtype=np.int64)
        shard = np.searchsorted(self.offsets, indices, side="right") - 1
        maps = self._memmaps()
        for s in np.unique(shard):
            where = np.nonzero(shard == s)[0]
            out[where] = maps[s][indices[where] - self.offsets[s]]
        return out

    def __getitem__(self, index: int) -> np.ndarray:
        """One row ``(seq_len,)`` as int64."""
        return self.rows(np.array([index]))[0]

    def rows_for_rank(self, rank: int, world_size: int) -> np.ndarray:
        """This rank's row indices for data-parallel training: every ``world_size``-th row.

        Every rank gets ``len(self) // world_size`` rows (the remainder is left out) so that all
        ranks run the same number of steps.
        """
        return _strided_rows(len(self), rank, world_size)

    def rows_of_rank(self, indices: np.ndarray, rank: int, world_size: int) -> np.ndarray:
        """The token rows this rank reads of a global batch of row ``indices`` (see :func:`rank_part`)."""
        return self.rows(rank_part(indices, rank, world_size))


class ShardMixture:
    """Several shard folders read as one, each repeated a whole number of times (CogView's mixing).

    The original weighted its sources by repeating them (text-to-image x4, image-to-text x2);
    we do the same on a virtual concatenation, so the training loop's per-epoch permutation sees
    ``sum(repeat_i * len_i)`` rows and resuming still needs only the step. All sources must share
    vocabulary, sequence length, dtype and both tokenizers.
    """

    def __init__(self, sources: list[TokenShards], repeats: list[int]) -> None:
        if not sources or len(sources) != len(repeats):
            raise ValueError("give one repeat count per shard folder")
        if any(not isinstance(r, int) or r < 1 for r in repeats):
            raise ValueError(f"repeat counts must be positive integers, got {repeats}")
        first = sources[0]
        for other in sources[1:]:
            for what in ("seq_len", "dtype", "vocab"):
                if getattr(other, what) != getattr(first, what):
                    raise ValueError(
                        f"{other.path} and {first.path} differ in {what} ({getattr(other, what)} vs "
                        f"{getattr(first, what)}); prepare all sources with the same tokenizers and text budget"
                    )
            for which in ("text_tokenizer", "image_tokenizer"):
                if _fingerprint(other.manifest, which) != _fingerprint(first.manifest, which):
                    raise ValueError(
                        f"{other.path} and {first.path} were made with different {which.replace('_', ' ')}s; "
                        "prepare all sources with the same tokenizers"
                    )
        self.sources, self.repeats = sources, list(repeats)
        self.seq_len, self.dtype, self.vocab = first.seq_len, first.dtype, first.vocab
        self.path = first.path
        sizes = np.array([len(s) * r for s, r in zip(sources, repeats, strict=True)], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])
        # A multi-task mixture trains every source's task: the model's record (cogview.json) names
        # them all, so a pipeline serves each job from it.
        tasks = [t for s in sources for t in s.manifest.get("tasks") or ()]
        layouts = {k: v for s in sources for k, v in (s.manifest.get("layouts") or {}).items()}
        self.manifest = {
            **first.manifest,
            "tasks": list(dict.fromkeys(tasks)) or first.manifest.get("tasks"),
            "layouts": layouts or first.manifest.get("layouts"),
            "total_rows": int(self.offsets[-1]),
            "mixture": [
                {"path": str(s.path), "repeat": r, "rows": len(s), "identity": s.manifest.get("settings")}
                for s, r in zip(sources, repeats, strict=True)
            ],
        }

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __repr__(self) -> str:
        parts = ", ".join(f"{s.path.name}x{r}" for s, r in zip(self.sources, self.repeats, strict=True))
        return f"ShardMixture({parts}, rows={len(self)}, seq_len={self.seq_len})"

    def rows(self, indices: np.ndarray | list[int]) -> np.ndarray:
        """Rows of the virtual concatenation (a repeated source maps back to its own rows)."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"row indices must lie in [0, {len(self)})")
        out = np.empty((len(indices), self.seq_len), dtype=np.int64)
        which = np.searchsorted(self.offsets, indices, side="right") - 1
        for s in np.unique(which):
            where = np.nonzero(which == s)[0]
            local = (indices[where] - self.offsets[s]) % len(self.sources[s])
            out[where] = self.sources[s].rows(local)
        return out

    def __getitem__(self, index: int) -> np.ndarray:
        return self.rows(np.array([index]))[0]

    def rows_for_rank(self, rank: int, world_size: int) -> np.ndarray:
        """Every ``world_size``-th row of the virtual concatenation, as :meth:`TokenShards.rows_for_rank`."""
        return _strided_rows(len(self), rank, world_size)

    def rows_of_rank(self, indices: np.ndarray, rank: int, world_size: int) -> np.ndarray:
        """The token rows this rank reads of a global batch of row ``indices`` (see :func:`rank_part`)."""
        return self.rows(rank_part(indices, rank, world_size))


def _strided_rows(n: int, rank: int, world_size: int) -> np.ndarray:
    _check_rank(rank, world_size)
    per_rank = n // world_size
    if per_rank == 0:
        raise ValueError(f"{n} rows cannot be split over {world_size} ranks; prepare more data")
    return np.arange(rank, per_rank * world_size, world_size, dtype=np.int64)


def _check_rank(rank: int, world_size: int) -> None:
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, world_size={world_size}), got {rank}")


def rank_part(indices: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Rank ``rank``'s contiguous block of a global batch: ``indices[rank * b : (rank + 1) * b]``.

    Data-parallel training splits each global micro-batch into ``world_size`` equal blocks in
    rank order, so the ranks together read exactly the rows, in the order, that one process
    would read for the same global batch: losses and gradients match the single-process run.
    """
    _check_rank(rank, world_size)
    indices = np.asarray(indices).reshape(-1)
    if len(indices) % world_size:
        raise ValueError(
            f"a batch of {len(indices)} rows cannot be split evenly over {world_size} ranks; "
            f"make batch_size a multiple of the number of processes"
        )
    b = len(indices) // world_size
    return indices[rank * b : (rank + 1) * b]


def open_data(spec: str | os.PathLike | list, **checks: Any) -> TokenShards | ShardMixture:
    """One shard folder, or a list of folders / ``{"path": ..., "repeat": n}`` entries mixed by repeats.

    ``checks`` (fingerprints, vocab) are applied to every folder as in :meth:`TokenShards.open`.
    """
    if isinstance(spec, str | os.PathLike):
        return TokenShards.open(Path(spec).expanduser().resolve(), **checks)
    if not isinstance(spec, list) or not spec:
        raise ValueError(
            "data must be a shard folder or a non-empty list of folders / {path, repeat} entries"
        )
    sources, repeats = [], []
    for entry in spec:
        if isinstance(entry, dict):
            unknown = set(entry) - {"path", "repeat"}
            if unknown or "path" not in entry:
                raise ValueError(f"data entries are {{'path': ..., 'repeat': n}}, got {entry}")
            path, repeat = entry["path"], entry.get("repeat", 1)
        else:
            path, repeat = entry, 1
        sources.append(TokenShards.open(Path(path).expanduser().resolve(), **checks))
        repeats.append(repeat)
    return sources[0] if len(sources) == 1 and repeats[0] == 1 else ShardMixture(sources, repeats)
