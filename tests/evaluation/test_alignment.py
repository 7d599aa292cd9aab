"""Alignment prompts and scoring for the emoji sets (the shapes and digits paths run in benchmarks)."""

from __future__ import annotations

from pathlib import Path

from cogview.datasets import emoji
from cogview.evaluation.alignment import alignment_prompts, evaluate_alignment, headline
from cogview.pipeline import CogViewPipeline


def test_emoji_prompts_are_bare_names_of_a_seeded_draw() -> None:
    train = alignment_prompts("emoji-train", "zh", 5)
    assert train == alignment_prompts("emoji-train", "zh", 5)
    for prompt, attrs in train:
        assert prompt == emoji.canonical_caption(attrs["emoji"], "zh")
    test = alignment_prompts("emoji-test", "en", 300)
    assert len(test) == 300 and all(attrs["tone"] for _, attrs in test)
    seen = alignment_prompts("emoji-train-tones", "en", 100)
    train_tones = {i.emoji for i in emoji.load("train").infos if i.tone is not None}
    assert len(seen) == 100 and {a["emoji"] for _, a in seen} <= train_tones
    pool = {info.emoji for info in list(emoji.load("train").infos)[:20]}
    assert {a["emoji"] for _, a in alignment_prompts("emoji-train", "en", 50, emoji_pool=20)} == pool


def test_emoji_alignment_scores_with_the_checker(tiny_model_dir: Path) -> None:
    pipe = CogViewPipeline.from_pretrained(tiny_model_dir)
    result = evaluate_alignment(
        pipe, "emoji-test", "en", n_prompts=2, images_per_prompt=1, progress=False, candidates=1
    )
    assert set(result["accuracy"]) == {"emoji", "base", "tone", "base_and_tone"} and result["images"] == 2
    assert 0.0 <= headline(result) <= 1.0
