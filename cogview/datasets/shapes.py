"""Procedural "shapes" scenes: one coloured circle, square or triangle on a plain background.

A scene is a small discrete record (shape, colour, background, position, quantised size and
jitter) drawn from an RNG keyed by (seed, split, index). Scenes go to splits by a hash of their
key that ignores the seed, so no scene key is ever in both train and test, whatever the seeds.
Geometry lives in 32-px units and is drawn at 8x with PIL, then box-downsampled, so any `size`
renders the same anti-aliased scene (what super-resolution needs) and solid pixels keep the
exact palette RGB. Shapes are 12-14 px wide at 32 px so that an 8x8-code VQ-VAE keeps them.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageDraw

from cogview.datasets.base import Example, ExampleSequence, check_lang, check_size, check_split, stable_int

# name -> (RGB, Chinese name); order is part of the scene definition, append only.
PALETTE: dict[str, tuple[tuple[int, int, int], str]] = {
    "red": ((220, 40, 40), "红色"),
    "green": ((40, 180, 60), "绿色"),
    "blue": ((40, 80, 220), "蓝色"),
    "yellow": ((240, 220, 40), "黄色"),
    "white": ((245, 245, 245), "白色"),
    "black": ((20, 20, 20), "黑色"),
    "purple": ((150, 60, 200), "紫色"),
    "orange": ((250, 140, 30), "橙色"),
}
COLOURS = tuple(PALETTE)
SHAPES: dict[str, str] = {"circle": "圆形", "square": "正方形", "triangle": "三角形"}
POSITIONS: dict[str, str] = {
    "center": "中间",
    "left": "左边",
    "right": "右边",
    "top": "上面",
    "bottom": "下面",
}

# Geometry in 32-px units (scaled by size / 32 when drawing).
UNIT = 32.0
OFFSET = 7.0  # distance of the left/right/top/bottom anchors from the centre
ANCHORS: dict[str, tuple[float, float]] = {
    "center": (16.0, 16.0),
    "left": (16.0 - OFFSET, 16.0),
    "right": (16.0 + OFFSET, 16.0),
    "top": (16.0, 16.0 - OFFSET),
    "bottom": (16.0, 16.0 + OFFSET),
}
SIZE_LEVELS = (12.0, 12.5, 13.0, 13.5, 14.0)  # circle diameter / square side / triangle base = height
JITTERS = (-1, 0, 1)
SUPERSAMPLE = 8
TEST_BUCKETS = 10  # 1 in TEST_BUCKETS scene keys belongs to the test split
DEFAULT_LENGTHS = {"train": 20000, "test": 1000}
_SPLIT_SALT = "cogview-shapes-split-v1"

# Caption templates; index 0 is the canonical form. `prep` is "in the" for center, else "on the";
# `a_colour` is the colour with its article ("a red", "an orange").
ZH_TEMPLATES = (
    "{bg}背景上{pos}有一个{colour}{shape}",
    "{pos}有一个{colour}的{shape}，背景是{bg}",
    "一个{colour}{shape}在{bg}背景的{pos}",
    "{bg}的背景，{pos}是一个{colour}{shape}",
)
EN_TEMPLATES = (
    "{a_colour} {shape} {prep} {pos} of {a_bg} background",
    "{a_bg} background with {a_colour} {shape} {prep} {pos}",
    "there is {a_colour} {shape} {prep} {pos} of the {bg} background",
    "{colour} {shape}, {pos}, {bg} background",
)


@dataclass(frozen=True)
class Scene:
    """The discrete description of one image; `key` identifies it across splits and seeds."""

    shape: str
    colour: str
    background: str
    position: str
    size_level: int
    dx: int
    dy: int

    @property
    def key(self) -> str:
        return (
            f"{self.shape}-{self.colour}-{self.background}-{self.position}"
            f"-s{self.size_level}-x{self.dx}-y{self.dy}"
        )

    @property
    def size(self) -> float:
        """Shape extent in 32-px units."""
        return SIZE_LEVELS[self.size_level]

    @property
    def centre(self) -> tuple[float, float]:
        """Centre of the shape's bounding box in 32-px units."""
        ax, ay = ANCHORS[self.position]
        return ax + self.dx, ay + self.dy

    @property
    def attributes(self) -> dict[str, Any]:
        return {
            "shape": self.shape,
            "colour": self.colour,
            "background": self.background,
            "position": self.position,
            "size": self.size,
            "dx": self.dx,
            "dy": self.dy,
            "key": self.key,
        }


def scene_split(scene: Scene) -> str:
    """The only split in which `scene` may appear (a seed-independent hash of its key)."""
    return "test" if stable_int(_SPLIT_SALT, scene.key) % TEST_BUCKETS == 0 else "train"


def sample_scene(split: str, index: int, seed: int = 0) -> Scene:
    """The scene at `index` of `split` for `seed`; rejection-samples until the key belongs to `split`."""
    check_split(split)
    rng = random.Random(stable_int("cogview-shapes-scene", seed, split, index))
    while True:
        colour = rng.randrange(len(COLOURS))
        background = rng.randrange(len(COLOURS) - 1)
        background += background >= colour  # any colour but the shape's
        scene = Scene(
            shape=rng.choice(tuple(SHAPES)),
            colour=COLOURS[colour],
            background=COLOURS[background],
            position=rng.choice(tuple(POSITIONS)),
            size_level=rng.randrange(len(SIZE_LEVELS)),
            dx=rng.choice(JITTERS),
            dy=rng.choice(JITTERS),
        )
        if scene_split(scene) == split:
            return scene


def render_scene(scene: Scene, size: int = 32) -> Image.Image:
    """Draw `scene` as an anti-aliased RGB image of `size` x `size` pixels."""
    check_size(size)
    big = size * SUPERSAMPLE
    k = big / UNIT  # 32-px units -> supersampled pixels
    canvas = Image.new("RGB", (big, big), PALETTE[scene.background][0])
    draw = ImageDraw.Draw(canvas)
    fill = PALETTE[scene.colour][0]
    cx, cy = scene.centre
    h = scene.size / 2
    # PIL boxes include both end pixels: the span [a, b) in continuous units is pixels a .. b-1.
    x0, y0, x1, y1 = ((cx - h) * k, (cy - h) * k, (cx + h) * k - 1, (cy + h) * k - 1)
    if scene.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif scene.shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    else:  # isosceles triangle pointing up, base = height = size
        draw.polygon([(cx * k - 0.5, y0), (x0, y1), (x1, y1)], fill=fill)
    return canvas.reduce(SUPERSAMPLE)  # box filter: exact area average


def _format_fields(attrs: dict[str, Any], lang: str) -> dict[str, str]:
    for name, allowed in (
        ("shape", SHAPES),
        ("colour", PALETTE),
        ("background", PALETTE),
        ("position", POSITIONS),
    ):
        if attrs.get(name) not in allowed:
            raise ValueError(f"attribute {name!r} must be one of {tuple(allowed)}, got {attrs.get(name)!r}")
    if lang == "zh":
        return {
            "shape": SHAPES[attrs["shape"]],
            "colour": PALETTE[attrs["colour"]][1],
            "bg": PALETTE[attrs["background"]][1],
            "pos": POSITIONS[attrs["position"]],
        }
    return {
        "shape": attrs["shape"],
        "colour": attrs["colour"],
        "bg": attrs["background"],
        "pos": attrs["position"],
        "prep": "in the" if attrs["position"] == "center" else "on the",
        "a_colour": _with_article(attrs["colour"]),
        "a_bg": _with_article(attrs["background"]),
    }


def _with_article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def caption(attrs: dict[str, Any], lang: str, template: int = 0) -> str:
    """The caption of `attrs` in `lang` with template number `template` (0 is canonical)."""
    check_lang(lang)
    templates = ZH_TEMPLATES if lang == "zh" else EN_TEMPLATES
    if not 0 <= template < len(templates):
        raise ValueError(f"template must be in [0, {len(templates)}) for lang {lang!r}, got {template}")
    return templates[template].format(**_format_fields(attrs, lang))


def canonical_caption(attrs: dict[str, Any], lang: str) -> str:
    """E.g. 蓝色背景上左边有一个红色圆形 / a red circle on the left of a blue background."""
    return caption(attrs, lang, 0)


def all_captions() -> list[str]:
    """Every caption any shapes example can have, both languages, in a fixed order."""
    return [
        text
        for lang in ("zh", "en")
        for text, attrs in _caption_index(lang).items()
        if attrs["colour"] != attrs["background"]
    ]


@functools.cache
def _caption_index(lang: str) -> dict[str, dict[str, str]]:
    index: dict[str, dict[str, str]] = {}
    templates = ZH_TEMPLATES if lang == "zh" else EN_TEMPLATES
    for t in range(len(templates)):
        for shape in SHAPES:
            for colour in COLOURS:
                for background in COLOURS:
                    for position in POSITIONS:
                        attrs = {
                            "shape": shape,
                            "colour": colour,
                            "background": background,
                            "position": position,
                        }
                        index.setdefault(caption(attrs, lang, t), attrs)
    return index


def parse_caption(text: str, lang: str) -> dict[str, str] | None:
    """The attributes (shape, colour, background, position) a caption in any template states, or
    None if ``text`` is not a well-formed caption (how generated captions are checked)."""
    check_lang(lang)
    found = _caption_index(lang).get(text.strip())
    return dict(found) if found is not None else None


class ShapesDataset(ExampleSequence):
    """`n` lazily rendered scenes of one split; example i is a pure function of (split, i, seed, size)."""

    def __init__(self, split: str, size: int = 32, n: int | None = None, seed: int = 0) -> None:
        check_split(split)
        self.split = split
        self.size = check_size(size)
        self.n = DEFAULT_LENGTHS[split] if n is None else n
        if not isinstance(self.n, int) or self.n < 0:
            raise ValueError(f"n must be a non-negative int (number of examples), got {n!r}")
        self.seed = seed

    def __len__(self) -> int:
        return self.n

    def scene(self, index: int) -> Scene:
        """The scene of example `index` without rendering it."""
        return sample_scene(self.split, self._normalise_index(index), self.seed)

    def _example(self, index: int) -> Example:
        scene = sample_scene(self.split, index, self.seed)
        attrs = scene.attributes
        pick = stable_int("cogview-shapes-caption", self.seed, self.split, index)
        zh = caption(attrs, "zh", pick % len(ZH_TEMPLATES))
        en = caption(attrs, "en", (pick // len(ZH_TEMPLATES)) % len(EN_TEMPLATES))
        return Example(image=render_scene(scene, self.size), caption_zh=zh, caption_en=en, attributes=attrs)


def load(split: str, size: int = 32, n: int | None = None, seed: int = 0) -> ShapesDataset:
    """The shapes split `split` ("train": 20,000 scenes, "test": 1,000 by default)."""
    return ShapesDataset(split, size=size, n=n, seed=seed)
