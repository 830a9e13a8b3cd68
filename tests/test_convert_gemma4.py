"""convert-hf on tiny random Gemma 4 checkpoints (the weights of tests/tiny_gemma4.py under
transformers' names, as Gemma4ForConditionalGeneration saves them): the keys and tensors are
those llama.cpp's Gemma4Model (conversion/gemma.py) writes, written out here from that code
(``expected_keys``); splitllm's engine and llama.cpp give the float64 reference's logits (written
from transformers' Gemma 4 text model) on the converted file; the tokenizer is read as gguf-py's
LlamaHfVocab reads it and tokenizes as llama.cpp does."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import hf_fixtures as F
import numpy as np
import pytest
import test_convert as TC
from gguf import GGUFReader, TokenType
from splitllm import Model
from splitllm_convert import convert
from splitllm_convert.errors import ConvertError
from test_tokenizer_gemma4 import gemma4_vocab
from tiny_gemma4 import Gemma4Config, make_weights, reference_logits, rope_freqs

TOKENS = [3, 77, 200, 15, 260, 1, 99, 42, 42, 131, 7, 300, 255, 18, 64, 5, 250, 33, 120, 11]
# tokens added after the BPE model's: the chat parser's (USER_DEFINED), a special one named in
# tokenizer_config.json (CONTROL) and a plain one (USER_DEFINED)
ADDED = ["<|channel>", "<start_of_image>", "<custom>"]

# GGUF name (after "blk.N.") -> transformers' (after "layers.N.")
LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight", "attn_q.weight": "self_attn.q_proj.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight", "attn_k.weight": "self_attn.k_proj.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight", "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "post_attention_norm.weight": "post_attention_layernorm.weight",
    "ffn_norm.weight": "pre_feedforward_layernorm.weight", "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight", "ffn_down.weight": "mlp.down_proj.weight",
    "post_ffw_norm.weight": "post_feedforward_layernorm.weight", "layer_output_scale.weight": "layer_scalar",
    "ffn_gate_inp.weight": "router.proj.weight", "ffn_gate_inp.scale": "router.scale",
    "ffn_down_exps.scale": "router.per_expert_scale", "ffn_gate_up_exps.weight": "experts.gate_up_proj",
    "ffn_down_exps.weight": "experts.down_proj",
    "pre_ffw_norm_2.weight": "pre_feedforward_layernorm_2.weight",
    "post_ffw_norm_1.weight": "post_feedforward_layernorm_1.weight",
    "post_ffw_norm_2.weight": "post_feedforward_layernorm_2.weight",
    "inp_gate.weight": "per_layer_input_gate.weight", "proj.weight": "per_layer_projection.weight",
    "post_norm.weight": "post_per_layer_input_norm.weight",
}  # fmt: skip
TOP_NAMES = {
    "token_embd.weight": "embed_tokens.weight", "output_norm.weight": "norm.weight",
    "per_layer_token_embd.weight": "embed_tokens_per_layer.weight",
    "per_layer_model_proj.weight": "per_layer_model_projection.weight",
    "per_layer_proj_norm.weight": "per_layer_projection_norm.weight",
}  # fmt: skip


@pytest.fixture(scope="module")
def vocab() -> dict[str, Any]:
    return gemma4_vocab()


def n_vocab(vocab: dict[str, Any]) -> int:
    return len(vocab["tokenizer.ggml.tokens"]) + len(ADDED)


def write_tokenizer(d: Path, vocab: dict[str, Any]) -> None:
    """tokenizer.json (byte-fallback BPE, Gemma's decoder) and tokenizer_config.json."""
    base = vocab["tokenizer.ggml.tokens"]
    specials = base[:6]  # <pad> <eos> <bos> <unk> <start_of_turn> <end_of_turn>
    added = [{"id": i, "content": t, "special": True, "normalized": False} for i, t in enumerate(specials)]
    added += [{"id": len(base) + i, "content": t, "special": t != "<custom>", "normalized": False}
              for i, t in enumerate(ADDED)]  # fmt: skip
    tok = {
        "version": "1.0", "added_tokens": added, "normalizer": None, "pre_tokenizer": None,
        "post_processor": None,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "byte_fallback": True,
                  "fuse_unk": False, "vocab": {t: i for i, t in enumerate(base)},
                  "merges": [m.split(" ") for m in vocab["tokenizer.ggml.merges"]]},
    }  # fmt: skip
    (d / "tokenizer.json").write_text(json.dumps(tok))
    tc = {"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>",
          "boi_token": "<start_of_image>", "add_bos_token": False, "add_eos_token": False,
          "chat_template": "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}",
          }  # fmt: skip
    (d / "tokenizer_config.json").write_text(json.dumps(tc))


def hf_config(cfg: Gemma4Config, vocab_size: int, global_kv: bool = True) -> dict[str, Any]:
    text = {
        "model_type": "gemma4_text", "vocab_size": vocab_size, "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.n_ff, "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_head_kv, "head_dim": cfg.head_dim, "global_head_dim": cfg.head_dim_full,
        "num_global_key_value_heads": cfg.n_head_kv_full if global_kv else None,
        "attention_k_eq_v": cfg.k_eq_v, "sliding_window": cfg.sliding_window,
        "layer_types": ["sliding_attention" if s else "full_attention" for s in cfg.swa],
        "rope_parameters": {
            "full_attention": {"rope_type": "proportional", "partial_rotary_factor": cfg.partial_rotary_full,
                               "rope_theta": cfg.rope_base},
            "sliding_attention": {"rope_type": "default", "rope_theta": cfg.rope_base_swa}},
        "rms_norm_eps": cfg.rms_eps, "final_logit_softcapping": cfg.final_softcap or None,
        "max_position_embeddings": 256, "hidden_activation": "gelu_pytorch_tanh",
        "num_kv_shared_layers": cfg.n_kv_shared, "hidden_size_per_layer_input": cfg.n_embd_per_layer,
        "vocab_size_per_layer_input": vocab_size, "use_double_wide_mlp": cfg.double_wide_shared,
        "enable_moe_block": bool(cfg.n_expert), "num_experts": cfg.n_expert or None,
        "top_k_experts": cfg.n_expert_used or None,
        "moe_intermediate_size": cfg.n_ff_exp if cfg.n_expert else None,
        "tie_word_embeddings": cfg.tied_output,
    }  # fmt: skip
    return {"architectures": ["Gemma4ForConditionalGeneration"], "model_type": "gemma4", "text_config": text,
            "vision_config": {"hidden_size": 8}, "tie_word_embeddings": cfg.tied_output}  # fmt: skip


def hf_checkpoint(
    d: Path,
    cfg: Gemma4Config,
    vocab: dict[str, Any],
    *,
    dtype: str = "f32",
    causal_lm: bool = False,
    global_kv: bool = True,
    shared_kv: bool = False,
    **over: Any,
) -> dict[str, np.ndarray]:
    """A Gemma4ForConditionalGeneration directory (or Gemma4ForCausalLM's, ``causal_lm``) with a
    vision tower tensor the converter leaves out (``shared_kv``: k / v projections in the KV-shared
    layers too, which transformers does not use); returns the stored weights the reference reads
    under their GGUF names (float64 of the stored values)."""
    d.mkdir(parents=True, exist_ok=True)
    write_tokenizer(d, vocab)
    hf_cfg = hf_config(cfg, n_vocab(vocab), global_kv)
    if causal_lm:
        hf_cfg = {**hf_cfg["text_config"], "architectures": ["Gemma4ForCausalLM"]}
    for k, v in over.items():
        (hf_cfg if causal_lm else hf_cfg["text_config"])[k] = v
    (d / "config.json").write_text(json.dumps(hf_cfg))
    held = make_weights(cfg).weights
    prefix = "model." if causal_lm else "model.language_model."
    hf, back = {}, {}
    for name, x in held.items():
        if name.startswith("blk."):
            _, bid, rest = name.split(".", 2)
            hf_name = f"{prefix}layers.{bid}.{LAYER_NAMES[rest]}"
        else:
            hf_name = "lm_head.weight" if name == "output.weight" else prefix + TOP_NAMES[name]
        hf[hf_name], back[hf_name] = x.astype(np.float32), name
    if not causal_lm:
        hf["model.vision_tower.encoder.weight"] = np.ones((4, 8), np.float32)
    rng = np.random.default_rng(1)
    for i in range(cfg.n_layer - cfg.n_kv_shared, cfg.n_layer) if shared_kv else ():  # (not used)
        rows, hd = cfg.n_kv_of(i) * cfg.head_dim_of(i), cfg.head_dim_of(i)
        for proj in "kv":
            hf[f"{prefix}layers.{i}.self_attn.{proj}_proj.weight"] = rng.normal(size=(rows, cfg.n_embd))
        hf[f"{prefix}layers.{i}.self_attn.k_norm.weight"] = rng.normal(size=hd)
    stored = F.save_weights(d, hf, dtype=dtype)
    return {back[n]: x.reshape(held[back[n]].shape).astype(np.float64)
            for n, x in stored.items() if n in back}  # fmt: skip


def expected_keys(cfg: Gemma4Config, vocab_size: int, global_kv: bool = True) -> dict[str, Any]:
    """gemma4.* as llama.cpp's converter writes them for hf_config (TextModel.set_gguf_parameters,
    then Gemma3Model's, then Gemma4Model's, later keys overwriting earlier ones)."""
    swa = list(cfg.swa)
    ff = [cfg.n_ff * 2 if cfg.double_wide_shared and i >= cfg.n_layer - cfg.n_kv_shared else cfg.n_ff
          for i in range(cfg.n_layer)]  # fmt: skip
    keys = {
        "block_count": cfg.n_layer, "context_length": 256, "embedding_length": cfg.n_embd,
        "feed_forward_length": ff if cfg.double_wide_shared else cfg.n_ff, "attention.head_count": cfg.n_head,
        "attention.head_count_kv": [cfg.n_head_kv if s else cfg.n_head_kv_full for s in swa] if global_kv
        else cfg.n_head_kv,
        "rope.freq_base": cfg.rope_base, "rope.freq_base_swa": cfg.rope_base_swa,
        "attention.layer_norm_rms_epsilon": cfg.rms_eps, "attention.key_length": cfg.head_dim_full,
        "attention.value_length": cfg.head_dim_full, "attention.sliding_window": cfg.sliding_window,
        "attention.shared_kv_layers": cfg.n_kv_shared,
        "embedding_length_per_layer_input": cfg.n_embd_per_layer,
        "attention.sliding_window_pattern": swa, "attention.key_length_swa": cfg.head_dim,
        "attention.value_length_swa": cfg.head_dim, "rope.dimension_count": cfg.head_dim_full,
        "rope.dimension_count_swa": cfg.head_dim,
    }  # fmt: skip
    if cfg.final_softcap:
        keys["final_logit_softcapping"] = cfg.final_softcap
    if cfg.n_expert:
        keys |= {"expert_count": cfg.n_expert, "expert_used_count": cfg.n_expert_used,
                 "expert_feed_forward_length": cfg.n_ff_exp}  # fmt: skip
    return keys


def gemma4_keys(r: GGUFReader) -> dict[str, Any]:
    return {k.removeprefix("gemma4."): f.contents() for k, f in r.fields.items() if k.startswith("gemma4.")}


def rel_err(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)


def _cfg(base: Gemma4Config, vocab: dict[str, Any]) -> Gemma4Config:
    return replace(base, n_vocab=n_vocab(vocab))


DENSE = Gemma4Config(seed=60)  # 31B-like: sliding 16-wide heads (2 KV), full 32-wide (1 KV, K as V)
# E2B-like: per-layer inputs, KV-shared last layers with double-wide MLPs; one KV head count
# (num_global_key_value_heads null: head_count_kv a single number), v_proj everywhere, untied
E2B = Gemma4Config(swa=(True, False, True, False, True, True, False), n_embd_per_layer=32, n_kv_shared=3,
                   double_wide_shared=True, n_head_kv_full=2, k_eq_v=False, final_softcap=30.0,
                   tied_output=False, seed=64)  # fmt: skip
MOE = Gemma4Config(n_expert=4, n_expert_used=2, seed=63)  # 26B-A4B-like: fused gate/up experts beside the MLP
CASES = {"dense": (DENSE, True, False), "e2b": (E2B, False, True), "moe": (MOE, True, False)}


@pytest.mark.parametrize("case", list(CASES))
def test_converted_file_is_llama_cpps_and_runs_as_the_reference(tmp_path: Path, vocab, case: str) -> None:
    base, global_kv, causal_lm = CASES[case]
    cfg = _cfg(base, vocab)
    held = hf_checkpoint(tmp_path / "hf", cfg, vocab, global_kv=global_kv, causal_lm=causal_lm)
    out = tmp_path / "m.gguf"
    convert(tmp_path / "hf", out, type="f32", quiet=True)
    r = GGUFReader(out)
    TC.assert_same_keys(gemma4_keys(r), expected_keys(cfg, cfg.n_vocab, global_kv))
    got = {t.name: TC.as_f32(t) for t in r.tensors}
    want = {**held, "rope_freqs.weight": rope_freqs(cfg)}
    assert sorted(got) == sorted(want)
    for name, x in want.items():
        np.testing.assert_array_equal(got[name], x.astype(np.float32), err_msg=name)
    ref = reference_logits(cfg, held, TOKENS)
    with Model(str(out), n_ctx=64, n_threads=2) as m:
        ours = m.logits(TOKENS)
    assert rel_err(ours, ref).max() < 2e-4
    theirs = TC.lcpp_logits(pytest.importorskip("llama_cpp"), out, TOKENS)
    assert rel_err(theirs, ref).max() < 1e-3  # llama.cpp's f16 KV cache and gelu table


def test_kv_shared_layers_projections_are_written_and_unused(tmp_path: Path, vocab) -> None:
    """k / v projections of a KV-shared layer in the checkpoint: written, as llama.cpp's converter
    writes every tensor it maps, and read by neither engine (both give the reference's logits)."""
    cfg = _cfg(E2B, vocab)
    held = hf_checkpoint(tmp_path / "hf", cfg, vocab, global_kv=False, shared_kv=True)
    out = tmp_path / "m.gguf"
    convert(tmp_path / "hf", out, type="f32", quiet=True)
    names = set(TC.tensors(out))
    assert {f"blk.{cfg.n_layer - 1}.attn_{t}.weight" for t in ("k", "v", "k_norm")} <= names
    ref = reference_logits(cfg, held, TOKENS)
    with Model(str(out), n_ctx=64, n_threads=2) as m:
        assert rel_err(m.logits(TOKENS), ref).max() < 2e-4
    assert rel_err(TC.lcpp_logits(pytest.importorskip("llama_cpp"), out, TOKENS), ref).max() < 1e-3


def test_bf16_checkpoint_and_f16_types(tmp_path: Path, vocab) -> None:
    """A bf16 checkpoint to f16: the matrices F16, the norms, scales, router and rope factors F32
    (convert_hf_to_gguf.py's rules); the logits within f16 rounding of the reference."""
    cfg = _cfg(MOE, vocab)
    held = hf_checkpoint(tmp_path / "hf", cfg, vocab, dtype="bf16")
    out = tmp_path / "m.gguf"
    convert(tmp_path / "hf", out, quiet=True)
    r = GGUFReader(out)
    types = {t.name: t.tensor_type.name for t in r.tensors}
    f32 = {n for n, t in types.items() if t == "F32"}
    one_d = {t.name for t in r.tensors if len(t.shape) == 1}  # norms, scales, rope factors
    assert f32 == one_d | {f"blk.{i}.ffn_gate_inp.weight" for i in range(cfg.n_layer)}
    assert {n.split(".", 2)[-1] for n in one_d} >= {"layer_output_scale.weight", "ffn_down_exps.scale"}
    assert types["blk.0.ffn_gate_up_exps.weight"] == "F16"
    with Model(str(out), n_ctx=64, n_threads=2) as m:
        assert rel_err(m.logits(TOKENS), reference_logits(cfg, held, TOKENS)).max() < 5e-3


def test_tokenizer_is_llama_cpps(tmp_path: Path, vocab) -> None:
    """tokenizer.* as LlamaHfVocab and Gemma4Model.set_vocab write them; our tokenizer and
    llama.cpp's on the converted file agree."""
    from test_tokenizer import LlamaRef, corpus, mismatches

    cfg = _cfg(DENSE, vocab)
    hf_checkpoint(tmp_path / "hf", cfg, vocab)
    out = tmp_path / "m.gguf"
    convert(tmp_path / "hf", out, type="f32", quiet=True)
    r = GGUFReader(out)
    f = {k: r.fields[k].contents() for k in r.fields if k.startswith("tokenizer.")}
    base = vocab["tokenizer.ggml.tokens"]
    assert f["tokenizer.ggml.model"] == "gemma4" and "tokenizer.ggml.pre" not in f
    assert f["tokenizer.ggml.tokens"] == base + ADDED
    control, byte, normal, user = (int(t) for t in (TokenType.CONTROL, TokenType.BYTE, TokenType.NORMAL,
                                                     TokenType.USER_DEFINED))  # fmt: skip
    want = [control] * 4 + [normal] * 2 + [byte] * 256 + [normal] * (len(base) - 262) + [user, control, user]
    assert f["tokenizer.ggml.token_type"] == want  # (<start_of_turn> is no named special: NORMAL)
    assert f["tokenizer.ggml.scores"] == pytest.approx([-1000.0] * len(want))
    assert f["tokenizer.ggml.merges"] == vocab["tokenizer.ggml.merges"]
    assert (f["tokenizer.ggml.bos_token_id"], f["tokenizer.ggml.eos_token_id"]) == (2, 1)
    assert (f["tokenizer.ggml.unknown_token_id"], f["tokenizer.ggml.padding_token_id"]) == (3, 0)
    assert f["tokenizer.ggml.add_bos_token"] is True and f["tokenizer.ggml.add_space_prefix"] is False
    assert f["tokenizer.ggml.add_eos_token"] is False and "bos_token" in f["tokenizer.chat_template"]
    from splitllm.tokenizer import Tokenizer

    tok = Tokenizer.from_metadata({k: r.fields[k].contents() for k in r.fields})
    with LlamaRef(out) as ref:
        assert not mismatches(tok, ref, corpus(n=40))


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"layer_types": ["full_attention"]}, "'layer_types' must list 6"),
        ({"global_head_dim": None}, "'global_head_dim' must be a positive integer"),
        (
            {"rope_parameters": {"full_attention": {"rope_type": "default"}, "sliding_attention": {}}},
            "'proportional'",
        ),
        ({"hidden_activation": "silu"}, "gelu_pytorch_tanh"),
        ({"vocab_size": 1000}, "has shape"),
        ({"num_kv_shared_layers": 6}, "leaves no layer"),
    ],
)
def test_bad_checkpoints_are_refused(tmp_path: Path, vocab, over: dict[str, Any], match: str) -> None:
    hf_checkpoint(tmp_path / "hf", _cfg(DENSE, vocab), vocab, **over)
    with pytest.raises(ConvertError, match=match):
        convert(tmp_path / "hf", tmp_path / "m.gguf", type="f32", quiet=True)
    assert not (tmp_path / "m.gguf").exists()


@pytest.mark.parametrize(
    ("case", "qtype"), [("e2b", "q4_k_m"), ("moe", "q8_0"), ("e2b", "tq1_0"), ("moe", "tq2_0")]
)
def test_quantized_types_and_bytes_match_llama_quantize(tmp_path: Path, vocab, case: str, qtype: str) -> None:
    """convert-hf --type and splitllm quantize (of our f32 file) against llama.cpp's quantizer on
    that f32 file: the same type, shape and bytes for every tensor, the ternary type (on a model
    that is not ternary) included, with its Q4_0 fallback where a row is not 256 wide."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from splitllm_convert.mix import FILE_TYPES
    from splitllm_convert.requantize import quantize

    base, global_kv, causal_lm = CASES[case]
    cfg = _cfg(replace(base, n_embd=256, n_ff=512, n_ff_exp=256), vocab)
    hf_checkpoint(tmp_path / "hf", cfg, vocab, global_kv=global_kv, causal_lm=causal_lm)
    f32, ours, ref, requantized = (tmp_path / f"{n}.gguf" for n in ("f32", "ours", "ref", "requantized"))
    convert(tmp_path / "hf", f32, type="f32", quiet=True)
    convert(tmp_path / "hf", ours, type=qtype, quiet=True, n_threads=2)
    TC.lcpp_quantize(llama_cpp, f32, ref, int(FILE_TYPES[qtype].ftype))
    quantize(f32, requantized, qtype.upper(), nthreads=2)
    want = TC.tensors(ref)
    for got in (TC.tensors(ours), TC.tensors(requantized)):
        assert sorted(got) == sorted(want)
        for name, t in got.items():
            assert (t.tensor_type, list(t.shape)) == (want[name].tensor_type, list(want[name].shape)), name
            assert np.array_equal(np.asarray(t.data), np.asarray(want[name].data)), name
    kinds = {t.tensor_type.name for t in want.values()}
    assert FILE_TYPES[qtype].default.name in kinds
