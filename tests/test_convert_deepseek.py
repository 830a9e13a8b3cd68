"""convert-hf on tiny DeepseekV2ForCausalLM / DeepseekV3ForCausalLM checkpoints: the tensors as
llama.cpp's DeepseekV2Model writes them (kv_b_proj split into attn_k_b, transposed, and attn_v_b),
the metadata splitllm and llama.cpp load, logits against the float64 reference."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import routed_checks as RC
import test_convert as TC
from hf_fixtures import save_weights, write_bpe_tokenizer
from splitllm_convert import convert
from tiny_deepseek import hf_config, hf_weights, make_weights, reference_logits, v2, v3

TOKENS = [3, 17, 42, 5, 99, 7, 64, 12, 250, 1, 33, 8, 41, 77, 2, 300] * 2
YARN = {"factor": 4.0, "original_max_position_embeddings": 16, "mscale": 0.707, "mscale_all_dim": 0.707}
CONFIGS = {"v2": v2(), "v3": v3(), "v3-yarn": v3(rope_scaling=YARN, seed=5)}


def checkpoint(tmp_path, name):
    """(cfg, the GGUF-named weights, the converted F32 file)."""
    cfg = CONFIGS[name]
    d = tmp_path / "hf"
    d.mkdir()
    assert write_bpe_tokenizer(d, vocab_size=cfg.n_vocab) == cfg.n_vocab
    (d / "config.json").write_text(json.dumps(hf_config(cfg)))
    w = make_weights(cfg)
    save_weights(d, {k: v.astype(np.float32) for k, v in hf_weights(cfg, w).items()})
    out = tmp_path / "m.gguf"
    convert(d, out, type="f32", quiet=True)
    return cfg, RC.as_held(w), out


@pytest.mark.parametrize("name", list(CONFIGS))
def test_tensors_and_logits(tmp_path, name):
    cfg, w, path = checkpoint(tmp_path, name)
    TC.assert_holds(path, w)
    r = gguf.GGUFReader(path)
    keys = {f.name: f.contents() for f in r.fields.values() if f.name.startswith("deepseek2.")}
    assert keys["deepseek2.attention.head_count_kv"] == 1
    assert keys["deepseek2.attention.key_length"] == cfg.kv_lora_rank + cfg.qk_rope_head_dim
    assert keys["deepseek2.attention.value_length_mla"] == cfg.v_head_dim
    assert keys["deepseek2.leading_dense_block_count"] == cfg.first_k_dense_replace
    assert keys["deepseek2.expert_gating_func"] == (2 if cfg.scoring_func == "sigmoid" else 1)
    RC.ours_near(path, reference_logits(cfg, w, TOKENS), TOKENS)


@pytest.mark.reference
def test_llama_cpp_loads_it(tmp_path):
    cfg, w, path = checkpoint(tmp_path, "v3-yarn")
    RC.llama_cpp_near(path, reference_logits(cfg, w, TOKENS), TOKENS)
