"""convert-hf on tiny random Qwen3-Next checkpoints (tests/tiny_qwen35.py's weights under
transformers' Qwen3NextForCausalLM names: in_proj_qkvz and in_proj_ba per key head): splitllm's
engine and llama.cpp give the float64 reference's logits, computed on the checkpoint's own weights,
on the converted file; the tensors and metadata are llama.cpp's Qwen3NextModel's."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import test_convert as TC
from gguf import GGUFReader
from splitllm_convert import convert
from test_convert_qwen35 import IDS, hf_checkpoint, refused, runs_as_reference
from tiny_qwen35 import Qwen35Config, qwen35_reference_logits

# two key heads of two value heads (grouped and tiled orders differ); three per key head, tied
CFG = Qwen35Config(qwen3next=True, n_expert=4, seed=73)
WIDE = replace(CFG, v_heads=6, n_layer=4, full_attention_interval=4, tied_output=True, seed=74)


@pytest.mark.parametrize(("cfg", "dtype"), [(CFG, "f32"), (WIDE, "bf16")], ids=["f32", "3v-per-k-tied-bf16"])
def test_converted_file_runs_as_the_reference(tmp_path: Path, cfg: Qwen35Config, dtype: str):
    held = hf_checkpoint(tmp_path / "hf", cfg, dtype=dtype)
    out = tmp_path / "m.gguf"
    convert(tmp_path / "hf", out, type="f32", quiet=True)
    r = GGUFReader(out)
    p = "qwen3next."
    keys = {k.removeprefix(p): f.contents() for k, f in r.fields.items() if k.startswith(p)}
    assert (keys["ssm.group_count"], keys["ssm.time_step_rank"]) == (cfg.k_heads, cfg.v_heads)
    assert (keys["ssm.conv_kernel"], keys["ssm.state_size"]) == (cfg.conv_kernel, cfg.dn_head_dim)
    assert keys["ssm.inner_size"] == cfg.v_heads * cfg.dn_head_dim
    assert (keys["rope.dimension_count"], keys["full_attention_interval"]) == (
        cfg.n_rot,
        cfg.full_attention_interval,
    )
    assert (keys["expert_count"], keys["expert_shared_feed_forward_length"]) == (4, cfg.n_ff_shexp)
    assert "rope.dimension_sections" not in keys
    shapes = {t.name: TC.as_f32(t).shape for t in r.tensors if t.name.startswith("blk.0.")}
    d, e = cfg.dn_head_dim, cfg.n_embd
    assert shapes["blk.0.attn_qkv.weight"] == (cfg.conv_dim, e)
    assert shapes["blk.0.attn_gate.weight"] == (cfg.v_heads * d, e)
    assert shapes["blk.0.ssm_ba.weight"] == (2 * cfg.v_heads, e)
    assert not any("mtp" in n or "ssm_beta" in n for n in (t.name for t in r.tensors))
    runs_as_reference(out, qwen35_reference_logits(cfg, held, IDS))


def test_bad_checkpoints_are_refused(tmp_path: Path):
    refused(tmp_path, CFG, [({"mlp_only_layers": [1]}, "mlp_only_layers"),
                            ({"norm_topk_prob": False}, "qwen3next renormalises"),
                            ({"linear_num_value_heads": 3}, "multiple of linear_num_key_heads")])  # fmt: skip
