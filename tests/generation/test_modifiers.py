"""Modifiers: learning a code map from pairs, finding a phrase in a prompt, storage that refuses
bad files, and the pipeline drawing a modified prompt as its base plus the map."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from small_parts import small_text_tokenizer

from cogview.generation.modifiers import MODIFIERS_NAME, Compound, Modifier, Modifiers, learn, learn_compounds
from cogview.generation.sampling import SamplingConfig
from cogview.model import PRESETS, CogViewTransformer
from cogview.pipeline import CogViewPipeline
from cogview.serialization import CheckpointError
from cogview.tokenizers.image import ImageTokenizer
from cogview.tokenizers.vocab import default_vocab
from cogview.tokenizers.vqvae import VQVAE, VQVAE_PRESETS


def pair(base: list[int], variant: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(base).view(2, 2), torch.tensor(variant).view(2, 2)


def test_learn_votes_per_cell_then_per_code_then_keeps_the_code() -> None:
    pairs = [
        pair([5, 5, 1, 5], [7, 7, 1, 9]),
        pair([5, 2, 5, 5], [7, 2, 7, 9]),
        pair([3, 5, 5, 5], [4, 7, 7, 9]),
        pair([3, 3, 3, 3], [4, 6, 6, 3]),
    ]
    m = learn("dark", {"en": "dark skin tone"}, pairs)
    # code 5 becomes 7 (6 votes to 3), but at position 3 it is 9; code 3 ties 4 and 6 (to the smaller)
    assert m.by_code == {5: 7, 3: 4}
    # only the cells whose vote differs from their code's: (1, 3) and (2, 3) -> 6, (3, 3) stays 3
    assert m.by_position == {(3, 5): 9, (1, 3): 6, (2, 3): 6, (3, 3): 3}
    mapped = m.apply(torch.tensor([[5, 5], [8, 5]]))
    assert mapped.tolist() == [[7, 7], [8, 9]]  # 8 was never seen: kept
    assert m.apply(torch.tensor([[3, 1], [2, 2]])).tolist() == [[4, 1], [2, 2]]
    assert m.pairs == 4
    with pytest.raises(ValueError, match="no pairs"):
        learn("x", {}, [])


def test_a_cell_s_neighbours_can_overrule_its_code_s_vote() -> None:
    pairs = [
        pair([5, 1, 0, 0], [8, 1, 0, 0]),
        pair([5, 2, 0, 0], [9, 2, 0, 0]),
        pair([5, 2, 0, 0], [9, 2, 0, 0]),
    ]
    m = learn("t", {"en": "t"}, pairs)
    assert m.by_code == {5: 9} and m.by_neighbours == {(5, -1, -1, 1, 0): 8}  # (code, up, left, right, down)
    grids = torch.tensor([[[5, 1], [0, 0]], [[5, 2], [0, 0]], [[5, 3], [0, 0]]])
    assert m.apply(grids)[:, 0, 0].tolist() == [8, 9, 9]


def test_ties_go_to_the_smaller_code() -> None:
    m = learn("t", {"en": "t"}, [pair([1, 1, 1, 1], [9, 9, 9, 9]), pair([1, 1, 1, 1], [2, 2, 2, 2])])
    assert m.by_code == {1: 2} and m.by_position == {}


def test_a_compound_learns_which_cells_follow_which_part() -> None:
    """Two people, left and right: the left column follows part 0, the right column part 1."""
    a = Modifier("a", {"en": "a"}, {}, {5: 1})
    b = Modifier("b", {"en": "b"}, {}, {5: 2})
    ab = [pair([5, 5, 5, 5], [1, 2, 1, 2]), pair([5, 5, 0, 5], [1, 2, 0, 2])]
    ba = [pair([5, 5, 5, 5], [2, 1, 2, 1])]  # another compound, parts the other way round
    [c_ab, c_ba] = learn_compounds([("a/b", {"en": "a b"}, [a, b], ab), ("b/a", {"en": "b a"}, [b, a], ba)])
    assert c_ab.part_of == c_ba.part_of == (0, 1, 0, 1) and (c_ab.pairs, c_ba.pairs) == (2, 1)
    assert c_ab.apply(torch.tensor([[[5, 5], [5, 3]]])).tolist() == [[[1, 2], [1, 3]]]
    assert c_ba.apply(torch.tensor([[5, 5], [5, 5]])).tolist() == [[2, 1], [2, 1]]
    # a neighbourhood its own pairs showed takes their code: the seen pair is recalled
    [odd] = learn_compounds([("a/b", {"en": "a b"}, [a, b], [pair([5, 5, 5, 5], [1, 2, 9, 2])])])
    assert odd.own[(5, 5, -1, 5, -1)] == 9  # (code, up, left, right, down) of cell (1, 0)
    assert odd.apply(torch.tensor([[5, 5], [5, 5]])).tolist() == [[1, 2], [9, 2]]
    assert odd.apply(torch.tensor([[5, 5], [5, 4]])).tolist() == [[1, 2], [1, 4]]  # unseen: its part's
    with pytest.raises(ValueError, match="covers 4 cells"):
        c_ab.apply(torch.zeros(3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="2\\+ parts"):
        learn_compounds([("a", {}, [a], ab)])


def modifiers() -> Modifiers:
    dark = Modifier(
        "dark", {"en": "dark skin tone", "zh": "较深肤色"}, {(3, 5): 9}, {5: 7}, 4, {(5, -1, 1, 2, 3): 4}
    )
    light = Modifier("light", {"en": "light skin tone", "zh": "较浅肤色"}, {}, {5: 1}, 3)
    phrases = {"en": "light skin tone dark skin tone", "zh": "较浅肤色较深肤色"}
    both = Compound("light/dark", phrases, (light, dark), (0, 1, 0, 1), 2)
    return Modifiers([dark, light, both], grid_size=2, codebook_size=16, fingerprint="f")


@pytest.mark.parametrize(
    ("prompt", "drawn", "name"),
    [
        ("waving hand dark skin tone", "waving hand", "dark"),
        ("Waving Hand: Dark Skin Tone", "Waving Hand", "dark"),
        ("an emoji of waving hand dark skin tone", "an emoji of waving hand", "dark"),
        ("waving hand dark skin tone emoji", "waving hand emoji", "dark"),
        ("kiss light skin tone dark skin tone", "kiss", "light/dark"),  # the longest phrase wins
        ("挥手 较深肤色", "挥手", "dark"),
        ("一个挥手 较深肤色的表情符号", "一个挥手的表情符号", "dark"),
        ("亲吻 较浅肤色较深肤色", "亲吻", "light/dark"),
    ],
)
def test_split_takes_the_phrase_out(prompt: str, drawn: str, name: str) -> None:
    split = modifiers().split(prompt)
    assert split is not None and (split.prompt, split.modifier.name) == (drawn, name)


def test_split_leaves_prompts_without_a_phrase_or_with_nothing_else() -> None:
    assert modifiers().split("waving hand") is None
    assert modifiers().split("dark skin") is None
    assert modifiers().split(" dark skin tone ") is None  # nothing left to draw


def test_storage_round_trips_and_refuses_bad_files(tmp_path: Path) -> None:
    mods = modifiers()
    mods.save(tmp_path)
    loaded = Modifiers.load(tmp_path)
    assert loaded is not None and loaded.to_dict() == mods.to_dict()
    assert Modifiers.load(tmp_path / "nothing") is None
    good = json.loads((tmp_path / MODIFIERS_NAME).read_text())
    bad = [  # (which entry: 0 is a tone's maps, 2 a compound; what is wrong; the change)
        (0, "code past the codebook", {"by_code": [[5, 16]]}),
        (0, "cell past the grid", {"by_position": [[4, 5, 9]]}),
        (0, "negative code", {"by_code": [[-1, 2]]}),
        (0, "bool code", {"by_code": [[True, 2]]}),
        (0, "string code", {"by_code": [["5", 2]]}),
        (0, "short cell entry", {"by_position": [[3, 5]]}),
        (0, "short neighbourhood", {"by_neighbours": [[5, 1, 2, 3, 9]]}),
        (0, "neighbour below -1", {"by_neighbours": [[5, -2, 1, 2, 3, 9]]}),
        (0, "phrase not text", {"phrases": {"en": 3}}),
        (2, "a missing part", {"parts": ["dark", "nobody"]}),
        (2, "one part", {"parts": ["dark"], "part_of": [0, 0, 0, 0]}),
        (2, "a part index past the parts", {"part_of": [0, 1, 2, 0]}),
        (2, "too few cells", {"part_of": [0, 1, 0]}),
        (2, "a code past the codebook in its own map", {"own": [[5, 1, 2, 3, 4, 16]]}),
    ]
    for index, what, change in bad:
        data = json.loads(json.dumps(good))
        data["modifiers"][index].update(change)
        with pytest.raises(CheckpointError, match="invalid"):
            Modifiers.from_dict(data)
            pytest.fail(f"accepted {what}")
    with pytest.raises(CheckpointError, match="format"):
        Modifiers.from_dict({**good, "version": 2})
    with pytest.raises(CheckpointError, match="invalid"):
        Modifiers.from_dict({k: v for k, v in good.items() if k != "grid_size"})
    with pytest.raises(ValueError, match="repeat"):
        Modifiers([mods.modifiers[0]] * 2, 2, 16, "f")


@pytest.fixture(scope="module")
def pipe() -> CogViewPipeline:
    torch.manual_seed(0)
    text, image = small_text_tokenizer(), ImageTokenizer(VQVAE(VQVAE_PRESETS["tiny"]))
    vocab = default_vocab(image, text)
    model = CogViewTransformer(dataclasses.replace(PRESETS["tiny"], vocab_size=vocab.size)).eval()
    sampling = {"default": SamplingConfig(top_k=0, guidance_scale=1.5)}
    pipe = CogViewPipeline(model, text, image, vocab, sampling=sampling)
    g, size = image.grid_size, image.codebook_size
    recolour = {c: (c * 7 + 3) % size for c in range(size)}
    red = Modifier("red", {"en": "in red", "zh": "红色的"}, {(0, c): 0 for c in range(size)}, recolour, 1)
    pipe.modifiers = Modifiers([red], g, size, image.fingerprint)
    return pipe


def test_a_modified_prompt_is_its_base_drawn_then_mapped(pipe: CogViewPipeline) -> None:
    base = pipe.generate_results("a circle", 3, seed=4)[0]
    modified = pipe.generate_results("a circle in red", 3, seed=4)[0]
    red = pipe.modifiers.modifiers[0]
    assert torch.equal(modified.codes, red.apply(base.codes)) and not torch.equal(modified.codes, base.codes)
    assert modified.codes[:, 0, 0].tolist() == [0, 0, 0]  # the per-cell entry beats the per-code one
    assert modified.prompt == "a circle in red" and modified.image_seeds == base.image_seeds
    assert modified.to_dict()["modifier"] == {"name": "red", "drawn_prompt": "a circle"}
    assert [im.tobytes() for im in modified.images] == [
        im.tobytes() for im in pipe.image_tokenizer.decode(modified.codes)
    ]
    direct = pipe.generate_results("a circle in red", 3, seed=4, modifiers=False)[0]
    assert direct.modifier is None and not torch.equal(direct.codes, modified.codes)
    # several prompts in one call: each as it would be alone
    both = pipe.generate_results(["a circle", "a circle in red"], 3, seed=4)
    assert torch.equal(both[0].codes, base.codes) and torch.equal(both[1].codes, modified.codes)
    images = pipe.generate("a circle in red", 3, seed=4)
    assert [im.tobytes() for im in images] == [im.tobytes() for im in modified.images]


def test_a_folder_keeps_its_modifiers_and_refuses_another_tokenizer_s(
    pipe: CogViewPipeline, tmp_path: Path
) -> None:
    pipe.save_pretrained(tmp_path)
    loaded = CogViewPipeline.from_pretrained(tmp_path)
    assert loaded.modifiers is not None and loaded.modifiers.to_dict() == pipe.modifiers.to_dict()
    path = tmp_path / MODIFIERS_NAME
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "image_tokenizer": {"fingerprint": "another"}}))
    with pytest.raises(CheckpointError, match="learned on image tokenizer another"):
        CogViewPipeline.from_pretrained(tmp_path)
    path.write_text("{not json")
    with pytest.raises(CheckpointError):
        CogViewPipeline.from_pretrained(tmp_path)
