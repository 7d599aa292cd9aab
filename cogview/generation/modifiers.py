"""Modifiers: a phrase that changes an attribute of what the rest of the prompt draws, applied in
token space by a code map learned from pairs.

Why: Unicode draws a skin tone as a *modifier* of a base emoji (U+1F3FB-U+1F3FF), and so can we.
The shipped transformer recalls the (base, tone) pairs it saw but does not compose unseen ones
(held-out pairs 17%, docs/emoji_model.md), while the image tokenizer's codes do compose: which
code a cell of the base becomes under a tone is nearly a function of the code, its position and
the tone. So a prompt holding a modifier phrase is drawn without it, and each code of the
drawn image is mapped. The map of a modifier is learned from (base codes, variant codes) pairs
of the training split: the variant's most frequent code per (code, its four neighbours), falling
back to per (position, code), then per code, then the code itself. On clean renders of the
held-out pairs the chain maps 73.7% to the right emoji (position and code alone: 73.1%; seen
pairs 96% against 91.5%). Two people's tones are :class:`Compound` s of two tones' maps.

Stored as ``modifiers.json`` in a model folder (JSON: no code runs on load), tied to the image
tokenizer by its fingerprint.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cogview.serialization import CheckpointError, read_json, write_json

MODIFIERS_NAME = "modifiers.json"
MODIFIERS_FORMAT = "cogview.modifiers"
MODIFIERS_VERSION = 1


@dataclass(frozen=True)
class Modifier:
    """One modifier: its phrases per language and its code map.

    Attributes:
        name: the modifier's key, e.g. ``"medium-dark"``.
        phrases: ``{"en": "medium-dark skin tone", "zh": "中等深肤色"}``; a prompt holding one is modified.
        by_position: ``{(position, code): new code}`` where it differs from ``by_code``'s answer.
        by_code: ``{code: new code}`` where it differs from the code.
        pairs: how many training pairs the map was learned from.
        by_neighbours: ``{(code, up, left, right, down): new code}`` (-1 off the grid) where it
            differs from the answer of ``by_position`` and ``by_code``.
    """

    name: str
    phrases: Mapping[str, str]
    by_position: Mapping[tuple[int, int], int]
    by_code: Mapping[int, int]
    pairs: int = 0
    by_neighbours: Mapping[tuple[int, int, int, int, int], int] = dataclasses.field(default_factory=dict)

    def apply(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes`` ``[..., h, w]`` mapped cell by cell (a new tensor)."""
        h, w = codes.shape[-2:]
        grids = codes.reshape(-1, h, w).cpu()  # [N, h, w]
        out = grids.clone()
        for n, grid in enumerate(grids.tolist()):
            for (y, x), key in _contexts(grid):
                new = self.by_neighbours.get(key)
                out[n, y, x] = self._fallback(y * w + x, key[0]) if new is None else new
        return out.view(codes.shape).to(codes.device)

    def _fallback(self, position: int, code: int) -> int:
        new = self.by_position.get((position, code))
        return self.by_code.get(code, code) if new is None else new


@dataclass(frozen=True)
class Compound:
    """A modifier made of others, one per region of the grid, and what its own pairs showed.

    Two people's skin tones (``"light/dark"``): a compound has a few training pairs (13-18), its
    parts hundreds. A cell whose neighbourhood its own pairs showed takes their most frequent
    code (``own``: a seen pair is recalled); any other cell takes the map of the part its position
    follows, which is learned from all compounds' pairs together. Held-out two-tone variants on
    clean renders: 66.3%, against 44.9% by a compound's own map chain alone and 57.1% by the parts
    alone; seen ones 94.3% (the own map chain's).

    Attributes:
        part_of: ``[cells]`` the index in ``parts`` whose map each position takes.
        own: ``{(code, up, left, right, down): new code}`` for every neighbourhood of its pairs' bases.
    """

    name: str
    phrases: Mapping[str, str]
    parts: tuple[Modifier, ...]
    part_of: tuple[int, ...]
    pairs: int = 0
    own: Mapping[tuple[int, int, int, int, int], int] = dataclasses.field(default_factory=dict)

    def apply(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes`` ``[..., h, w]`` mapped cell by cell (a new tensor)."""
        h, w = codes.shape[-2:]
        if len(self.part_of) != h * w:
            raise ValueError(f"compound {self.name!r} covers {len(self.part_of)} cells, the codes {h * w}")
        mapped = torch.stack([part.apply(codes).reshape(-1, h * w) for part in self.parts])  # [K, N, S]
        which = torch.tensor(self.part_of, device=mapped.device)  # [S]
        out = mapped.gather(0, which.expand(mapped.shape[1], -1)[None])[0].cpu()  # [N, S]
        for n, grid in enumerate(codes.reshape(-1, h, w).tolist()):
            for (y, x), key in _contexts(grid):
                new = self.own.get(key)
                if new is not None:
                    out[n, y * w + x] = new
        return out.view(codes.shape).to(codes.device)


@dataclass(frozen=True)
class Split:
    """A prompt with its modifier phrase taken out."""

    prompt: str  # what the transformer draws
    modifier: Modifier | Compound


class Modifiers:
    """The modifiers of a model folder: find one in a prompt, apply it, save and load them."""

    def __init__(
        self, modifiers: Iterable[Modifier | Compound], grid_size: int, codebook_size: int, fingerprint: str
    ):
        self.modifiers = list(modifiers)
        self.grid_size, self.codebook_size, self.fingerprint = grid_size, codebook_size, fingerprint
        names = [m.name for m in self.modifiers]
        if len(set(names)) != len(names):
            raise ValueError(f"modifier names repeat: {sorted(n for n in names if names.count(n) > 1)}")
        # Longest phrase first: "light skin tone dark skin tone" before "dark skin tone".
        self._phrases = sorted(
            ((phrase.casefold(), m) for m in self.modifiers for phrase in m.phrases.values() if phrase),
            key=lambda pm: -len(pm[0]),
        )

    def __len__(self) -> int:
        return len(self.modifiers)

    def split(self, prompt: str) -> Split | None:
        """The prompt without the longest modifier phrase it holds (None: it holds none, or
        nothing would be left to draw)."""
        folded = prompt.casefold()
        for phrase, modifier in self._phrases:
            i = folded.find(phrase)
            if i < 0:
                continue
            rest = _join(prompt[:i], prompt[i + len(phrase) :])
            return Split(rest, modifier) if rest else None
        return None

    # --- storage ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": MODIFIERS_FORMAT,
            "version": MODIFIERS_VERSION,
            "grid_size": self.grid_size,
            "codebook_size": self.codebook_size,
            "image_tokenizer": {"fingerprint": self.fingerprint},
            "modifiers": [_entry(m) for m in self.modifiers],
        }

    def save(self, folder: str | Path) -> None:
        write_json(Path(folder) / MODIFIERS_NAME, self.to_dict(), indent=None)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = MODIFIERS_NAME) -> Modifiers:
        """Checked: any bad field raises :class:`~cogview.serialization.CheckpointError` naming ``where``."""
        if data.get("format") != MODIFIERS_FORMAT or data.get("version") != MODIFIERS_VERSION:
            raise CheckpointError(
                f"{where} has format {data.get('format')!r} version {data.get('version')!r}; "
                f"expected {MODIFIERS_FORMAT!r} version {MODIFIERS_VERSION}"
            )
        try:
            grid, size = _int(data["grid_size"], 1, 1024), _int(data["codebook_size"], 1, 1 << 24)
            cells = grid * grid
            entries = list(data["modifiers"])
            singles = {e["name"]: _modifier(e, size, cells) for e in entries if "parts" not in e}
            modifiers: list[Modifier | Compound] = []
            for entry in entries:
                if "parts" not in entry:
                    modifiers.append(singles[entry["name"]])
                    continue
                parts = tuple(singles[_text(n)] for n in entry["parts"])  # a KeyError names a missing part
                part_of = tuple(_int(k, 0, len(parts) - 1) for k in entry["part_of"])
                if len(part_of) != cells or len(parts) < 2:
                    raise ValueError(f"compound {entry['name']!r} needs 2+ parts and {cells} cells")
                phrases = {str(k): _text(v) for k, v in dict(entry["phrases"]).items()}
                pairs = _int(entry.get("pairs", 0), 0, 1 << 31)
                own = _neighbourhoods(entry.get("own", []), size)
                modifiers.append(Compound(_text(entry["name"]), phrases, parts, part_of, pairs, own))
            return cls(modifiers, grid, size, _text(data["image_tokenizer"]["fingerprint"]))
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{where} is incomplete or invalid: {e!r}") from e

    @classmethod
    def load(cls, folder: str | Path) -> Modifiers | None:
        """The folder's ``modifiers.json``, or None when it has none."""
        path = Path(folder) / MODIFIERS_NAME
        return cls.from_dict(read_json(path), str(path)) if path.is_file() else None

    def check_tokenizer(self, fingerprint: str, grid_size: int, codebook_size: int) -> None:
        """Refuse a map learned on another image tokenizer's codes."""
        if (self.fingerprint, self.grid_size, self.codebook_size) != (fingerprint, grid_size, codebook_size):
            raise CheckpointError(
                f"{MODIFIERS_NAME} was learned on image tokenizer {self.fingerprint} ({self.grid_size}x"
                f"{self.grid_size} codes of {self.codebook_size}), not this folder's {fingerprint} "
                f"({grid_size}x{grid_size} of {codebook_size}): learn it again (scripts/learn_modifiers.py)"
            )


def learn(
    name: str,
    phrases: Mapping[str, str],
    pairs: Sequence[tuple[torch.Tensor, torch.Tensor]],
) -> Modifier:
    """A modifier's map from ``(base codes, variant codes)`` pairs (``[h, w]`` each).

    Majority votes (ties to the smaller code) per code's neighbourhood, per (position, code) and
    per code; each level keeps only the entries where it differs from the levels below it.
    """
    if not pairs:
        raise ValueError(f"modifier {name!r} has no pairs to learn from")
    votes_n: defaultdict[tuple[int, ...], Counter[int]] = defaultdict(Counter)
    votes_pc: defaultdict[tuple[int, int], Counter[int]] = defaultdict(Counter)
    votes_c: defaultdict[int, Counter[int]] = defaultdict(Counter)
    for base, variant in pairs:
        if base.dim() != 2 or base.shape != variant.shape:
            raise ValueError(
                f"a pair of modifier {name!r} has shapes {tuple(base.shape)} and {tuple(variant.shape)}"
            )
        w, v = base.shape[1], variant.tolist()
        for (y, x), key in _contexts(base.tolist()):
            new = v[y][x]
            votes_n[key][new] += 1
            votes_pc[(y * w + x, key[0])][new] += 1
            votes_c[key[0]][new] += 1
    by_code = {c: n for c, votes in votes_c.items() if (n := _vote(votes)) != c}
    by_position = {
        pc: n for pc, votes in votes_pc.items() if (n := _vote(votes)) != by_code.get(pc[1], pc[1])
    }
    modifier = Modifier(name, dict(phrases), by_position, by_code, len(pairs))
    positions = {key: [] for key in votes_n}  # a neighbourhood's fallback depends on its position
    for base, _ in pairs:
        w = base.shape[1]
        for (y, x), key in _contexts(base.tolist()):
            positions[key].append(y * w + x)
    by_neighbours = {
        key: n
        for key, votes in votes_n.items()
        if any((n := _vote(votes)) != modifier._fallback(p, key[0]) for p in positions[key])
    }
    return dataclasses.replace(modifier, by_neighbours=by_neighbours)


def _contexts(grid: list[list[int]]) -> Iterable[tuple[tuple[int, int], tuple[int, int, int, int, int]]]:
    """((y, x), (code, up, left, right, down)) of every cell, -1 off the grid."""
    h, w = len(grid), len(grid[0])
    for y in range(h):
        for x in range(w):
            yield (
                (y, x),
                (
                    grid[y][x],
                    grid[y - 1][x] if y > 0 else -1,
                    grid[y][x - 1] if x > 0 else -1,
                    grid[y][x + 1] if x < w - 1 else -1,
                    grid[y + 1][x] if y < h - 1 else -1,
                ),
            )


def learn_compounds(
    compounds: Sequence[
        tuple[str, Mapping[str, str], Sequence[Modifier], Sequence[tuple[torch.Tensor, torch.Tensor]]]
    ],
) -> list[Compound]:
    """Compounds ``(name, phrases, parts, pairs)``: each its ``own`` vote per neighbourhood of its
    pairs, and one shared ``part_of``: per position, the part whose map gives the variant's code
    most often where the parts' maps disagree (ties and positions without a vote: the first
    part), over all compounds' pairs together."""
    votes: defaultdict[int, Counter[int]] = defaultdict(Counter)
    own: list[dict[tuple[int, ...], Counter[int]]] = []
    cells = None
    for name, _, parts, pairs in compounds:
        own.append(defaultdict(Counter))
        if len(parts) < 2 or not pairs:
            raise ValueError(f"compound {name!r} needs 2+ parts and some pairs")
        for base, variant in pairs:
            cells = base.numel()
            mapped = [part.apply(base).reshape(-1).tolist() for part in parts]
            want = variant.reshape(-1).tolist()
            for p in range(cells):
                if len({m[p] for m in mapped}) > 1:
                    votes[p].update(k for k, m in enumerate(mapped) if m[p] == want[p])
            w = base.shape[-1]
            for (y, x), key in _contexts(base.reshape(-1, w).tolist()):
                own[-1][key][want[y * w + x]] += 1
    if cells is None:
        return []
    part_of = tuple(_vote(votes[p]) if votes[p] else 0 for p in range(cells))
    return [
        Compound(
            name, dict(phrases), tuple(parts), part_of, len(pairs), {k: _vote(v) for k, v in seen.items()}
        )
        for (name, phrases, parts, pairs), seen in zip(compounds, own, strict=True)
    ]


def modified_result(result: Any, split: Split, asked: str, decode: Any) -> Any:
    """A :class:`~cogview.generation.text_to_image.PromptResult` of ``split.prompt`` turned into
    one of ``asked``: codes mapped, images decoded again, the modifier recorded."""
    codes = split.modifier.apply(result.codes)
    return dataclasses.replace(
        result,
        prompt=asked,
        codes=codes,
        images=decode(codes),
        modifier={"name": split.modifier.name, "drawn_prompt": split.prompt},
    )


def _entry(m: Modifier | Compound) -> dict[str, Any]:
    """A modifier as JSON: its maps, or a compound's parts (by name) and which cell takes which."""
    out: dict[str, Any] = {"name": m.name, "phrases": dict(m.phrases), "pairs": m.pairs}
    if isinstance(m, Compound):
        own = sorted([*k, n] for k, n in m.own.items())
        return {**out, "parts": [p.name for p in m.parts], "part_of": list(m.part_of), "own": own}
    return {
        **out,
        "by_code": sorted([c, n] for c, n in m.by_code.items()),
        "by_position": sorted([p, c, n] for (p, c), n in m.by_position.items()),
        "by_neighbours": sorted([*k, n] for k, n in m.by_neighbours.items()),
    }


def _modifier(entry: Mapping[str, Any], size: int, cells: int) -> Modifier:
    """A :class:`Modifier` from its JSON, every code and cell checked (ValueError otherwise)."""
    phrases = {str(k): _text(v) for k, v in dict(entry["phrases"]).items()}
    by_code = {_int(c, 0, size - 1): _int(n, 0, size - 1) for c, n in entry["by_code"]}
    by_position = {
        (_int(p, 0, cells - 1), _int(c, 0, size - 1)): _int(n, 0, size - 1)
        for p, c, n in entry["by_position"]
    }
    by_neighbours = _neighbourhoods(entry.get("by_neighbours", []), size)
    pairs = _int(entry.get("pairs", 0), 0, 1 << 31)
    return Modifier(_text(entry["name"]), phrases, by_position, by_code, pairs, by_neighbours)


def _neighbourhoods(entries: Iterable[Any], size: int) -> dict[tuple[int, int, int, int, int], int]:
    """``[[code, up, left, right, down, new], ...]`` checked (-1: off the grid) as a dict."""
    out = {}
    for c, *around, n in entries:
        if len(around) != 4:
            raise ValueError(f"a neighbourhood entry has {len(around) + 2} numbers, not 6")
        key = (_int(c, 0, size - 1), *(_int(k, -1, size - 1) for k in around))
        out[key] = _int(n, 0, size - 1)
    return out


def _vote(votes: Counter[int]) -> int:
    return min(votes, key=lambda n: (-votes[n], n))


def _join(left: str, right: str) -> str:
    """Two parts of a prompt around a removed phrase: one space between words, none next to CJK."""
    left, right = left.rstrip(" ,:_;"), right.lstrip(" ,:_;")
    if left and right and re.match(r"\w", left[-1], re.ASCII) and re.match(r"\w", right[0], re.ASCII):
        return f"{left} {right}"
    return left + right


def _int(value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"expected an integer in [{low}, {high}], got {value!r}")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


__all__ = [
    "MODIFIERS_NAME",
    "Compound",
    "Modifier",
    "Modifiers",
    "Split",
    "learn",
    "learn_compounds",
    "modified_result",
]
