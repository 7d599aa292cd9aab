"""Tiny files in the released CogView layout, and reference computations written from SPEC.md.

Nothing here imports our model code: the writers follow SPEC 1.7 / 2.2 / 4.5 (key names, tensor
orientation, fp16, the DeepSpeed dict around ``module``, the tracker file), and the reference
forward passes follow the formulas of SPEC 1.2-1.6 and 2.2 over original-named state dicts.
"""

from __future__ import annotations

import argparse
import math
import random
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# SPEC 2.2: normalisation constants of vqvae_hard_biggerset_011.pt
MEAN = (0.79093, 0.76271, 0.75340)
STD = (0.30379, 0.32279, 0.32800)


def layer_shapes(dim: int) -> dict[str, tuple[int, ...]]:
    """Per-layer modules of SPEC 1.3/1.7 in the original's order, with their weight shapes [out, in]."""
    return {
        "input_layernorm": (dim,),
        "attention.query_key_value": (3 * dim, dim),
        "attention.dense": (dim, dim),
        "post_attention_layernorm": (dim,),
        "third_layernorm": (dim,),
        "fourth_layernorm": (dim,),
        "mlp.dense_h_to_4h": (4 * dim, dim),
        "mlp.dense_4h_to_h": (dim, 4 * dim),
    }


def original_transformer_state(
    vocab: int, dim: int, n_layers: int, positions: int, *, sat: bool = False, seed: int = 0
) -> OrderedDict[str, torch.Tensor]:
    """Random fp16 weights under the original keys of SPEC 1.7 (``[out, in]`` linears)."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int, std: float = 1.0, mean: float = 0.0) -> torch.Tensor:
        return (mean + std * torch.randn(*shape, generator=g)).half()

    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    sd["transformer.word_embeddings.weight" if sat else "word_embeddings.weight"] = randn(vocab, dim, std=0.2)
    sd["transformer.position_embeddings.weight"] = randn(positions, dim, std=0.5)
    for i in range(n_layers):
        for name, shape in layer_shapes(dim).items():
            prefix = f"transformer.layers.{i}.{name}"
            if len(shape) == 1:  # LayerNorm
                sd[f"{prefix}.weight"] = randn(dim, std=0.2, mean=1.0)
                sd[f"{prefix}.bias"] = randn(dim, std=0.1)
            else:
                sd[f"{prefix}.weight"] = randn(*shape, std=1.0 / math.sqrt(shape[1]))
                sd[f"{prefix}.bias"] = randn(shape[0], std=0.1)
    sd["transformer.final_layernorm.weight"] = randn(dim, std=0.2, mean=1.0)
    sd["transformer.final_layernorm.bias"] = randn(dim, std=0.1)
    sd._metadata = OrderedDict({"": {"version": 1}})  # type: ignore[attr-defined]  # as Module.state_dict()
    return sd


def deepspeed_checkpoint(module: OrderedDict[str, torch.Tensor], iteration: int, *, with_args: bool) -> dict:
    """What DeepSpeed 0.4's ``save_checkpoint`` plus CogView's client state pickle (SPEC 4.5)."""
    rng = torch.Generator().manual_seed(0).get_state()
    ckpt = {
        "module": module,
        "optimizer": None,  # ZeRO: optimizer states live in zero_pp_rank_* files
        "lr_scheduler": None,
        "csr_tensor_module_names": set(),
        "skipped_steps": 3,
        "global_steps": iteration,
        "global_samples": iteration * 6144,
        "dp_world_size": 64,
        "mp_world_size": 1,
        "iteration": iteration,
        "client_lr_scheduler": {
            "warmup_iter": 2880,
            "num_iters": 144000,
            "decay_style": "cosine",
            "end_iter": 144000,
            "decay_ratio": 0.1,
        },
        "random_rng_state": random.Random(1234).getstate(),
        "np_rng_state": np.random.RandomState(1234).get_state(),
        "torch_rng_state": rng,
        "cuda_rng_state": rng.clone(),
        "rng_tracker_states": {"model-parallel-rng": rng.clone()},
    }
    if with_args:  # Megatron-lineage trainers (SwissArmyTransformer) also store their arguments
        ckpt["args"] = argparse.Namespace(num_layers=2, hidden_size=64, fp16=True, load=None)
    return ckpt


def write_checkpoint_dir(
    folder: Path, module: OrderedDict[str, torch.Tensor], iteration: int = 142000, *, with_args: bool = False
) -> Path:
    """``folder/latest_checkpointed_iteration.txt`` + ``folder/<iter>/mp_rank_00_model_states.pt``."""
    (folder / str(iteration)).mkdir(parents=True)
    (folder / "latest_checkpointed_iteration.txt").write_text(str(iteration))
    path = folder / str(iteration) / "mp_rank_00_model_states.pt"
    torch.save(deepspeed_checkpoint(module, iteration, with_args=with_args), path)
    return path


def reference_logits(sd: dict[str, torch.Tensor], tokens: torch.Tensor, n_heads: int) -> torch.Tensor:
    """SPEC 1.2-1.6 in plain torch, fp32: embeddings, Sandwich-LN blocks, fused QKV, tanh-GELU, tied head."""
    return _reference_forward(sd, tokens, torch.arange(tokens.shape[1]), None, n_heads)[0]


def reference_mems_logits(
    sd: dict[str, torch.Tensor],
    tokens: torch.Tensor,
    prompt_len: int,
    n_heads: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``[B, T - prompt_len + 1, V]``: the last logits of the prompt, then of each later token fed
    alone, as the released ``filling_sequence`` computes them (SPEC 3.1 step 5): every layer caches
    the hidden states that entered it ("mems") and recomputes K/V over ``input_layernorm(mem)``,
    whose input scaling takes one max over all cached positions and rows."""
    sd = {k: v.to(dtype) for k, v in sd.items()}
    logits, mems = _reference_forward(sd, tokens[:, :prompt_len], torch.arange(prompt_len), None, n_heads)
    out = [logits[:, -1]]
    for t in range(prompt_len, tokens.shape[1]):
        logits, new = _reference_forward(sd, tokens[:, t : t + 1], torch.tensor([t]), mems, n_heads)
        mems = [torch.cat([m, n], dim=1) for m, n in zip(mems, new, strict=True)]
        out.append(logits[:, -1])
    return torch.stack(out, dim=1)


def _reference_forward(
    sd: dict[str, torch.Tensor],
    tokens: torch.Tensor,
    positions: torch.Tensor,
    mems: list[torch.Tensor] | None,
    n_heads: int,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits of ``tokens`` after the cached hidden states ``mems`` (one ``[B, M, h]`` per layer),
    and the hidden states that entered each layer (the next call's mems); fp32 unless ``sd`` is fp64."""
    sd = {k: v if v.dtype == torch.float64 else v.float() for k, v in sd.items()}
    word = sd.get("word_embeddings.weight", sd.get("transformer.word_embeddings.weight"))
    B, T = tokens.shape
    h = word.shape[1]
    d = h // n_heads
    M = 0 if mems is None else mems[0].shape[1]

    def ln(x: torch.Tensor, name: str) -> torch.Tensor:
        x = x / (x.detach().abs().max() / 8)  # SPEC 1.4: one global max over the whole input
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + 1e-5) * sd[f"{name}.weight"] + sd[f"{name}.bias"]

    def linear(x: torch.Tensor, name: str) -> torch.Tensor:
        return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]

    x = word[tokens] + sd["transformer.position_embeddings.weight"][positions]  # [B, T, h]
    mask = torch.ones(T, M + T, dtype=word.dtype).tril(diagonal=M)  # query i sees the mems and new tokens <= i
    n_layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.layers.")})
    inputs = []
    for i in range(n_layers):
        p = f"transformer.layers.{i}."
        inputs.append(x)
        normed = ln(x, p + "input_layernorm")
        if mems is not None:  # the mems get their own LayerNorm call, hence their own scale
            normed = torch.cat([ln(mems[i], p + "input_layernorm"), normed], dim=1)  # [B, M + T, h]
        qkv = linear(normed, p + "attention.query_key_value")  # [B, M + T, 3h]
        q, k, v = (t.reshape(B, M + T, n_heads, d).transpose(1, 2) for t in qkv.split(h, dim=-1))
        scores = (q[:, :, M:] / math.sqrt(d)) @ k.transpose(-1, -2)  # Q scaled before the matmul
        scores = scores * mask - 10000.0 * (1 - mask)
        a = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, h)
        x = x + ln(linear(a, p + "attention.dense"), p + "third_layernorm")
        m = linear(ln(x, p + "post_attention_layernorm"), p + "mlp.dense_h_to_4h")
        m = 0.5 * m * (1.0 + torch.tanh(0.7978845608028654 * m * (1.0 + 0.044715 * m * m)))  # gelu_impl
        x = x + ln(linear(m, p + "mlp.dense_4h_to_h"), p + "fourth_layernorm")
    return ln(x, "transformer.final_layernorm") @ word.T, inputs  # tied head, no bias


def original_vqvae_state(
    channels: int, embed_dim: int, n_embed: int, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random fp32 weights under the keys and shapes of SPEC 2.2 (ConvTranspose weights [in, out, k, k])."""
    g = torch.Generator().manual_seed(seed)

    def conv(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * math.sqrt(2 / (shape[1] * shape[2] * shape[3]))  # He init

    c, e = channels, embed_dim
    # (key, weight shape, bias length): Conv2d weights are [out, in, k, k], ConvTranspose2d [in, out, k, k]
    layers = [
        ("enc_b.blocks.0", (c, 3, 4, 4), c),
        ("enc_b.blocks.2", (c, c, 4, 4), c),
        ("enc_b.blocks.4", (c, c, 4, 4), c),
        ("enc_b.blocks.6", (e, c, 1, 1), e),
        ("dec.blocks.0", (e, c, 4, 4), c),
        ("dec.blocks.2", (c, c, 4, 4), c),
        ("dec.blocks.4", (c, c, 4, 4), c),
        ("dec.blocks.6", (3, c, 1, 1), 3),
    ]
    sd = {}
    for name, shape, n_bias in layers:
        sd[f"{name}.weight"] = conv(*shape)
        sd[f"{name}.bias"] = 0.1 * torch.randn(n_bias, generator=g)
    sd["quantize_t.embed"] = torch.randn(e, n_embed, generator=g)
    sd["quantize_t.cluster_size"] = torch.rand(n_embed, generator=g)
    sd["quantize_t.embed_avg"] = torch.randn(e, n_embed, generator=g)
    return sd


def reference_encode(sd: dict[str, torch.Tensor], pixels: torch.Tensor) -> torch.Tensor:
    """SPEC 2.2: normalise, three 4x4/2 convs with ReLU, 1x1 conv, nearest code by ||z||^2 - 2zE + ||E||^2."""
    x = (pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    for i in (0, 2, 4):
        x = F.relu(
            F.conv2d(x, sd[f"enc_b.blocks.{i}.weight"], sd[f"enc_b.blocks.{i}.bias"], stride=2, padding=1)
        )
    z = F.conv2d(x, sd["enc_b.blocks.6.weight"], sd["enc_b.blocks.6.bias"]).permute(
        0, 2, 3, 1
    )  # [b, h, w, D]
    E = sd["quantize_t.embed"]  # [D, K]
    flat = z.reshape(-1, E.shape[0])
    dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ E + E.pow(2).sum(0, keepdim=True)
    return dist.argmin(1).view(z.shape[:3])


def reference_decode(sd: dict[str, torch.Tensor], codes: torch.Tensor) -> torch.Tensor:
    """SPEC 2.2: ``decoder(embed[codes]) * std + mean``, not clamped."""
    x = F.embedding(codes, sd["quantize_t.embed"].T).permute(0, 3, 1, 2)  # [b, D, h, w]
    for i in (0, 2, 4):
        x = F.relu(
            F.conv_transpose2d(
                x, sd[f"dec.blocks.{i}.weight"], sd[f"dec.blocks.{i}.bias"], stride=2, padding=1
            )
        )
    x = F.conv2d(x, sd["dec.blocks.6.weight"], sd["dec.blocks.6.bias"])
    return x * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
