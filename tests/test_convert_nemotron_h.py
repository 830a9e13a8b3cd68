"""convert-hf on a tiny random NemotronHForCausalLM checkpoint (the weights of tests/tiny_mamba2.py's
nemotron_h model under transformers' names, A as A_log, the Conv1d kernels (conv_dim, 1, d_conv);
with experts, Nemotron 3 Nano's, each expert's up_proj / down_proj apart):
the file holds llama.cpp's names and NemotronHModel's metadata; splitllm's engine and llama.cpp
give the float64 reference's logits on it; q8_0 has the types and bytes of llama.cpp's quantizer on
our f32 file; what llama.cpp would not run as transformers does is refused."""

from __future__ import annotations

import json
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
from test_nemotron_h import NEMO
from test_nemotron_h_moe import NANO
from tiny_mamba2 import HybridConfig, hf_weights, hybrid_reference_logits, make_weights

IDS = [(7 * i + 3) % 300 for i in range(24)]
# GGUF name (after "blk.N.") -> transformers' (after "backbone.layers.N."), the weights as they are
NAMES = {
    "attn_norm.weight": "norm.weight",
    "attn_v.weight": "mixer.v_proj.weight", "attn_output.weight": "mixer.o_proj.weight",
    "ffn_up.weight": "mixer.up_proj.weight", "ffn_down.weight": "mixer.down_proj.weight",
    "ffn_gate_inp.weight": "mixer.gate.weight", "exp_probs_b.bias": "mixer.gate.e_score_correction_bias",
    "ffn_up_shexp.weight": "mixer.shared_experts.up_proj.weight",
    "ffn_down_shexp.weight": "mixer.shared_experts.down_proj.weight",
    "token_embd.weight": "backbone.embeddings.weight", "output_norm.weight": "backbone.norm_f.weight",
    "output.weight": "lm_head.weight",
}  # fmt: skip
EXPERTS = {"ffn_up_exps.weight": "up_proj", "ffn_down_exps.weight": "down_proj"}  # (nemotron_h_moe)
PATTERN = {"mamba": "M", "attention": "*", "mlp": "-", "moe": "E"}


def hf_checkpoint(d: Path, cfg: HybridConfig, **over: Any) -> dict[str, np.ndarray]:
    """A NemotronHForCausalLM directory holding the GGUF weights of make_weights(cfg); returns them
    as the converter should write them (float64)."""
    d.mkdir(parents=True, exist_ok=True)
    assert F.write_bpe_tokenizer(d, vocab_size=cfg.n_vocab) == cfg.n_vocab
    held = make_weights(cfg)

    def other(hf: dict[str, np.ndarray], p: str, rest: str, x: np.ndarray) -> None:
        if rest in EXPERTS:
            hf.update((p + f"mixer.experts.{e}.{EXPERTS[rest]}.weight", x[e]) for e in range(cfg.n_expert))
        else:  # q / k (HF's row order: the converter permutes them)
            heads = cfg.n_head if rest == "attn_q.weight" else cfg.n_head_kv
            hf[p + f"mixer.{rest[5]}_proj.weight"] = rope_unpermute(x, heads)

    hf = hf_weights(held, NAMES, "backbone.layers", "mixer.", other)
    hf_cfg = {
        "architectures": ["NemotronHForCausalLM"], "model_type": "nemotron_h", "vocab_size": cfg.n_vocab,
        "hidden_size": cfg.n_embd, "intermediate_size": cfg.n_ff, "num_hidden_layers": cfg.n_layer,
        "hybrid_override_pattern": "".join(PATTERN[t] for t in cfg.layer_types),
        "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.n_head_kv, "head_dim": cfg.head_dim,
        "mlp_hidden_act": "relu2", "attention_bias": False, "mlp_bias": False, "use_bias": False,
        "use_conv_bias": cfg.conv_bias, "layer_norm_epsilon": cfg.rms_eps, "max_position_embeddings": 4096,
        "ssm_state_size": cfg.d_state, "mamba_num_heads": cfg.ssm_heads, "n_groups": cfg.n_group,
        "mamba_head_dim": cfg.d_inner // cfg.ssm_heads, "conv_kernel": cfg.d_conv,
        "tie_word_embeddings": cfg.tied_output, "torch_dtype": "float32", "bos_token_id": 1,
        "eos_token_id": 2,
    }  # fmt: skip
    if cfg.n_expert:  # (Nemotron 3 Nano's keys; n_group: the router's groups, not Mamba's n_groups)
        hf_cfg |= {
            "n_routed_experts": cfg.n_expert, "num_experts_per_tok": cfg.n_expert_used,
            "moe_intermediate_size": cfg.n_ff, "moe_shared_expert_intermediate_size": cfg.n_ff_shexp,
            "n_shared_experts": 1, "norm_topk_prob": cfg.norm_topk, "routed_scaling_factor": cfg.routed_scale,
            "n_group": 1, "topk_group": 1,
        }  # fmt: skip
    hf_cfg.update(over)
    (d / "config.json").write_text(json.dumps(hf_cfg))
    F.save_weights(d, {n: x.astype(np.float32) for n, x in hf.items()})
    return {n: x.astype(np.float32).astype(np.float64) for n, x in held.items()}


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float((np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)).max())


def test_converted_file_runs_as_the_reference(tmp_path: Path) -> None:
    want = hf_checkpoint(tmp_path / "hf", NEMO)
    out = tmp_path / "m.gguf"
    convert(tmp_path / "hf", out, type="f32", quiet=True)
    r = GGUFReader(out)
    keys = {
        k.removeprefix("nemotron_h."): f.contents()
        for k, f in r.fields.items()
        if k.startswith("nemotron_h.")
    }
    assert keys["attention.head_count_kv"] == [
        NEMO.n_head_kv if t == "attention" else 0 for t in NEMO.layer_types
    ]
    assert keys["feed_forward_length"] == [NEMO.ff_of(i) for i in range(NEMO.n_layer)]
    assert (keys["attention.key_length"], keys["ssm.inner_size"], keys["ssm.group_count"]) == (
        NEMO.head_dim,
        NEMO.d_inner,
        NEMO.n_group,
    )
    assert (keys["rope.scaling.finetuned"], keys["context_length"]) == (False, 2**20)
    got = {t.name: TC.as_f32(t) for t in r.tensors}
    assert sorted(got) == sorted(want)
    for name, x in want.items():  # (A: -exp(log(-A)) in float32)
        np.testing.assert_allclose(got[name], x, rtol=1e-6, atol=0, err_msg=name)
    ref = hybrid_reference_logits(NEMO, {n: x.astype(np.float64) for n, x in got.items()}, IDS)
    with Model(str(out), n_ctx=64, n_threads=2) as m:
        assert rel_err(m.logits(IDS), ref) < 1e-4  # (measured 3.5e-5; llama.cpp ~1e-4 from float64)
    assert rel_err(TC.lcpp_logits(pytest.importorskip("llama_cpp"), out, IDS), ref) < 1e-3


def test_converted_moe_file_runs_as_the_reference(tmp_path: Path) -> None:
    """Nemotron 3 Nano (experts): a nemotron_h_moe file with NemotronHModel's expert keys."""
    want = hf_checkpoint(tmp_path / "hf", NANO)
    out = tmp_path / "m.gguf"
    convert(tmp_path / "hf", out, type="f32", quiet=True)
    r = GGUFReader(out)
    a = "nemotron_h_moe."
    keys = {k.removeprefix(a): f.contents() for k, f in r.fields.items() if k.startswith(a)}
    assert keys["feed_forward_length"] == [NANO.ff_of(i) for i in range(NANO.n_layer)]
    assert keys["attention.head_count_kv"] == [
        NANO.n_head_kv if t == "attention" else 0 for t in NANO.layer_types
    ]
    assert {k: keys[k] for k in keys if k.startswith("expert_")} == pytest.approx(
        {
            "expert_count": NANO.n_expert, "expert_used_count": NANO.n_expert_used,
            "expert_feed_forward_length": NANO.n_ff, "expert_shared_feed_forward_length": NANO.n_ff_shexp,
            "expert_shared_count": 1, "expert_weights_norm": True, "expert_weights_scale": 2.5,
            "expert_group_count": 1,
        }
    )  # fmt: skip
    got = {t.name: TC.as_f32(t) for t in r.tensors}
    assert sorted(got) == sorted(want)
    for name, x in want.items():
        np.testing.assert_allclose(got[name], x, rtol=1e-6, atol=0, err_msg=name)
    ref = hybrid_reference_logits(NANO, {n: x.astype(np.float64) for n, x in got.items()}, IDS)
    with Model(str(out), n_ctx=64, n_threads=2) as m:
        assert rel_err(m.logits(IDS), ref) < 1e-4  # (measured 2.3e-5; llama.cpp 8.5e-5)
    assert rel_err(TC.lcpp_logits(pytest.importorskip("llama_cpp"), out, IDS), ref) < 1e-3


@pytest.mark.parametrize("cfg", [NEMO, NANO], ids=["nemotron_h", "nemotron_h_moe"])
def test_q8_0_types_and_bytes_match_llama_quantize(tmp_path: Path, cfg: HybridConfig) -> None:
    hf = tmp_path / "hf"
    hf_checkpoint(hf, cfg)
    ours = tmp_path / "ours.gguf"
    convert(hf, ours, type="q8_0", quiet=True, n_threads=2)
    TC.same_as_llama_quantize(hf, ours, tmp_path, "q8_0")


@pytest.mark.parametrize(
    ("cfg", "over", "match"),
    [
        (NEMO, {"hybrid_override_pattern": "M-M*-"}, "must have 6 characters"),
        (NEMO, {"hybrid_override_pattern": "M-M*-E"}, "'E' layers"),
        (NEMO, {"hybrid_override_pattern": "M-M--M"}, "belongs to a attention layer"),
        (NEMO, {"mlp_hidden_act": "silu"}, "relu2"),
        (NEMO, {"use_bias": True}, "use_bias"),
        (NEMO, {"mamba_head_dim": 8}, "conv1d.bias.* has shape"),
        (NEMO, {"n_groups": 3}, "groups do not divide them"),
        (NEMO, {"use_conv_bias": False}, "conv1d.bias"),
        (NANO, {"hybrid_override_pattern": "MEM*-M"}, "'E' layers need"),
        (NANO, {"hybrid_override_pattern": "MEM*MM"}, "of mamba layer 4 is missing"),
        (NANO, {"n_group": 2}, "expert groups"),
        (NANO, {"moe_latent_size": 32}, "latent"),
        (NANO, {"norm_topk_prob": None}, "norm_topk_prob"),
        (NANO, {"moe_shared_expert_intermediate_size": 32}, "has shape"),
    ],
)
def test_bad_checkpoints_are_refused(
    tmp_path: Path, cfg: HybridConfig, over: dict[str, Any], match: str
) -> None:
    hf_checkpoint(tmp_path / "hf", cfg, **over)
    with pytest.raises(ConvertError, match=match):
        convert(tmp_path / "hf", tmp_path / "m.gguf", type="f32", quiet=True)
    assert not (tmp_path / "m.gguf").exists()
