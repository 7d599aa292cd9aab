"""Prompt alignment of generated images, measured with the project's own checkers.

Canonical prompts are built from held-out test attributes (shapes: colour, shape, background,
position; digits: the digit), images are generated with fixed seeds, and each image is judged by
the deterministic shapes detector or the digit classifier (trained on the train split only).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from cogview.datasets import checkers, digits, shapes
from cogview.datasets.base import stable_int

EMOJI_SETS = ("emoji-train", "emoji-test", "emoji-train-tones")


def alignment_prompts(
    dataset: str, lang: str, n_prompts: int, emoji_pool: int | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """``n_prompts`` canonical prompts with the attributes an aligned image must show.

    emoji-train: the bare names of train emoji (recall), emoji-test: of the held-out skin-tone
    variants (composition), emoji-train-tones: of the train split's skin-tone variants (the pairs
    a model saw: the control for emoji-test), each a seeded random draw; ``emoji_pool`` limits the
    draw to the first emoji of the split (a model trained on a subset).
    """
    if dataset in EMOJI_SETS:
        from cogview.datasets import emoji

        split = dataset.removeprefix("emoji-").removesuffix("-tones")
        infos = list(emoji.load(split).infos)
        if dataset.endswith("-tones"):
            infos = [i for i in infos if i.tone is not None]
        infos = infos[:emoji_pool]
        infos.sort(key=lambda info: stable_int("cogview-emoji-alignment", info.emoji))
        return [(emoji.canonical_caption(i.emoji, lang), i.attributes) for i in infos[:n_prompts]]
    if dataset == "shapes":
        test = shapes.load("test")
        seen: dict[str, dict[str, Any]] = {}
        for i in range(len(test)):
            attrs = test.scene(i).attributes
            prompt = shapes.canonical_caption(attrs, lang)
            seen.setdefault(prompt, attrs)
            if len(seen) == n_prompts:
                break
        return list(seen.items())
    if dataset == "digits":
        return [(digits.canonical_caption(i % 10, lang), {"digit": i % 10}) for i in range(n_prompts)]
    raise ValueError(
        f"alignment is defined for 'shapes', 'digits' and {' and '.join(map(repr, EMOJI_SETS))}, not {dataset!r}"
    )


def evaluate_alignment(
    pipe: Any,
    dataset: str,
    lang: str,
    *,
    n_prompts: int,
    images_per_prompt: int,
    seed: int = 0,
    guidance_scale: float | None = None,
    classifier: checkers.DigitClassifier | None = None,
    emoji_checker: checkers.EmojiChecker | None = None,
    emoji_pool: int | None = None,
    progress: bool = True,
    negative_base: bool = False,
    **sampling: Any,
) -> dict[str, Any]:
    """Generate ``images_per_prompt`` images for each canonical prompt and score them.

    Seeds are ``seed + prompt index``, so two settings (e.g. with and without guidance) see the
    same random streams. ``negative_base``: a skin-tone variant's prompt gets its base emoji's
    bare name as the negative prompt (guidance steers from the base toward the tone). Returns
    accuracies per field and the images (for grids).
    """
    prompts = alignment_prompts(dataset, lang, n_prompts, emoji_pool)
    if dataset == "digits" and classifier is None:
        classifier = checkers.DigitClassifier.fit_default(size=pipe.image_tokenizer.image_size)
    if dataset in EMOJI_SETS and emoji_checker is None:
        emoji_checker = checkers.EmojiChecker.build()
    hits: dict[str, int] = {}
    images_out = []
    started = time.perf_counter()
    for k, (prompt, attrs) in enumerate(tqdm(prompts, desc=f"{dataset}/{lang}", disable=not progress)):
        negative = {}
        if negative_base and attrs.get("base"):
            from cogview.datasets import emoji

            negative["negative_prompt"] = emoji.canonical_caption(attrs["base"], lang)
        images = pipe.generate(
            prompt,
            num_images=images_per_prompt,
            seed=seed + k,
            guidance_scale=guidance_scale,
            **negative,
            **sampling,
        )
        images_out.append((prompt, images))
        if dataset == "shapes":
            for im in images:
                for field, ok in checkers.check_shapes(im, attrs).items():
                    hits[field] = hits.get(field, 0) + int(ok)
        elif dataset in EMOJI_SETS:
            for r in emoji_checker.check(images, [attrs["emoji"]] * len(images)):
                for field in ("emoji", "base", "tone"):
                    hits[field] = hits.get(field, 0) + int(r[field])
                hits["base_and_tone"] = hits.get("base_and_tone", 0) + int(r["base"] and r["tone"])
        else:
            predicted = classifier.predict(images)
            hits["digit"] = hits.get("digit", 0) + sum(p == attrs["digit"] for p in predicted)
    total = len(prompts) * images_per_prompt
    return {
        "dataset": dataset,
        "lang": lang,
        "guidance_scale": guidance_scale,
        **({"negative": "base"} if negative_base else {}),
        "images": total,
        "accuracy": {field: count / total for field, count in hits.items()},
        "seconds": time.perf_counter() - started,
        "samples": images_out,
    }


def summary_row(result: dict[str, Any]) -> dict[str, Any]:
    """The JSON-friendly part of :func:`evaluate_alignment`'s result (no images)."""
    return {k: v for k, v in result.items() if k != "samples"}


def headline(result: dict[str, Any]) -> float:
    """The single number the issues ask for: all shapes fields right, the digit right, the emoji
    recalled (train) or its base and tone right (held-out tone variants)."""
    acc = result["accuracy"]
    key = {
        "shapes": "all",
        "digits": "digit",
        "emoji-train": "emoji",
        "emoji-test": "base_and_tone",
        "emoji-train-tones": "base_and_tone",
    }
    return acc[key[result["dataset"]]]


__all__: Sequence[str] = ["alignment_prompts", "evaluate_alignment", "headline", "summary_row"]
