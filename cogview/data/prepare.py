"""Offline tokenisation: image-caption pairs -> image + text tokenizers -> token shards (SPEC 4.1).

Training reads fixed-length token rows, so images are VQ-encoded once here instead of every
epoch. Examples are processed in chunks of ``examples_per_shard``; each chunk becomes one shard
file and is recorded in ``progress.json`` (both written atomically), so a killed run continues
with ``resume=True`` and produces exactly the rows of an uninterrupted one. Bad images are
skipped and counted; the finished folder gets ``manifest.json`` (see :mod:`cogview.data.shards`).
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from cogview import datasets
from cogview.checks import positive_int
from cogview.data import sequences, windows
from cogview.data.sequences import DEFAULT_SR_WINDOW, LAYOUT_OVERHEAD, TASKS
from cogview.data.shards import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_NAME,
    PROGRESS_NAME,
    ShardWriter,
    token_dtype,
    write_manifest,
)
from cogview.datasets.base import Example, check_lang, stable_int
from cogview.serialization import read_json, write_json
from cogview.tokenizers.image import ImageTokenizer
from cogview.tokenizers.text import TextTokenizer
from cogview.tokenizers.vocab import Vocabulary, default_vocab

logger = logging.getLogger(__name__)

# DEFAULT_SR_WINDOW and LAYOUT_OVERHEAD live with the layouts (data.sequences), default_vocab with
# the vocabulary (tokenizers.vocab), so inference needs no prepare; they stay importable from here.
LAYOUTS = {
    "text_to_image": "[ROI1] text [BASE] [BOI1] codes [EOI1] [PAD]...",
    "image_to_text": "[BASE] [BOI1] codes [EOI1] [ROI1] text [EOT] [PAD]...",
    "super_resolution": "[ROI1] text [BASE] [BOI1] low window [EOI1] [ROI2] [POS0] [BASE] [BOI2] 2x window [PAD]...",
}
_MAX_LISTED_SKIPS = 100
_LOAD_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
_ENCODE_ERRORS = (OSError, ValueError, RuntimeError)


def sequence_length(
    tasks: Sequence[str], text_budget: int, grid_size: int, sr_window: int = DEFAULT_SR_WINDOW
) -> int:
    """Row length that fits every layout of ``tasks`` with ``text_budget`` text tokens.

    Whole-image layouts hold ``grid_size``² codes; a super-resolution window holds ``sr_window``²
    low-res codes and ``(2 * sr_window)``² high-res codes.
    """
    codes = {"super_resolution": sr_window**2 + (2 * sr_window) ** 2}
    return max(LAYOUT_OVERHEAD[t] + text_budget + codes.get(t, grid_size**2) for t in tasks)


def _check_tasks(tasks: Sequence[str]) -> tuple[str, ...]:
    tasks = tuple(tasks)
    if not tasks:
        raise ValueError(f"give at least one task among {TASKS}")
    for task in tasks:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; use tasks among {TASKS}")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks must not repeat, got {tasks}")
    return tasks


def _check_languages(languages: Sequence[str]) -> tuple[str, ...]:
    languages = tuple(languages)
    if not languages or len(set(languages)) != len(languages):
        raise ValueError(f"give one or more distinct caption languages among ('zh', 'en'), got {languages}")
    for lang in languages:
        check_lang(lang)
    return languages


def _dataset_id(dataset: str | os.PathLike) -> str:
    if isinstance(dataset, str) and dataset in datasets.DATASET_NAMES:
        return dataset
    return str(Path(dataset).resolve())


def _example_ref(ds: Sequence[Example], index: int) -> str:
    items = getattr(ds, "items", None)  # folder datasets: (relative path, caption)
    if items is not None:
        return str(items[index][0])
    return f"example {index}"


class _Chunker:
    """Turns examples into padded token rows; holds the per-run settings (no I/O)."""

    def __init__(
        self,
        image_tokenizer: ImageTokenizer,
        text_tokenizer: TextTokenizer,
        vocab: Vocabulary,
        tasks: tuple[str, ...],
        languages: tuple[str, ...],
        text_budget: int,
        seq_len: int,
        high_res: Sequence[Example] | None = None,
        sr_window: int = DEFAULT_SR_WINDOW,
    ) -> None:
        self.high_res = high_res  # the same examples at 2x size, for super-resolution rows
        self.sr_window = sr_window
        self.image_tokenizer = image_tokenizer
        self.text_tokenizer = text_tokenizer
        self.vocab = vocab
        self.tasks = tasks
        self.languages = languages
        self.text_budget = text_budget
        self.seq_len = seq_len

    def text_ids(self, text: str) -> tuple[list[int], bool]:
        """Unified ids of ``text`` cut to the text budget, and whether it was cut."""
        ids = self.text_tokenizer.encode(text)
        cut = len(ids) > self.text_budget
        if cut:  # counted and reported once at the end instead of one warning per caption
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                ids = self.text_tokenizer.encode(text, max_length=self.text_budget)
        return self.vocab.text_to_unified(ids), cut

    def _codes(self, examples: list[tuple[int, Example]]) -> list[tuple[np.ndarray, np.ndarray | None]]:
        low = self.image_tokenizer.encode([ex.image for _, ex in examples]).cpu().numpy()
        if self.high_res is None:
            return [(c, None) for c in low]
        size = 2 * self.image_tokenizer.image_size
        high_images = [self.high_res[i].image for i, _ in examples]
        high = self.image_tokenizer.encode(high_images, size=size).cpu().numpy()
        return list(zip(low, high, strict=True))

    def encode_images(
        self, examples: list[tuple[int, Example]], skipped: list[list[str]], refs: dict[int, str]
    ) -> list[tuple[int, Example, np.ndarray, np.ndarray | None]]:
        """(index, example, codes, 2x codes or None) per example; failures are skipped individually."""
        if not examples:
            return []
        try:
            return [(i, ex, *c) for (i, ex), c in zip(examples, self._codes(examples), strict=True)]
        except (*_ENCODE_ERRORS, *_LOAD_ERRORS):
            pass  # find the culprit(s) one image at a time
        out = []
        for i, ex in examples:
            try:
                out.append((i, ex, *self._codes([(i, ex)])[0]))
            except (*_ENCODE_ERRORS, *_LOAD_ERRORS) as e:
                skipped.append([refs[i], f"image tokenizer failed: {type(e).__name__}: {e}"])
        return out

    def sr_window_row(
        self, index: int, lang: str, text: list[int], low: np.ndarray, high: np.ndarray
    ) -> sequences.TokenSequence:
        """One super-resolution window per (example, language), picked by a stable hash.

        Every window position of :func:`~cogview.data.windows.magnify_windows` is seen across
        the dataset, in the exact layout inference uses, at one row's cost per caption.
        """
        wins = windows.magnify_windows(*low.shape, self.sr_window)
        win = wins[stable_int(f"sr-window-{index}-{lang}") % len(wins)]
        rows, cols = win.high_slices()
        return sequences.super_resolution_window(text, win.low(low), high[rows, cols], self.vocab)

    def rows(
        self, index: int, ex: Example, codes: np.ndarray, high: np.ndarray | None, counts: Counter
    ) -> list[np.ndarray]:
        out = []
        for lang in self.languages:
            caption = ex.caption(lang)
            if not caption:
                continue
            text, cut = self.text_ids(caption)
            counts["truncated_captions"] += cut
            for task in self.tasks:
                if task == "text_to_image":
                    seq = sequences.text_to_image(text, codes, self.vocab)
                elif task == "super_resolution":
                    seq = self.sr_window_row(index, lang, text, codes, high)
                else:
                    seq = sequences.image_to_text(codes, text, self.vocab)
                out.append(sequences.pad(seq, self.seq_len, self.vocab).tokens)
                counts[f"task:{task}"] += 1
                counts[f"lang:{lang}"] += 1
        counts["examples_used" if out else "examples_without_caption"] += 1
        return out


def _settings_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [
        f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k)
    ]


def _valid_chunks(out: Path, chunks: list[dict[str, Any]], row_bytes: int) -> list[dict[str, Any]]:
    """The completed chunks up to the first whose shard file is missing or has the wrong size."""
    for k, chunk in enumerate(chunks):
        shard = chunk["shard"]
        if shard is not None:
            f = out / shard["file"]
            if not f.is_file() or f.stat().st_size != shard["rows"] * row_bytes:
                logger.warning("%s is missing or damaged; redoing chunks from %d on", f, chunk["index"])
                return chunks[:k]
    return chunks


def prepare(
    dataset: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    split: str = "train",
    image_tokenizer: ImageTokenizer,
    text_tokenizer: TextTokenizer,
    vocab: Vocabulary | None = None,
    tasks: Sequence[str] = ("text_to_image",),
    languages: Sequence[str] = ("zh", "en"),
    text_budget: int = 32,
    max_examples: int | None = None,
    batch_size: int = 256,
    examples_per_shard: int = 1024,
    resume: bool = False,
    progress: bool = True,
    sr_window: int = DEFAULT_SR_WINDOW,
    allow_outside: bool = False,
    dataset_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Tokenise ``dataset`` ("shapes", "digits" or a folder) into token shards in ``out_dir``.

    Each example gives one row per (caption language present, task), in example order, padded to
    the manifest's ``seq_len`` (:func:`sequence_length`); captions longer than ``text_budget``
    tokens are cut (and counted). Bad images are skipped and counted.

    Args:
        vocab: the unified vocabulary; default :func:`default_vocab` of the two tokenizers.
        max_examples: use only the first examples of the split.
        batch_size: images per image-tokenizer call.
        examples_per_shard: examples per chunk; each chunk is one shard file and one resume point.
        resume: continue an interrupted run in ``out_dir`` (its settings must be the same).
        progress: show a tqdm progress bar.
        sr_window: low-res codes per side of a super-resolution window; each example renders or
            resizes its image at 2x size too and gives one window row per caption language.
        allow_outside: a folder dataset may read images outside its folder (``..``, absolute
            paths, symlinks out); by default they are skipped and counted.
        dataset_options: more keyword arguments for the dataset's loader (e.g. ``all_templates``
            for emoji); recorded in the manifest's settings, so a resume with others is refused.

    Returns:
        The manifest, also written to ``out_dir/manifest.json``.
    """
    tasks = _check_tasks(tasks)
    languages = _check_languages(languages)
    for name, value in (
        ("text_budget", text_budget),
        ("batch_size", batch_size),
        ("examples_per_shard", examples_per_shard),
    ):
        positive_int(name, value, type_error=ValueError)
    if max_examples is not None and (not isinstance(max_examples, int) or max_examples < 0):
        raise ValueError(f"max_examples must be a non-negative int or None, got {max_examples!r}")
    vocab = vocab if vocab is not None else default_vocab(image_tokenizer, text_tokenizer)
    if vocab.image_size != image_tokenizer.codebook_size or vocab.text_size != text_tokenizer.vocab_size:
        raise ValueError(
            f"vocabulary (image_size={vocab.image_size}, text_size={vocab.text_size}) does not match the "
            f"tokenizers ({image_tokenizer.codebook_size} codes, {text_tokenizer.vocab_size} text pieces); "
            f"use default_vocab(image_tokenizer, text_tokenizer)"
        )
    if "super_resolution" in tasks and not 1 <= sr_window <= image_tokenizer.grid_size:
        raise ValueError(
            f"sr_window must be between 1 and the code grid side {image_tokenizer.grid_size}, got {sr_window}"
        )
    seq_len = sequence_length(tasks, text_budget, image_tokenizer.grid_size, sr_window)
    dtype = token_dtype(vocab)
    text_fp, image_fp = text_tokenizer.fingerprint, image_tokenizer.fingerprint
    settings = {
        "dataset": _dataset_id(dataset),
        "split": split,
        "tasks": list(tasks),
        "languages": list(languages),
        "text_budget": text_budget,
        "max_examples": max_examples,
        "examples_per_shard": examples_per_shard,
        "image_size": image_tokenizer.image_size,
        "seq_len": seq_len,
        "vocab": vocab.to_dict(),
        "text_tokenizer": text_fp,
        "image_tokenizer": image_fp,
    }
    if dataset_options:
        settings["dataset_options"] = dict(sorted(dataset_options.items()))
    if "super_resolution" in tasks:
        settings["sr_window"] = sr_window

    started = time.perf_counter()
    # Loaded before touching out_dir, so that a wrong name or split leaves no folder behind.
    options = {**(dataset_options or {}), **({"allow_outside": True} if allow_outside else {})}
    ds = datasets.load(dataset, split, size=image_tokenizer.image_size, **options)
    high_res = None
    if "super_resolution" in tasks:
        high_res = datasets.load(dataset, split, size=2 * image_tokenizer.image_size, **options)
    out = Path(out_dir)
    chunks = _start_or_resume(out, settings, resume, seq_len * dtype.itemsize)
    if chunks is None:  # already finished with these settings
        return read_json(out / MANIFEST_NAME)

    n = len(ds) if max_examples is None else min(len(ds), max_examples)
    load_skipped = [list(s) for s in getattr(ds, "skipped", [])]
    n_chunks = (n + examples_per_shard - 1) // examples_per_shard
    chunker = _Chunker(
        image_tokenizer, text_tokenizer, vocab, tasks, languages, text_budget, seq_len, high_res, sr_window
    )
    writer = ShardWriter(out, seq_len, dtype)
    done = chunks[-1]["examples"][1] if chunks else 0
    if chunks:
        logger.info("resuming %s: %d of %d chunks already done", out, len(chunks), n_chunks)

    with tqdm(total=n, initial=done, unit="ex", desc="prepare", disable=not progress) as bar:
        for c in range(len(chunks), n_chunks):
            start, stop = c * examples_per_shard, min((c + 1) * examples_per_shard, n)
            counts: Counter = Counter()
            skipped: list[list[str]] = []
            for b in range(start, stop, batch_size):
                batch, refs = [], {}
                for i in range(b, min(b + batch_size, stop)):
                    refs[i] = _example_ref(ds, i)
                    try:
                        batch.append((i, ds[i]))
                    except _LOAD_ERRORS as e:
                        skipped.append([refs[i], f"unreadable image: {type(e).__name__}: {e}"])
                rows = []
                for i, ex, codes, high in chunker.encode_images(batch, skipped, refs):
                    rows += chunker.rows(i, ex, codes, high, counts)
                if rows:
                    writer.append(np.stack(rows))
                bar.update(min(b + batch_size, stop) - b)
            chunks.append(
                {
                    "index": c,
                    "examples": [start, stop],
                    "shard": writer.write_shard(c),
                    "counts": dict(sorted(counts.items())),
                    "skipped": skipped,
                }
            )
            write_json(out / PROGRESS_NAME, {"settings": settings, "chunks": chunks})

    manifest = _manifest(
        settings, chunks, load_skipped, n, dtype, image_tokenizer, text_tokenizer, batch_size
    )
    if manifest["total_rows"] == 0:
        raise ValueError(
            f"no rows from {n} examples of {settings['dataset']} ({split}): {manifest['skipped']['count']} "
            f"skipped, {manifest['examples']['without_caption']} without a caption in {list(languages)}; "
            f"check the data or the languages"
        )
    write_manifest(out, manifest)
    (out / PROGRESS_NAME).unlink(missing_ok=True)
    skipped_total = manifest["skipped"]["count"]
    logger.info(
        "prepared %d rows from %d examples in %.1fs (%d skipped, %d captions cut to %d tokens) -> %s",
        manifest["total_rows"],
        n,
        time.perf_counter() - started,
        skipped_total,
        manifest["truncated_captions"],
        text_budget,
        out,
    )
    if skipped_total:
        first = manifest["skipped"]["first"][0]
        logger.warning("skipped %d bad examples (first: %s: %s); see manifest.json", skipped_total, *first)
    return manifest


def _start_or_resume(
    out: Path, settings: dict[str, Any], resume: bool, row_bytes: int
) -> list[dict[str, Any]] | None:
    """Completed chunks to continue from ([] for a fresh start), or None if ``out`` is already finished."""
    if (out / MANIFEST_NAME).is_file():
        finished = read_json(out / MANIFEST_NAME).get("settings", {})
        core = {k: finished.get(k) for k in settings}
        if resume and core == settings:
            logger.info("%s is already complete; nothing to do", out)
            return None
        if resume:
            diff = "; ".join(_settings_diff(core, settings))
            raise ValueError(
                f"{out} already holds finished token shards made with other settings ({diff}); "
                f"choose a new --out folder"
            )
        raise ValueError(
            f"{out} already holds finished token shards; train on them, or choose a new --out folder"
        )
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; choose a folder")
    if not out.exists() or not any(out.iterdir()):
        out.mkdir(parents=True, exist_ok=True)
        # Written before any work, so that even a run killed in its first chunk can be resumed.
        write_json(out / PROGRESS_NAME, {"settings": settings, "chunks": []})
        return []
    if not resume:
        raise ValueError(
            f"{out} is not empty; pass --resume (resume=True) to continue an interrupted prepare, "
            f"or choose a new folder"
        )
    if not (out / PROGRESS_NAME).is_file():
        raise ValueError(
            f"{out} is not empty and has no {PROGRESS_NAME}, so it cannot be resumed; choose a new folder"
        )
    state = read_json(out / PROGRESS_NAME)
    diff = _settings_diff(state.get("settings", {}), settings)
    if diff:
        raise ValueError(
            f"cannot resume {out} with different settings ({'; '.join(diff)}); rerun with the original "
            f"settings or use a new folder"
        )
    for stale in out.glob(".*.tmp"):  # temporary files of a write that was killed
        stale.unlink()
    return _valid_chunks(out, state["chunks"], row_bytes)


def _manifest(
    settings: dict[str, Any],
    chunks: list[dict[str, Any]],
    load_skipped: list[list[str]],
    n_examples: int,
    dtype: np.dtype,
    image_tokenizer: ImageTokenizer,
    text_tokenizer: TextTokenizer,
    batch_size: int,
) -> dict[str, Any]:
    counts: Counter = Counter()
    for chunk in chunks:
        counts.update(chunk["counts"])
    skipped = load_skipped + [s for chunk in chunks for s in chunk["skipped"]]
    shards = [chunk["shard"] for chunk in chunks if chunk["shard"] is not None]
    tasks, languages = settings["tasks"], settings["languages"]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "seq_len": settings["seq_len"],
        "dtype": dtype.name,
        "vocab": settings["vocab"],
        "tasks": tasks,
        "layouts": {t: LAYOUTS[t] for t in tasks},
        "languages": languages,
        "shards": shards,
        "total_rows": sum(s["rows"] for s in shards),
        "rows_per_task": {t: counts[f"task:{t}"] for t in tasks},
        "rows_per_language": {lang: counts[f"lang:{lang}"] for lang in languages},
        "text_tokenizer": {
            "fingerprint": text_tokenizer.fingerprint,
            "vocab_size": text_tokenizer.vocab_size,
        },
        "image_tokenizer": {
            "fingerprint": settings["image_tokenizer"],
            "codebook_size": image_tokenizer.codebook_size,
            "grid_size": image_tokenizer.grid_size,
            "image_size": image_tokenizer.image_size,
        },
        "sources": [{"dataset": settings["dataset"], "split": settings["split"], "examples": n_examples}],
        "examples": {
            "total": n_examples,
            "used": counts["examples_used"],
            "without_caption": counts["examples_without_caption"],
            "skipped": len(skipped),
        },
        "skipped": {"count": len(skipped), "first": skipped[:_MAX_LISTED_SKIPS]},
        "truncated_captions": counts["truncated_captions"],
        "settings": {**settings, "batch_size": batch_size},
    }
