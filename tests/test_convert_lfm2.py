"""convert-hf on tiny random Lfm2ForCausalLM checkpoints (the weights of tests/tiny_lfm2.py under
transformers' names): the file holds the stored weights under llama.cpp's names with LFM2Model's
metadata (head_count_kv per layer, shortconv.l_cache, the adjusted feed-forward width); splitllm's
engine and llama.cpp give the float64 reference's logits on it; quantized files have the types and
bytes of llama.cpp's own quantizer run on our f32 file; what llama.cpp would not run is refused."""

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
from splitllm_convert.errors import ConvertError
from tiny_lfm2 import Lfm2Config, lfm2_reference_logits, make_lfm2_weights

IDS = [(7 * i + 3) % 300 for i in range(24)]
# GGUF name (after "blk.N.") -> transformers' (after "model.layers.N.")
LAYER_NAMES = {
    "attn_norm": "operator_norm", "ffn_norm": "ffn_norm", "ffn_gate": "feed_forward.w1",
    "ffn_up": "feed_forward.w3", "ffn_down": "feed_forward.w2", "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.out_proj",
    "attn_q_norm": "self_attn.q_layernorm", "attn_k_norm": "self_attn.k_layernorm",
    "shortconv.in_proj": "conv.in_proj", "shortconv.conv": "conv.conv", "shortconv.out_proj": "conv.out_proj",
}  # fmt: skip
TOP_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output.weight": "lm_head.weight",
             "token_embd_norm.weight": "model.embedding_norm.weight"}  # fmt: skip


def hf_checkpoint(d: Path, cfg: Lfm2Config, *, dtype: str = "f32", **over: Any) -> tuple[dict, dict]:
    """An Lfm2ForCausalLM directory: config.json (block_ff_dim 1.5 n_ff, auto-adjusted back to
    n_ff), a byte-level BPE tokenizer, the weights (Conv1d kernels as (hidden, 1, L)). Returns the
    config and the stored weights under their GGUF names (float32 values, as the reference takes)."""
    d.mkdir(parents=True, exist_ok=True)
    n_vocab = F.write_bpe_tokenizer(d, vocab_size=cfg.n_vocab)
    assert n_vocab == cfg.n_vocab
    hf_cfg = {
        "architectures": ["Lfm2ForCausalLM"], "model_type": "lfm2", "vocab_size": n_vocab,
        "hidden_size": cfg.n_embd, "block_ff_dim": cfg.n_ff * 3 // 2,
        "intermediate_size": cfg.n_ff * 3 // 2, "block_auto_adjust_ff_dim": True,
        "block_ffn_dim_multiplier": 1.0, "block_multiple_of": 32, "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.n_head_kv,
        "layer_types": list(cfg.layer_types), "conv_L_cache": cfg.l_cache, "conv_bias": False,
        "norm_eps": cfg.rms_eps, "rope_theta": cfg.rope_base, "max_position_embeddings": cfg.n_ctx_train,
        "tie_embedding": cfg.tied_output, "torch_dtype": "float32", "bos_token_id": 1, "eos_token_id": 2,
    }  # fmt: skip
    hf_cfg.update(over)
    (d / "config.json").write_text(json.dumps(hf_cfg))
    held = make_lfm2_weights(cfg).weights
    hf = {}
    for name, x in held.items():
        if name.startswith("blk."):
            _, bid, rest = name.split(".", 2)
            hf_name = f"model.layers.{bid}.{LAYER_NAMES[rest.removesuffix('.weight')]}.weight"
        else:
            hf_name = TOP_NAMES[name]
        hf[hf_name] = (x[:, None, :] if name.endswith("shortconv.conv.weight") else x).astype(np.float32)
    stored = F.save_weights(d, hf, dtype=dtype)
    back = {v: k for k, v in TOP_NAMES.items()}
    for k, v in LAYER_NAMES.items():
        back.update({f"model.layers.{i}.{v}.weight": f"blk.{i}.{k}.weight" for i in range(cfg.n_layer)})
    return hf_cfg, {back[n]: x.reshape(held[back[n]].shape).astype(np.float64) for n, x in stored.items()}


CFG = Lfm2Config(seed=61)
WIDE = replace(Lfm2Config(seed=62), n_embd=256, n_head=4, n_ff=512, tied_output=False)


@pytest.mark.parametrize(("cfg", "dtype"), [(CFG, "f32"), (WIDE, "bf16")], ids=["tied-f32", "untied-bf16"])
def test_converted_file_runs_as_the_reference(tmp_path: Path, cfg: Lfm2Config, dtype: str) -> None:
    _, held = hf_checkpoint(tmp_path / "hf", cfg, dtype=dtype)
    out = tmp_path / "m.gguf"
    convert(tmp_path / "hf", out, type="f32", quiet=True)
    r = GGUFReader(out)
    keys = {k.removeprefix("lfm2."): f.contents() for k, f in r.fields.items() if k.startswith("lfm2.")}
    kv = [0 if cfg.is_conv(i) else cfg.n_head_kv for i in range(cfg.n_layer)]
    assert keys["attention.head_count_kv"] == kv
    assert (keys["shortconv.l_cache"], keys["feed_forward_length"]) == (cfg.l_cache, cfg.n_ff)
    assert (keys["rope.freq_base"], keys["vocab_size"]) == (cfg.rope_base, cfg.n_vocab)
    got = {t.name: TC.as_f32(t) for t in r.tensors}
    assert sorted(got) == sorted(held)
    for name, x in held.items():
        np.testing.assert_array_equal(got[name], x.astype(np.float32), err_msg=name)
    ref = lfm2_reference_logits(cfg, held, IDS)
    with Model(str(out), n_ctx=64, n_threads=2) as m:
        ours = m.logits(IDS)
    assert (np.linalg.norm(ours - ref, axis=-1) / np.linalg.norm(ref, axis=-1)).max() < 1e-4
    theirs = TC.lcpp_logits(pytest.importorskip("llama_cpp"), out, IDS)
    assert (np.linalg.norm(theirs - ref, axis=-1) / np.linalg.norm(ref, axis=-1)).max() < 1e-3


@pytest.mark.parametrize("qtype", ["q8_0", "q4_k_m", "f16"])
def test_types_and_bytes_match_llama_quantize(tmp_path: Path, qtype: str) -> None:
    """Our quantized file against llama.cpp's quantizer on our f32 file (f16: against the F32 it
    keeps for the convolution kernels and the norms, as convert_hf_to_gguf.py writes them)."""
    hf = tmp_path / "hf"
    hf_checkpoint(hf, WIDE)
    ours = tmp_path / "ours.gguf"
    convert(hf, ours, type=qtype, quiet=True, n_threads=2)
    got = TC.tensors(ours)
    assert got["blk.0.shortconv.conv.weight"].tensor_type.name == "F32"
    if qtype == "f16":
        assert {n for n, t in got.items() if t.tensor_type.name == "F32"} == {
            n for n in got if n.endswith(("norm.weight", "shortconv.conv.weight"))}
        return
    TC.same_as_llama_quantize(hf, ours, tmp_path, qtype)


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"layer_types": ["conv", "full_attention"]}, "'layer_types' must list 4"),
        ({"layer_types": ["conv", "conv", "conv", "conv"]}, "belongs to a full_attention layer"),
        ({"layer_types": ["conv", "full_attention", "full_attention", "conv"]}, "is missing"),
        ({"conv_bias": True}, "conv_bias"),
        ({"block_multiple_of": 256}, "feed_forward.w1.weight' .* has shape"),
        ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope scaling 'linear'"),
    ],
)
def test_bad_checkpoints_are_refused(tmp_path: Path, over: dict[str, Any], match: str) -> None:
    hf_checkpoint(tmp_path / "hf", CFG, **over)
    with pytest.raises(ConvertError, match=match):
        convert(tmp_path / "hf", tmp_path / "m.gguf", type="f32", quiet=True)
    assert not (tmp_path / "m.gguf").exists()
