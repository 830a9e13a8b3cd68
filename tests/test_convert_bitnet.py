"""convert-hf on tiny random BitNet b1.58 checkpoints (bf16 / f32 master weights, as
microsoft/bitnet-b1.58-2B-4T-bf16 stores them, under 2B-4T's and 1bitLLM's names): the file holds
each projection ternarized as BitNet b1.58 uses it (clamp(round(W / s), -1, 1) * s, s = mean |W|,
computed here in float64 from that definition), the keys llama.cpp's BitnetModel writes, and in
TQ1_0 / TQ2_0 the bytes gguf-py's quantizer gives (what convert_hf_to_gguf.py --outtype tq1_0
writes); splitllm's engine and llama.cpp give the float64 reference's logits (tests/tiny_model.py,
llama.cpp's bitnet graph) on it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import gguf
import hf_fixtures as F
import numpy as np
import pytest
import test_convert as TC
from gguf import GGUFReader
from splitllm import Model
from splitllm_convert import convert
from splitllm_convert.errors import ConvertError
from test_bitnet import BITNET, TOKENS, rel_err
from tiny_model import TinyConfig, make_weights, reference_logits

TERNARY = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
LAYER_NAMES = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}  # fmt: skip
SUB_NORMS = {"2b4t": ("self_attn.attn_sub_norm", "mlp.ffn_sub_norm"),
             "1bitllm": ("self_attn.inner_attn_ln", "mlp.ffn_layernorm")}  # fmt: skip


def hf_name(name: str, names: str = "2b4t") -> str:
    """transformers' name of a GGUF tensor (``names``: whose sub-norm names)."""
    if not name.startswith("blk."):
        return {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}[
            name
        ]
    _, bid, rest = name.split(".", 2)
    to_hf = {**LAYER_NAMES, "attn_sub_norm": SUB_NORMS[names][0], "ffn_sub_norm": SUB_NORMS[names][1]}
    return f"model.layers.{bid}.{to_hf[rest.removesuffix('.weight')]}.weight"


def hf_checkpoint(d: Path, cfg: TinyConfig, *, dtype: str = "f32", names: str = "2b4t",
                  lm_head: bool = False, **over: Any) -> dict[str, np.ndarray]:  # fmt: skip
    """A BitNetForCausalLM directory with a SentencePiece tokenizer; returns the stored weights
    under their GGUF names (float64 of the stored values)."""
    d.mkdir(parents=True, exist_ok=True)
    assert F.write_spm_tokenizer(d) == cfg.n_vocab
    hf_cfg = {
        "architectures": ["BitNetForCausalLM"], "model_type": "bitnet", "vocab_size": cfg.n_vocab,
        "hidden_size": cfg.n_embd, "intermediate_size": cfg.n_ff, "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.n_head_kv, "rms_norm_eps": cfg.rms_eps,
        "rope_theta": cfg.rope_base, "max_position_embeddings": cfg.n_ctx_train, "hidden_act": "silu",
        "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16",
    }  # fmt: skip
    hf_cfg.update(over)
    (d / "config.json").write_text(json.dumps(hf_cfg))
    held = {k: x for k, x in make_weights(cfg).weights.items() if not k.endswith(".scale")}  # (none in HF)
    hf, back = {}, {}
    for name, x in held.items():
        hf[hf_name(name, names)], back[hf_name(name, names)] = x.astype(np.float32), name
    if lm_head:
        hf["lm_head.weight"] = held["token_embd.weight"].astype(np.float32)
    stored = F.save_weights(d, hf, dtype=dtype)
    return {back[n]: x.astype(np.float64) for n, x in stored.items() if n in back}


def ternarized(w: np.ndarray) -> np.ndarray:
    """BitNet b1.58's weight quantization (absmean), in float64."""
    s = max(np.abs(w).mean(), 1e-5)
    return np.clip(np.round(w / s), -1, 1) * s


def is_ternary(name: str) -> bool:
    return name.startswith("blk.") and name.split(".")[2] in TERNARY


def expected_keys(cfg: TinyConfig) -> dict[str, Any]:
    """bitnet.* as TextModel.set_gguf_parameters and BitnetModel's write them."""
    return {
        "block_count": cfg.n_layer, "context_length": cfg.n_ctx_train, "embedding_length": cfg.n_embd,
        "feed_forward_length": cfg.n_ff, "attention.head_count": cfg.n_head,
        "attention.head_count_kv": cfg.n_head_kv, "rope.freq_base": cfg.rope_base,
        "attention.layer_norm_rms_epsilon": cfg.rms_eps, "rope.scaling.type": "linear",
        "rope.scaling.factor": 1.0,
    }  # fmt: skip


CFG = replace(BITNET, n_vocab=400, n_ctx_train=256)


@pytest.mark.parametrize(("dtype", "names"), [("f32", "2b4t"), ("bf16", "1bitllm")])
def test_f32_file_is_ternary_and_runs_as_the_reference(tmp_path: Path, dtype: str, names: str) -> None:
    stored = hf_checkpoint(tmp_path / "hf", CFG, dtype=dtype, names=names, lm_head=dtype == "bf16")
    out = tmp_path / "m.gguf"
    convert(tmp_path / "hf", out, type="f32", quiet=True)
    r = GGUFReader(out)
    keys = {k.removeprefix("bitnet."): f.contents() for k, f in r.fields.items() if k.startswith("bitnet.")}
    assert keys == pytest.approx(expected_keys(CFG))
    got = {t.name: TC.as_f32(t).astype(np.float64) for t in r.tensors}
    assert sorted(got) == sorted(stored)  # (no output.weight: the embedding is the output)
    for name, x in stored.items():
        if is_ternary(name):
            np.testing.assert_allclose(got[name], ternarized(x), rtol=1e-6, atol=0, err_msg=name)
            assert len(np.unique(np.abs(got[name]))) == 2, name  # 0 and one scale
        else:
            np.testing.assert_array_equal(got[name], x, err_msg=name)
    ref = reference_logits(CFG, got, TOKENS)
    assert rel_err(reference_logits(CFG, stored, TOKENS), ref).max() > 0.1  # (the ternarization matters)
    with Model(str(out), n_ctx=64, n_threads=2) as m:
        assert rel_err(m.logits(TOKENS), ref).max() < 3e-4
    theirs = TC.lcpp_logits(pytest.importorskip("llama_cpp"), out, TOKENS)
    assert rel_err(theirs, ref).max() < 1e-3


@pytest.mark.parametrize("qtype", ["tq1_0", "tq2_0", "f16"])
def test_ternary_types_are_convert_hf_to_ggufs(tmp_path: Path, qtype: str) -> None:
    """--type tq1_0 / tq2_0 as convert_hf_to_gguf.py --outtype writes them: the projections' bytes
    gguf-py's quantizer makes of the ternary weights, the token embedding F16, 1-D tensors F32;
    f16: every matrix F16. Logits within the ternary kernels' 8-bit activations of the reference."""
    hf_checkpoint(tmp_path / "hf", CFG, dtype="bf16")
    f32, out = tmp_path / "f32.gguf", tmp_path / f"{qtype}.gguf"
    convert(tmp_path / "hf", f32, type="f32", quiet=True)
    convert(tmp_path / "hf", out, type=qtype, quiet=True, n_threads=2)
    want = {t.name: TC.as_f32(t) for t in GGUFReader(f32).tensors}
    r = GGUFReader(out)
    qt = {"tq1_0": gguf.GGMLQuantizationType.TQ1_0, "tq2_0": gguf.GGMLQuantizationType.TQ2_0,
          "f16": gguf.GGMLQuantizationType.F16}[qtype]  # fmt: skip
    for t in r.tensors:
        if len(t.shape) == 1:
            assert t.tensor_type.name == "F32", t.name
        elif t.name == "token_embd.weight":
            assert t.tensor_type.name == "F16"
        else:
            assert t.tensor_type == qt, t.name
            data = np.asarray(t.data)
            assert np.array_equal(data, gguf.quants.quantize(want[t.name], qt).reshape(data.shape)), t.name
    assert r.fields["general.file_type"].contents() == {"tq1_0": 36, "tq2_0": 37, "f16": 1}[qtype]
    held = {t.name: TC.as_f32(t).astype(np.float64) for t in r.tensors}
    ref = reference_logits(CFG, held, TOKENS)
    with Model(str(out), n_ctx=64, n_threads=2) as m:
        ours = m.logits(TOKENS)
    theirs = TC.lcpp_logits(pytest.importorskip("llama_cpp"), out, TOKENS)
    tol = 1e-3 if qtype == "f16" else 3e-2  # (int8 activations in the ternary kernels: test_bitnet's budget)
    assert rel_err(ours, ref).max() < tol
    assert rel_err(theirs, ref).max() < max(tol, 5e-2)


def packed_checkpoint(d: Path, cfg: TinyConfig) -> dict[str, np.ndarray]:
    """microsoft/bitnet-b1.58-2B-4T's layout (quant_method "bitnet"): each projection's ternary codes
    + 1 in 2-bit fields of uint8 rows (field i of packed row r: row i * rows / 4 + r) and a bf16
    weight_scale = 1 / mean |W|. Returns the weights as transformers' BitLinear uses them (codes /
    weight_scale) under their GGUF names."""
    stored = hf_checkpoint(d, cfg, dtype="bf16")
    (d / "model.safetensors").unlink()
    hf_cfg = json.loads((d / "config.json").read_text())
    hf_cfg["quantization_config"] = {"quant_method": "bitnet", "linear_class": "autobitlinear",
                                     "quantization_mode": "offline"}  # fmt: skip
    (d / "config.json").write_text(json.dumps(hf_cfg))
    hf, want = {}, {}
    for name, x in stored.items():
        n = hf_name(name)
        if not is_ternary(name):
            hf[n], want[name] = x, x
            continue
        codes = np.clip(np.round(x / np.abs(x).mean()), -1, 1).astype(np.int64)
        scale = F.as_dtype(np.array([1 / np.abs(x).mean()], np.float32), "bf16")[2].astype(np.float64)
        fields = (codes + 1).reshape(4, -1, codes.shape[1])
        hf[n] = sum(fields[i] << (2 * i) for i in range(4)).astype(np.uint8)
        hf[n + "_scale"] = scale.astype(np.float32)
        want[name] = codes / scale[0]
    F.save_weights(d, hf, dtype="bf16")
    return want


def test_packed_checkpoint_unpacked_as_transformers_uses_it(tmp_path: Path) -> None:
    """codes / weight_scale, not ternarized again: llama.cpp's converter would multiply each matrix
    by its fraction of non-zero codes (checked below to change the logits), transformers does not.
    In TQ1_0 the projections' bytes are gguf-py's quantizer's of those weights."""
    want = packed_checkpoint(tmp_path / "hf", CFG)
    out, tq = tmp_path / "m.gguf", tmp_path / "tq1_0.gguf"
    convert(tmp_path / "hf", out, type="f32", quiet=True)
    got = {t.name: TC.as_f32(t).astype(np.float64) for t in GGUFReader(out).tensors}
    assert sorted(got) == sorted(want)
    for name, x in want.items():
        np.testing.assert_allclose(got[name], x, rtol=1e-6, atol=0, err_msg=name)
    ref = reference_logits(CFG, got, TOKENS)
    lcpp_route = {n: ternarized(x) if is_ternary(n) else x for n, x in want.items()}
    assert rel_err(reference_logits(CFG, lcpp_route, TOKENS), ref).max() > 1e-2
    with Model(str(out), n_ctx=64, n_threads=2) as m:
        assert rel_err(m.logits(TOKENS), ref).max() < 3e-4
    assert rel_err(TC.lcpp_logits(pytest.importorskip("llama_cpp"), out, TOKENS), ref).max() < 1e-3
    convert(tmp_path / "hf", tq, type="tq1_0", quiet=True, n_threads=2)
    for t in GGUFReader(tq).tensors:
        if is_ternary(t.name):
            data = np.asarray(t.data)
            want_bytes = gguf.quants.quantize(got[t.name].astype(np.float32), gguf.GGMLQuantizationType.TQ1_0)
            assert np.array_equal(data, want_bytes.reshape(data.shape)), t.name


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"quantization_config": {"quant_method": "fp8"}}, "quant_method 'fp8' is not supported"),
        ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope scaling 'linear'"),
        ({"tie_word_embeddings": False}, "lm_head.weight is a matrix of its own"),
    ],
)
def test_bad_checkpoints_are_refused(tmp_path: Path, over: dict[str, Any], match: str) -> None:
    hf_checkpoint(tmp_path / "hf", CFG, lm_head=True, **over)
    with pytest.raises(ConvertError, match=match):
        convert(tmp_path / "hf", tmp_path / "m.gguf", type="f32", quiet=True)
    assert not (tmp_path / "m.gguf").exists()
