"""convert-hf on a tiny random FalconH1ForCausalLM checkpoint (tests/tiny_falcon_h1.py's weights
under transformers' names, no multiplier folded, A as A_log, the Conv1d kernels (conv_dim, 1,
d_conv)): the file holds the weights with the multipliers folded in as llama.cpp's FalconH1Model
writes them, and its keys; splitllm's engine and llama.cpp give the float64 reference's logits on
it; q8_0 has the types and bytes of llama.cpp's quantizer on our f32 file; what llama.cpp would not
run as transformers does is refused."""

from __future__ import annotations

import dataclasses
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
from splitllm_convert.errors import ConvertError
from test_convert_nemotron_h import IDS, rel_err
from tiny_falcon_h1 import FalconConfig, falcon_reference_logits, folded, make_falcon_weights
from tiny_mamba2 import hf_weights

FALCON = FalconConfig()
# GGUF name (after "blk.N.") -> transformers' (after "model.layers.N."), the weights as they are
NAMES = {
    "attn_norm.weight": "input_layernorm.weight", "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight", "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight", "ffn_norm.weight": "pre_ff_layernorm.weight",
    "ffn_gate.weight": "feed_forward.gate_proj.weight", "ffn_up.weight": "feed_forward.up_proj.weight",
    "ffn_down.weight": "feed_forward.down_proj.weight",
    "token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.final_layernorm.weight",
    "output.weight": "lm_head.weight",
}  # fmt: skip


def hf_checkpoint(d: Path, fc: FalconConfig, **over: Any) -> dict[str, np.ndarray]:
    """A FalconH1ForCausalLM directory holding make_falcon_weights(fc); returns them as float32
    rounds them (float64, GGUF names, unfolded)."""
    c = fc.ssm
    d.mkdir(parents=True, exist_ok=True)
    assert F.write_bpe_tokenizer(d, vocab_size=c.n_vocab) == c.n_vocab
    held = make_falcon_weights(fc)
    hf = hf_weights(held, NAMES, "model.layers", "mamba.")
    hf_cfg = {
        "architectures": ["FalconH1ForCausalLM"], "model_type": "falcon_h1", "vocab_size": c.n_vocab,
        "hidden_size": c.n_embd, "intermediate_size": c.n_ff, "num_hidden_layers": c.n_layer,
        "num_attention_heads": c.n_head, "num_key_value_heads": c.n_head_kv, "head_dim": c.head_dim,
        "hidden_act": "silu", "rms_norm_eps": c.rms_eps, "rope_theta": c.rope_base,
        "max_position_embeddings": 4096, "tie_word_embeddings": False, "attention_bias": False,
        "mlp_bias": False, "projectors_bias": False, "mamba_proj_bias": False,
        "mamba_d_ssm": c.d_inner, "mamba_n_heads": c.ssm_heads, "mamba_d_head": c.d_inner // c.ssm_heads,
        "mamba_d_state": c.d_state, "mamba_n_groups": c.n_group, "mamba_d_conv": c.d_conv,
        "mamba_conv_bias": c.conv_bias, "mamba_rms_norm": fc.rms_norm, "mamba_norm_before_gate": False,
        "embedding_multiplier": fc.embedding, "lm_head_multiplier": fc.lm_head,
        "attention_in_multiplier": fc.attention_in, "attention_out_multiplier": fc.attention_out,
        "key_multiplier": fc.key, "ssm_in_multiplier": fc.ssm_in, "ssm_out_multiplier": fc.ssm_out,
        "ssm_multipliers": list(fc.ssm_mup), "mlp_multipliers": list(fc.mlp),
        "torch_dtype": "float32", "bos_token_id": 1, "eos_token_id": 2,
    }  # fmt: skip
    hf_cfg.update(over)
    (d / "config.json").write_text(json.dumps(hf_cfg))
    F.save_weights(d, {n: x.astype(np.float32) for n, x in hf.items()})
    return {n: x.astype(np.float32).astype(np.float64) for n, x in held.items()}


@pytest.mark.parametrize("rms_norm", [True, False])
def test_converted_file_runs_as_the_reference(tmp_path: Path, rms_norm: bool) -> None:
    fc = dataclasses.replace(FALCON, rms_norm=rms_norm)
    held = hf_checkpoint(tmp_path / "hf", fc)
    out = tmp_path / "m.gguf"
    convert(tmp_path / "hf", out, type="f32", quiet=True)
    r = GGUFReader(out)
    a = "falcon-h1."
    keys = {k.removeprefix(a): f.contents() for k, f in r.fields.items() if k.startswith(a)}
    c = fc.ssm
    assert (keys["ssm.inner_size"], keys["ssm.time_step_rank"], keys["ssm.group_count"]) == (
        c.d_inner,
        c.ssm_heads,
        c.n_group,
    )
    assert (keys["feed_forward_length"], keys["attention.key_length"], keys["context_length"]) == (
        c.n_ff,
        c.head_dim,
        4096,
    )
    want = {n.removesuffix(".weight") if ".ffn_norm." in n else n: x for n, x in folded(fc, held).items()}
    got = {t.name: TC.as_f32(t) for t in r.tensors}
    assert sorted(got) == sorted(want)
    for name, x in want.items():  # (A: -exp(log(-A)) in float32; the multipliers' products)
        np.testing.assert_allclose(got[name], x, rtol=1e-6, atol=0, err_msg=name)
    # (measured: ours 4.6e-6 from it, 2.6e-5 without the gated norm; llama.cpp 3.5e-4)
    ref = falcon_reference_logits(fc, held, IDS)
    with Model(str(out), n_ctx=64, n_threads=2) as m:
        assert rel_err(m.logits(IDS), ref) < 1e-4
    assert rel_err(TC.lcpp_logits(pytest.importorskip("llama_cpp"), out, IDS), ref) < 1e-3


def test_q8_0_types_and_bytes_match_llama_quantize(tmp_path: Path) -> None:
    hf = tmp_path / "hf"
    hf_checkpoint(hf, FALCON)
    ours = tmp_path / "ours.gguf"
    convert(hf, ours, type="q8_0", quiet=True, n_threads=2)
    TC.same_as_llama_quantize(hf, ours, tmp_path, "q8_0")


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"tie_word_embeddings": True}, "tie_word_embeddings"),
        ({"mlp_bias": True}, "mlp_bias"),
        ({"hidden_act": "gelu"}, "silu"),
        ({"mamba_norm_before_gate": True}, "mamba_norm_before_gate"),
        ({"ssm_multipliers": [1.0, 2.0]}, "ssm_multipliers"),
        ({"mamba_rms_norm": False}, "mamba.norm.weight"),
    ],
)
def test_bad_checkpoints_are_refused(tmp_path: Path, over: dict[str, Any], match: str) -> None:
    hf_checkpoint(tmp_path / "hf", FALCON, **over)
    with pytest.raises(ConvertError, match=match):
        convert(tmp_path / "hf", tmp_path / "m.gguf", type="f32", quiet=True)
    assert not (tmp_path / "m.gguf").exists()
