"""CogViewTransformer: causality, cache equivalence, PB-relax, LN scaling, Sandwich-LN, init, I/O."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

from cogview.model import PRESETS, CogViewTransformer
from cogview.model.transformer import LayerNorm, one_query_attention, pb_relax_attention
from cogview.serialization import CONFIG_NAME, WEIGHTS_NAME, CheckpointError

TINY = PRESETS["tiny"]
V = TINY.vocab_size


def _model(seed: int = 0, **overrides: object) -> CogViewTransformer:
    torch.manual_seed(seed)
    return CogViewTransformer(dataclasses.replace(TINY, **overrides)).eval()


def _tokens(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (batch, length), generator=torch.Generator().manual_seed(seed))


# --- shapes and causality -------------------------------------------------------------------


def test_logits_shape_with_shared_and_per_row_positions() -> None:
    model = _model()
    tokens = _tokens(3, 10)
    assert model(tokens, torch.arange(10)).shape == (3, 10, V)
    per_row = torch.arange(10).expand(3, 10)
    torch.testing.assert_close(model(tokens, per_row), model(tokens, torch.arange(10)))


@pytest.mark.parametrize("alpha", [None, 32.0])
def test_causality(alpha: float | None) -> None:
    model = _model(pb_relax_alpha=alpha)
    tokens = _tokens(2, 10)
    positions = torch.arange(10)
    t = 4
    perturbed = tokens.clone()
    perturbed[:, t + 1] = (perturbed[:, t + 1] + 1) % V
    a, b = model(tokens, positions), model(perturbed, positions)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], atol=1e-6, rtol=0)
    assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :])


def test_forward_rejects_bad_shapes() -> None:
    model = _model()
    with pytest.raises(ValueError, match=r"tokens must be \[B, T\]"):
        model(torch.zeros(5, dtype=torch.long), torch.arange(5))
    with pytest.raises(ValueError, match="positions must be"):
        model(_tokens(2, 5), torch.arange(4))
    with pytest.raises(ValueError, match="without a cache"):
        model(_tokens(2, 5), torch.arange(5), cache_positions=torch.arange(5))
    with pytest.raises(ValueError, match="cache.expand"):
        model(_tokens(2, 5), torch.arange(5), model.new_cache(1))


# --- KV cache equivalence -------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [{}, {"pb_relax_alpha": 32.0}, {"sandwich_ln": False}, {"ln_input_scaling": "max"}],
    ids=["default", "pb_relax", "pre_ln", "ln_max"],
)
def test_prefill_then_one_token_decode_equals_full_forward(overrides: dict) -> None:
    model = _model(**overrides)
    tokens, positions = _tokens(2, 12), torch.arange(12)
    full = model(tokens, positions)
    cache = model.new_cache(2, max_len=16)
    steps = [model(tokens[:, :5], positions[:5], cache)]
    for t in range(5, 12):
        steps.append(model(tokens[:, t : t + 1], positions[t : t + 1], cache))
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)


def test_batch_one_prefill_expanded_to_n_rows() -> None:
    model = _model()
    n, prompt_len, new = 4, 6, 5
    prompt = _tokens(1, prompt_len)
    continuation = _tokens(n, new, seed=2)
    full = model(torch.cat([prompt.expand(n, -1), continuation], dim=1), torch.arange(prompt_len + new))

    cache = model.new_cache(1, max_len=prompt_len + new)
    prefill = model(prompt, torch.arange(prompt_len), cache)
    torch.testing.assert_close(prefill.expand(n, -1, -1), full[:, :prompt_len], atol=1e-5, rtol=0)
    rows = cache.expand(n)
    for t in range(new):
        position = torch.tensor([prompt_len + t])
        logits = model(continuation[:, t : t + 1], position, rows)
        torch.testing.assert_close(logits[:, 0], full[:, prompt_len + t], atol=1e-5, rtol=0)


def test_position_ids_restart_while_cache_slots_continue() -> None:
    # Super-resolution recounts positions after [ROI2] (SPEC 1.2); slots keep counting, and may
    # run past the position table (here 8 rows, 12 slots).
    model = _model(max_seq_len=8)
    roi = 5
    positions = torch.cat([torch.arange(roi + 1), torch.arange(1, 7)])  # [0..5, 1..6]
    slots = torch.arange(12)
    tokens = _tokens(2, 12)
    full = model(tokens, positions)
    cache = model.new_cache(2, max_len=12)
    steps = [model(tokens[:, :7], positions[:7], cache, cache_positions=slots[:7])]
    for t in range(7, 12):
        steps.append(
            model(tokens[:, t : t + 1], positions[t : t + 1], cache, cache_positions=slots[t : t + 1])
        )
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)


def test_per_row_cache_positions() -> None:
    model = _model()
    tokens = _tokens(2, 8)
    full = model(tokens, torch.arange(8))
    cache = model.new_cache(2, max_len=8)
    model(tokens[:, :3], torch.arange(3).expand(2, 3), cache)
    out = model(tokens[:, 3:], torch.arange(3, 8).expand(2, 5), cache)
    torch.testing.assert_close(out, full[:, 3:], atol=1e-5, rtol=0)


# --- PB-relax -------------------------------------------------------------------------------


def test_pb_relax_attention_function_equals_sdpa_with_cache_mask() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 3, 16, generator=g) for _ in range(3))
    k, v = torch.randn(2, 4, 9, 16, generator=g), torch.randn(2, 4, 9, 16, generator=g)
    mask = (torch.arange(9) <= torch.tensor([4, 5, 6])[:, None]).unsqueeze(0)  # [1, 3, 9]
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(pb_relax_attention(q, k, v, mask, alpha=32.0), expected, atol=1e-6, rtol=1e-5)


def test_one_query_attention_equals_sdpa_and_is_what_a_compiled_cpu_step_traces() -> None:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 4, 1, 16, generator=g)
    k, v = torch.randn(3, 4, 9, 16, generator=g), torch.randn(3, 4, 9, 16, generator=g)
    seen = torch.arange(9) <= torch.tensor([2, 5, 8])[:, None]  # [3, 9]: each row's filled slots
    mask = torch.zeros(3, 1, 1, 9).masked_fill_(~seen[:, None, None], float("-inf"))
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(one_query_attention(q, k, v, mask), expected, atol=1e-6, rtol=1e-5)

    # A compiled one-token step on a CPU takes this path; eager steps keep SDPA's bits.
    model = CogViewTransformer(dataclasses.replace(PRESETS["tiny"], dropout=0.0)).eval()
    traced: list[tuple[int, int]] = []

    def record(gm: torch.fx.GraphModule, inputs: list) -> torch.fx.GraphModule:
        targets = [str(n.target) for n in gm.graph.nodes]
        traced.append((sum("softmax" in t for t in targets), sum("scaled_dot_product" in t for t in targets)))
        return gm

    from cogview.model import KVCache

    cfg = model.config
    cache = KVCache(cfg.n_layers, 1, cfg.n_heads, 8, cfg.dim // cfg.n_heads)
    tokens, slots = torch.tensor([[5]]), torch.tensor([0])
    with torch.no_grad():
        eager = model(tokens, slots, cache, slots, kv_len=None)
        compiled = torch.compile(model, backend=record, fullgraph=True)(tokens, slots, cache, slots, kv_len=None)
    assert traced == [(cfg.n_layers, 0)]  # one explicit softmax per layer, no SDPA
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)


def test_pb_relax_model_equals_plain_model_in_fp32() -> None:
    plain = _model()
    relaxed = _model(pb_relax_alpha=32.0)
    relaxed.load_state_dict(plain.state_dict())
    tokens, positions = _tokens(2, 16), torch.arange(16)
    torch.testing.assert_close(relaxed(tokens, positions), plain(tokens, positions), atol=1e-5, rtol=1e-5)


def _naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Textbook softmax(QK^T / sqrt(d)) V in the input dtype (what overflows in fp16)."""
    T = q.shape[-2]
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def test_pb_relax_stays_finite_in_fp16_where_plain_attention_overflows() -> None:
    # CPU supports fp16 matmul; CPU SDPA accumulates in fp32, so the overflowing baseline is the
    # textbook formula, which is what fp16 kernels computing QK^T in half precision do.
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 8, 16, generator=g) * 300
    k = q + torch.randn(1, 2, 8, 16, generator=g) * 30  # aligned keys: |q.k| ~ 1.4e6 > fp16 max
    v = torch.randn(1, 2, 8, 16, generator=g)
    reference = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=True)
    q16, k16, v16 = q.half(), k.half(), v.half()
    assert not torch.isfinite(_naive_attention(q16, k16, v16)).all()
    relaxed = pb_relax_attention(q16, k16, v16, None, alpha=32.0)
    assert relaxed.dtype == torch.float16 and torch.isfinite(relaxed).all()
    torch.testing.assert_close(relaxed.double(), reference, atol=2e-2, rtol=0)


def test_pb_relax_model_is_finite_in_fp16_on_huge_activations() -> None:
    model = _model(pb_relax_alpha=32.0)
    with torch.no_grad():
        model.layers[0].attention.wqkv.weight[: 2 * TINY.dim] *= 1000.0  # blow up Q and K
    tokens, positions = _tokens(2, 16), torch.arange(16)

    captured: dict[str, torch.Tensor] = {}
    handle = model.layers[0].attention.register_forward_pre_hook(lambda _, args: captured.update(x=args[0]))
    reference = model(tokens, positions).double()
    handle.remove()
    q, k, _ = model.layers[0].attention.wqkv(captured["x"]).split(TINY.dim, dim=-1)
    B, T = tokens.shape
    q, k = (t.view(B, T, TINY.n_heads, TINY.head_dim).transpose(1, 2).half() for t in (q, k))
    assert not torch.isfinite(q @ k.transpose(-2, -1)).all()  # plain scores overflow fp16

    logits = model.half()(tokens, positions)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits.double(), reference, atol=5e-2, rtol=0)


# --- LayerNorm input scaling ----------------------------------------------------------------


def test_ln_max_scaling_is_layernorm_with_a_per_row_inflated_eps() -> None:
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(0)) * 10
    scaled = LayerNorm(64, 1e-5, "max")
    # Scale-invariant up to eps: exactly plain LN with eps * s^2, s = the row's max|x|.
    s = x.abs().amax(dim=-1, keepdim=True)
    expected = (x - x.mean(-1, keepdim=True)) / torch.sqrt(
        x.var(-1, unbiased=False, keepdim=True) + 1e-5 * s**2
    )
    torch.testing.assert_close(scaled(x), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scaled(x), F.layer_norm(x, (64,), eps=1e-5), atol=1e-3, rtol=0)
    torch.testing.assert_close(scaled(torch.zeros(1, 64)), torch.zeros(1, 64))
    torch.testing.assert_close(scaled(x * 1e6), scaled(x), atol=1e-5, rtol=0)  # magnitude-free


def test_ln_original_scaling_is_layernorm_with_a_global_inflated_eps() -> None:
    x = torch.randn(3, 4, 64, generator=torch.Generator().manual_seed(0))
    x[2, 1] *= 1e4  # one outlier token, as in deep layers
    s = x.abs().max() / 8  # one scalar over the whole tensor (SPEC 1.4)
    original = LayerNorm(64, 1e-5, "original")
    torch.testing.assert_close(
        original(x), F.layer_norm(x, (64,), eps=float(1e-5 * s**2)), atol=1e-5, rtol=1e-5
    )
    # The inflated eps visibly shrinks the ordinary rows, and couples rows of the batch.
    assert (original(x)[0] - F.layer_norm(x[0], (64,), eps=1e-5)).abs().max() > 1e-2
    torch.testing.assert_close(original(x[:1]), F.layer_norm(x[:1], (64,), eps=1e-5), atol=1e-3, rtol=0)


def test_ln_scaling_makes_the_model_eps_free_on_small_activations() -> None:
    # At init the embeddings have variance ~1e-3, so plain LN's eps=1e-5 matters (logits move by
    # ~1e-2, the effect SPEC 1.4 reports); both scalings bring inputs to O(1) and remove it.
    plain = _model()
    eps_free = _model(norm_eps=1e-12)
    eps_free.load_state_dict(plain.state_dict())
    tokens, positions = _tokens(2, 12), torch.arange(12)
    expected, reference = plain(tokens, positions), eps_free(tokens, positions)
    assert (expected - reference).abs().max() > 1e-2
    for mode in ("max", "original"):
        scaled = _model(ln_input_scaling=mode)
        scaled.load_state_dict(plain.state_dict())
        torch.testing.assert_close(scaled(tokens, positions), reference, atol=1e-4, rtol=0)


# --- Sandwich-LN, tied head, other fields ---------------------------------------------------


def test_sandwich_ln_toggle_changes_parameters_and_outputs() -> None:
    sandwich, pre_ln = _model(sandwich_ln=True), _model(sandwich_ln=False)
    extra = set(sandwich.state_dict()) - set(pre_ln.state_dict())
    assert extra == {
        f"layers.{i}.{name}.{kind}"
        for i in range(TINY.n_layers)
        for name in ("attention_out_norm", "ffn_out_norm")
        for kind in ("weight", "bias")
    }
    assert set(pre_ln.state_dict()) < set(sandwich.state_dict())
    pre_ln.load_state_dict({k: v for k, v in sandwich.state_dict().items() if k not in extra})
    tokens, positions = _tokens(2, 8), torch.arange(8)
    assert not torch.allclose(sandwich(tokens, positions), pre_ln(tokens, positions), atol=1e-3)


def test_tied_head_has_no_output_weight_and_trains_the_embedding() -> None:
    model = _model()
    assert model.output is None and not any(k.startswith("output") for k in model.state_dict())
    tokens = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))  # rows >= 100 unused
    captured: dict[str, torch.Tensor] = {}
    model.norm.register_forward_hook(lambda _, __, out: captured.update(h=out))
    logits = model(tokens, torch.arange(8))
    torch.testing.assert_close(logits, captured["h"] @ model.tok_embeddings.weight.T)  # [B, T, V]
    logits[..., 300].sum().backward()
    assert model.tok_embeddings.weight.grad[300].abs().sum() > 0  # reached only through the head


@pytest.mark.parametrize("tied", [True, False])
def test_logit_ids_are_the_sliced_full_logits_bit_for_bit(tied: bool) -> None:
    # A decode step that may sample only a range of ids computes only those output rows; the values
    # must be the very bits of the full logits, or sampled ids could change.
    model = _model(tied_head=tied)
    ids = range(100, 300)
    for batch in (1, 2, 16):
        tokens = _tokens(batch, 5)
        cache = model.new_cache(batch, max_len=8)
        full = model(tokens, torch.arange(5), cache)
        assert torch.equal(model(tokens, torch.arange(5), model.new_cache(batch, max_len=8), logit_ids=ids), full[..., 100:300])
        step = model(tokens[:, :1], torch.tensor([5]), cache, logit_ids=ids)  # [B, 1, 200]
        again = model(tokens[:, :1], torch.tensor([5]), cache)
        assert step.shape == (batch, 1, 200) and torch.equal(step, again[..., 100:300])
    for bad in (range(0, 10, 2), range(5, 5), range(V - 1, V + 1)):
        with pytest.raises(ValueError, match="logit_ids"):
            model(_tokens(1, 2), torch.arange(2), logit_ids=bad)


def test_untied_head_has_its_own_weight() -> None:
    tied, untied = _model(), _model(tied_head=False)
    assert untied.state_dict()["output.weight"].shape == (V, TINY.dim)
    assert untied.num_parameters() - tied.num_parameters() == V * TINY.dim
    tokens = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    untied(tokens, torch.arange(8))[..., 300].sum().backward()
    assert untied.tok_embeddings.weight.grad[300].abs().sum() == 0


def test_dropout_is_active_only_in_train_mode() -> None:
    model = _model(dropout=0.1).train()
    tokens, positions = _tokens(2, 8), torch.arange(8)
    assert not torch.allclose(model(tokens, positions), model(tokens, positions))
    model.eval()
    torch.testing.assert_close(model(tokens, positions), model(tokens, positions), atol=0, rtol=0)


def test_size_fields_reach_the_modules() -> None:
    model = _model(ffn_dim=48, max_seq_len=40, norm_eps=1e-6)
    assert model.layers[0].feed_forward.w1.weight.shape == (48, TINY.dim)
    assert model.pos_embeddings.weight.shape == (40, TINY.dim)
    assert model.norm.eps == model.layers[1].ffn_norm.eps == 1e-6


def test_cogview_4b_parameter_count_on_meta() -> None:
    with torch.device("meta"):
        model = CogViewTransformer(PRESETS["cogview-4b"])
    assert model.num_parameters() == 3_928_849_920
    assert model.num_parameters(exclude_embeddings=True) == 3_928_849_920 - 58240 * 2560 - 1089 * 2560


def test_initialisation_statistics() -> None:
    torch.manual_seed(0)
    config = dataclasses.replace(TINY, dim=256, n_heads=4, n_layers=8)
    model = CogViewTransformer(config)
    out_std = 0.02 / math.sqrt(2 * config.n_layers)
    wo = torch.cat([layer.attention.wo.weight.flatten() for layer in model.layers])
    w2 = torch.cat([layer.feed_forward.w2.weight.flatten() for layer in model.layers])
    wqkv = torch.cat([layer.attention.wqkv.weight.flatten() for layer in model.layers])
    assert wo.std().item() == pytest.approx(out_std, rel=0.02)
    assert w2.std().item() == pytest.approx(out_std, rel=0.02)
    assert wqkv.std().item() == pytest.approx(0.02, rel=0.02)
    assert model.tok_embeddings.weight.std().item() == pytest.approx(0.02, rel=0.02)
    assert model.pos_embeddings.weight.std().item() == pytest.approx(0.02, rel=0.05)
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert p.abs().sum() == 0, name
        elif "norm" in name:
            assert torch.all(p == 1), name


# --- save / load ----------------------------------------------------------------------------


def test_save_load_round_trip_gives_identical_logits(tmp_path) -> None:
    model = _model(pb_relax_alpha=32.0, ln_input_scaling="max")
    model.save_pretrained(tmp_path)
    assert (tmp_path / CONFIG_NAME).is_file() and (tmp_path / WEIGHTS_NAME).is_file()
    for name in (CONFIG_NAME, WEIGHTS_NAME):  # readable by others, like any saved file
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name
    loaded = CogViewTransformer.from_pretrained(tmp_path)
    assert loaded.config == model.config and not loaded.training
    tokens, positions = _tokens(2, 10), torch.arange(10)
    assert torch.equal(loaded(tokens, positions), model(tokens, positions))
    half = CogViewTransformer.from_pretrained(tmp_path, device="cpu", dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 and p.device.type == "cpu" for p in half.parameters())


def test_loading_a_truncated_file_raises(tmp_path) -> None:
    _model().save_pretrained(tmp_path)
    weights = tmp_path / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        CogViewTransformer.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"dim": 32}, "shape mismatch"),
        ({"n_layers": 3}, "missing key"),
        ({"sandwich_ln": False}, "unexpected key"),
        ({"rotary": True}, "unknown TransformerConfig field"),
        ({"dim": 30}, "not divisible"),
    ],
)
def test_loading_with_a_mismatched_config_raises(tmp_path, change: dict, fragment: str) -> None:
    _model().save_pretrained(tmp_path)
    config_path = tmp_path / CONFIG_NAME
    config_path.write_text(json.dumps(json.loads(config_path.read_text()) | change))
    with pytest.raises(CheckpointError, match=fragment):
        CogViewTransformer.from_pretrained(tmp_path)


def test_loading_a_missing_folder_raises(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        CogViewTransformer.from_pretrained(tmp_path / "nowhere")


def test_cell_table_adds_to_the_input_and_cell_zero_is_nothing() -> None:
    torch.manual_seed(0)
    model = CogViewTransformer(dataclasses.replace(PRESETS["tiny"], cell_embeddings=5)).eval()
    assert torch.count_nonzero(model.cell_embeddings.weight[0]) == 0
    tokens, positions = torch.randint(0, 512, (2, 6)), torch.arange(6)
    plain = model(tokens, positions)
    assert torch.equal(model(tokens, positions, cells=torch.zeros(6, dtype=torch.long)), plain)
    cells = torch.tensor([0, 0, 1, 2, 1, 2])
    assert not torch.allclose(model(tokens, positions, cells=cells)[:, 2:], plain[:, 2:])
    assert torch.equal(model(tokens, positions, cells=cells)[:, :2], plain[:, :2])
    with pytest.raises(ValueError, match=r"cells must be \[T\] or \[B, T\]"):
        model(tokens, positions, cells=cells[:5])
    without = CogViewTransformer(PRESETS["tiny"])
    with pytest.raises(ValueError, match="no cell table"):
        without(tokens, positions, cells=cells)


def test_source_map_starts_at_zero_and_reads_the_source_embedding() -> None:
    torch.manual_seed(0)
    config = dataclasses.replace(PRESETS["tiny"], cell_sources=True)
    model = CogViewTransformer(config).eval()
    tokens, positions = torch.randint(0, 512, (2, 6)), torch.arange(6)
    sources = torch.tensor([[-1, -1, 7, 7, 8, 8], [-1, -1, 3, 3, 3, 3]])[..., None].repeat(1, 1, 9)
    sources[0, 2:, 0] = -1  # a neighbour outside the crop
    plain = model(tokens, positions)
    assert torch.equal(model(tokens, positions, sources=sources), plain)  # zero at initialisation
    with torch.no_grad():
        model.cell_sources.weight.normal_(0, 1.0)
    out = model(tokens, positions, sources=sources)
    assert torch.equal(out[:, :2], plain[:, :2]) and not torch.allclose(out[:, 2:], plain[:, 2:])
    with pytest.raises(ValueError, match=r"sources must be \[T, 9\]"):
        model(tokens, positions, sources=sources[..., :4])
    with pytest.raises(ValueError, match="no source map"):
        CogViewTransformer(PRESETS["tiny"])(tokens, positions, sources=sources)
