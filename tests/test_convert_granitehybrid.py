"""convert-hf on tiny random GraniteMoeHybridForCausalLM checkpoints (the weights of
tests/tiny_mamba2.py under transformers' names, A as A_log, the Conv1d kernels (conv_dim, 1, d_conv),
the gate/up projections fused): the file holds llama.cpp's names, shapes and GraniteHybridModel's
metadata; splitllm's engine and llama.cpp give the float64 reference's logits on it; quantized
files have the types and bytes of llama.cpp's own quantizer on our f32 file; what llama.cpp would
run differently is refused."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import hf_fixtures as F
import numpy as np
import pytest
import test_convert as TC
from gguf import GGUFReader
from splitllm import Model
from splitllm_convert import convert
from splitllm_convert.arch import rope_unpermute
from splitllm_convert.errors import ConvertError
from tiny_mamba2 import ATTN, MAMBA, HybridConfig, hybrid_reference_logits, make_weights

IDS = [(7 * i + 3) % 300 for i in range(24)]
# GGUF name (after "blk.N.") -> transformers' (after "model.layers.N."), the weights as they are
LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
    "ssm_in.weight": "mamba.in_proj.weight", "ssm_conv1d.bias": "mamba.conv1d.bias",
    "ssm_dt.bias": "mamba.dt_bias", "ssm_out.weight": "mamba.out_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate_inp.weight": "block_sparse_moe.router.layer.weight",
    "ffn_down_exps.weight": "block_sparse_moe.output_linear.weight",
    "ffn_down_shexp.weight": "shared_mlp.output_linear.weight",
    "ffn_down.weight": "shared_mlp.output_linear.weight",
}  # fmt: skip
FUSED = {"ffn_gate_exps.weight": "block_sparse_moe.input_linear.weight",
         "ffn_gate_shexp.weight": "shared_mlp.input_linear.weight",
         "ffn_gate.weight": "shared_mlp.input_linear.weight"}  # fmt: skip
TOP = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
       "output.weight": "lm_head.weight"}  # fmt: skip


def hf_weights(cfg: HybridConfig, held: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """transformers' tensors holding the GGUF weights ``held``: A_log = log(-A), D and the norm
    flat, the kernels (conv_dim, 1, d_conv), gate and up rows fused, q/k rows in HF's order (the
    converter permutes them back)."""
    hf: dict[str, np.ndarray] = {TOP[n]: x for n, x in held.items() if n in TOP}
    for name, x in held.items():
        if not name.startswith("blk."):
            continue
        _, bid, rest = name.split(".", 2)
        p = f"model.layers.{bid}."
        if rest in LAYER_NAMES:
            hf[p + LAYER_NAMES[rest]] = x
        elif rest in FUSED:
            hf[p + FUSED[rest]] = np.concatenate([x, held[name.replace("_gate", "_up")]], axis=-2)
        elif rest in ("attn_q.weight", "attn_k.weight"):
            heads = cfg.n_head if rest == "attn_q.weight" else cfg.n_head_kv
            hf[p + f"self_attn.{rest[5]}_proj.weight"] = rope_unpermute(x, heads)
        elif rest == "ssm_conv1d.weight":
            hf[p + "mamba.conv1d.weight"] = x[:, None, :]
        elif rest == "ssm_a":
            hf[p + "mamba.A_log"] = np.log(-x[:, 0])
        elif rest in ("ssm_d", "ssm_norm.weight"):
            hf[p + ("mamba.D" if rest == "ssm_d" else "mamba.norm.weight")] = x.reshape(-1)
        else:
            assert rest.startswith("ffn_up"), rest  # (fused with the gate)
    return {n: x.astype(np.float32) for n, x in hf.items()}


def hf_checkpoint(d: Path, cfg: HybridConfig, *, dtype: str = "f32", **over: Any) -> dict[str, np.ndarray]:
    """A GraniteMoeHybridForCausalLM directory; returns the stored weights (float32 values)."""
    d.mkdir(parents=True, exist_ok=True)
    assert F.write_bpe_tokenizer(d, vocab_size=cfg.n_vocab) == cfg.n_vocab
    emb, res, att, logit = cfg.granite_scales
    hf_cfg = {
        "architectures": ["GraniteMoeHybridForCausalLM"], "model_type": "granitemoehybrid",
        "vocab_size": cfg.n_vocab, "hidden_size": cfg.n_embd, "intermediate_size": cfg.n_ff,
        "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_head_kv, "max_position_embeddings": 4096, "rms_norm_eps": cfg.rms_eps,
        "tie_word_embeddings": cfg.tied_output, "rope_theta": cfg.rope_base, "attention_bias": False,
        "hidden_act": "silu", "embedding_multiplier": emb, "residual_multiplier": res,
        "attention_multiplier": att, "logits_scaling": logit,
        "num_local_experts": cfg.n_expert, "num_experts_per_tok": cfg.n_expert_used,
        "shared_intermediate_size": cfg.n_ff_shexp if cfg.n_expert else cfg.n_ff,
        "position_embedding_type": "nope", "layer_types": list(cfg.layer_types),
        "mamba_n_heads": cfg.ssm_heads, "mamba_n_groups": cfg.n_group, "mamba_d_state": cfg.d_state,
        "mamba_d_head": cfg.d_inner // cfg.ssm_heads, "mamba_d_conv": cfg.d_conv, "mamba_expand": 2,
        "mamba_conv_bias": cfg.conv_bias, "mamba_proj_bias": False,
        "torch_dtype": "float32", "bos_token_id": 1, "eos_token_id": 2,
    }  # fmt: skip
    hf_cfg.update(over)
    (d / "config.json").write_text(json.dumps(hf_cfg))
    return F.save_weights(d, hf_weights(cfg, make_weights(cfg)), dtype=dtype)


def _gguf_name(table: dict[str, str], hf_name: str, cfg: HybridConfig) -> str:
    """The GGUF name of a layer's HF tensor: the shared MLP's are the shared expert's beside experts,
    else the dense feed-forward's."""
    names = [k for k, v in table.items() if v == hf_name]
    return names[0] if len(names) == 1 else next(n for n in names if ("_shexp" in n) == bool(cfg.n_expert))


def gguf_weights(cfg: HybridConfig, stored: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What GraniteHybridModel makes of the stored tensors (written here from its modify_tensors)."""
    out: dict[str, np.ndarray] = {}
    back = {v: k for k, v in TOP.items()}
    for name, x in stored.items():
        if name in back:
            out[back[name]] = x
            continue
        _, _, bid, rest = name.split(".", 3)
        b = f"blk.{bid}."
        if rest in FUSED.values():
            gate = _gguf_name(FUSED, rest, cfg)
            half = x.shape[-2] // 2
            out[b + gate], out[b + gate.replace("_gate", "_up")] = x[..., :half, :], x[..., half:, :]
        elif rest in ("self_attn.q_proj.weight", "self_attn.k_proj.weight"):
            heads = cfg.n_head if rest.startswith("self_attn.q") else cfg.n_head_kv
            n = x.shape[0]
            out[b + f"attn_{rest[10]}.weight"] = (
                x.reshape(heads, 2, n // heads // 2, -1).swapaxes(1, 2).reshape(x.shape)
            )
        elif rest == "mamba.conv1d.weight":
            out[b + "ssm_conv1d.weight"] = x[:, 0, :]
        elif rest == "mamba.A_log":
            out[b + "ssm_a"] = -np.exp(x)[:, None]
        elif rest == "mamba.D":
            out[b + "ssm_d"] = x[:, None]
        elif rest == "mamba.norm.weight":
            out[b + "ssm_norm.weight"] = x.reshape(cfg.n_group, -1)
        else:
            out[b + _gguf_name(LAYER_NAMES, rest, cfg)] = x
    return out


DENSE = HybridConfig(seed=71)  # (H-Micro's shape)
MOE = HybridConfig(n_layer=5, layer_types=(MAMBA, ATTN, MAMBA, MAMBA, ATTN), n_expert=4, n_ff_shexp=64,
                   n_group=2, tied_output=False, seed=72)  # fmt: skip
WIDE = replace(MOE, n_embd=256, n_ff=512, n_ff_shexp=256, seed=73)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float((np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)).max())


@pytest.mark.parametrize(
    ("cfg", "dtype"), [(DENSE, "f32"), (MOE, "bf16")], ids=["dense-tied-f32", "moe-bf16"]
)
def test_converted_file_runs_as_the_reference(tmp_path: Path, cfg: HybridConfig, dtype: str) -> None:
    stored = hf_checkpoint(tmp_path / "hf", cfg, dtype=dtype)
    out = tmp_path / "m.gguf"
    convert(tmp_path / "hf", out, type="f32", quiet=True)
    r = GGUFReader(out)
    a = "granitehybrid."
    keys = {k.removeprefix(a): f.contents() for k, f in r.fields.items() if k.startswith(a)}
    assert keys["attention.head_count_kv"] == [
        0 if cfg.is_mamba(i) else cfg.n_head_kv for i in range(cfg.n_layer)
    ]
    ssm = {
        k: keys["ssm." + k]
        for k in ("conv_kernel", "state_size", "group_count", "inner_size", "time_step_rank")
    }
    assert ssm == {"conv_kernel": cfg.d_conv, "state_size": cfg.d_state, "group_count": cfg.n_group,
                   "inner_size": cfg.d_inner, "time_step_rank": cfg.ssm_heads}  # fmt: skip
    assert (keys["rope.scaling.finetuned"], keys["context_length"]) == (False, 2**20)
    assert keys.get("expert_count", 0) == cfg.n_expert
    assert keys.get("expert_shared_feed_forward_length", 0) == (cfg.n_ff_shexp if cfg.n_expert else 0)
    got = {t.name: TC.as_f32(t) for t in r.tensors}
    want = gguf_weights(cfg, stored)
    assert sorted(got) == sorted(want)
    for name, x in want.items():
        np.testing.assert_allclose(got[name], x, rtol=1e-6, atol=0, err_msg=name)  # (A: -exp in float32)
    held = {n: x.astype(np.float64) for n, x in got.items()}
    ref = hybrid_reference_logits(cfg, held, IDS)
    with Model(str(out), n_ctx=64, n_threads=2) as m:
        assert rel_err(m.logits(IDS), ref) < 3e-5
    theirs = TC.lcpp_logits(pytest.importorskip("llama_cpp"), out, IDS)
    assert rel_err(theirs, ref) < 1e-3


@pytest.mark.parametrize("qtype", ["q8_0", "q4_k_m", "f16"])
def test_types_and_bytes_match_llama_quantize(tmp_path: Path, qtype: str) -> None:
    """Our quantized file against llama.cpp's quantizer on our f32 file (f16: F32 kept for the
    kernels, A, D, the norms and the biases, as convert_hf_to_gguf.py writes them)."""
    hf = tmp_path / "hf"
    hf_checkpoint(hf, WIDE)
    ours = tmp_path / "ours.gguf"
    convert(hf, ours, type=qtype, quiet=True, n_threads=2)
    got = TC.tensors(ours)
    for name in ("ssm_conv1d.weight", "ssm_a", "ssm_d", "ssm_norm.weight", "ssm_dt.bias"):
        assert got["blk.0." + name].tensor_type.name == "F32", name
    if qtype == "f16":
        kept = ("norm.weight", "ssm_conv1d.weight", "ssm_a", "ssm_d", ".bias", "ffn_gate_inp.weight")
        assert {n for n, t in got.items() if t.tensor_type.name == "F32"} == {
            n for n in got if n.endswith(kept)
        }
        return
    TC.same_as_llama_quantize(hf, ours, tmp_path, qtype)


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"layer_types": ["mamba", "attention"]}, "'layer_types' must list 4"),
        ({"layer_types": ["mamba", "mamba", "mamba", "mamba"]}, "belongs to a attention layer"),
        ({"layer_types": ["attention", "mamba", "attention", "mamba"]}, "is missing"),
        ({"position_embedding_type": "rope"}, "position_embedding_type"),
        ({"mamba_proj_bias": True}, "mamba_proj_bias"),
        ({"mamba_d_head": 32}, "heads of head size 32"),
        ({"mamba_conv_bias": False}, "conv1d.bias"),
        ({"shared_intermediate_size": 64}, "shared_intermediate_size"),
    ],
)
def test_bad_checkpoints_are_refused(tmp_path: Path, over: dict[str, Any], match: str) -> None:
    hf_checkpoint(tmp_path / "hf", DENSE, **over)
    with pytest.raises(ConvertError, match=match):
        convert(tmp_path / "hf", tmp_path / "m.gguf", type="f32", quiet=True)
    assert not (tmp_path / "m.gguf").exists()
