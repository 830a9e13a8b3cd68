"""convert-hf on tiny random Gemma 1 / Gemma 2 / Gemma 3 models, checked against references we did
not write.

- llama.cpp (llama-cpp-python) on our f32 GGUF gives the logits of a numpy float64 forward pass
  written from transformers' Gemma/Gemma2/Gemma3 modeling (hf_fixtures.reference_logits), on prompts
  longer than the sliding window; each case also shows that what it checks (the window, the
  soft-caps, the local rope base, the rope scaling, the layer pattern, Gemma 1's query scale
  1/sqrt(head_dim) where head_dim is not hidden_size / n_head) moves the logits. splitllm's engine
  runs the same files.
- The per-tensor types and bytes of every ``--type`` equal those of llama.cpp's own quantizer
  run on our f32 file (the test of test_convert, on Gemma models).
- A Gemma3ForConditionalGeneration checkpoint (nested text_config, prefixed names, a vision
  tower) converts to the same GGUF as the Gemma3ForCausalLM one.
- Metadata keys are the ones llama.cpp's GemmaModel / Gemma2Model / Gemma3Model write (Gemma 1's
  special tokens: gguf-py's SpecialVocab called as GemmaModel.set_vocab calls it); bad input is
  refused.
"""

from __future__ import annotations

import json
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

# 24 tokens: several times the tiny models' windows (4 and 6)
IDS = [(7 * i + 3) % 300 for i in range(24)]
GEMMA3_TYPES = ["full_attention", "sliding_attention", "sliding_attention", "full_attention",
                "sliding_attention", "sliding_attention", "sliding_attention"]  # fmt: skip


@pytest.fixture(scope="module")
def llama_cpp() -> Any:
    return pytest.importorskip("llama_cpp")


# (tiny_model options, changes to the config that the case must be able to tell apart)
CASES: dict[str, tuple[str, dict[str, Any], list[dict[str, Any]]]] = {
    # Gemma 7B's shape: head_dim 32 where hidden_size / n_head is 16 (the scale is 1/sqrt(head_dim))
    "gemma1-7b-like": ("gemma", {}, [{"query_pre_attn_scalar": 16}]),
    # Gemma 2B's: one KV head (MQA), head_dim = hidden_size / n_head; bf16, another rope base
    "gemma1-2b-mqa-bf16-rope-base": ("gemma", {"dtype": "bf16", "num_key_value_heads": 1, "head_dim": 16,
                                               "rope_theta": 100.0}, [{"rope_theta": 10000.0}]),
    "gemma2": ("gemma2", {}, [{"sliding_window": 1000}]),
    "gemma2-bf16-softcaps": ("gemma2", {"dtype": "bf16", "attn_logit_softcapping": 2.0,
                                        "final_logit_softcapping": 8.0},
                             [{"attn_logit_softcapping": None}, {"final_logit_softcapping": None}]),
    "gemma2-rope-base": ("gemma2", {"rope_theta": 100.0, "num_key_value_heads": 1},
                         [{"rope_theta": 10000.0}]),
    "gemma3": ("gemma3", {}, [{"sliding_window": 1000}, {"rope_local_base_freq": 1e6}]),
    "gemma3-bf16-linear-softcap": ("gemma3", {"dtype": "bf16", "final_logit_softcapping": 8.0,
                                              "rope_scaling": {"rope_type": "linear", "factor": 4.0}},
                                   [{"rope_scaling": None}, {"final_logit_softcapping": None}]),
    "gemma3-layer-types-local-base": ("gemma3", {"layer_types": GEMMA3_TYPES, "rope_local_base_freq": 100.0},
                                      [{"layer_types": None}, {"rope_local_base_freq": 10000.0}]),
    "gemma3-untied-mqa": ("gemma3", {"tie_word_embeddings": False, "num_key_value_heads": 1,
                                     "head_dim": 48, "query_pre_attn_scalar": 48},
                          [{"sliding_window": 1000}]),
}  # fmt: skip


@pytest.mark.reference
@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_float64_reference(tmp_path: Path, llama_cpp: Any, case: str) -> None:
    arch, kw, others = CASES[case]
    cfg, weights = F.tiny_model(tmp_path / "hf", arch, tokenizer="spm", **kw)
    out = tmp_path / "m.gguf"
    convert(tmp_path / "hf", out, type="f32", quiet=True)
    ref = F.reference_logits(cfg, weights, IDS)
    tol = 2e-3 * np.abs(ref).max()
    for change in others:  # each feature the case exercises matters here, well beyond the tolerance
        assert np.abs(F.reference_logits({**cfg, **change}, weights, IDS) - ref).max() > 5 * tol, change
    got = TC.lcpp_logits(llama_cpp, out, IDS)
    assert np.abs(got - ref).max() < tol
    with Model(out, n_ctx=64, n_threads=2) as m:  # splitllm's engine on the same file
        assert np.abs(m.logits(IDS) - ref).max() < tol
    # the converted SentencePiece vocabulary (no space prefix) as llama.cpp reads it
    if case in ("gemma3", "gemma1-7b-like"):
        llm = llama_cpp.Llama(str(out), vocab_only=True, verbose=False)
        with Model(out, n_ctx=64) as m:
            for text in ("Hello world", " two  spaces\n\nand lines", "<start_of_turn>user\nhi", "x" * 40):
                for special in (False, True):
                    ours = m.tokenize(text.encode(), special=special)
                    assert ours == llm.tokenize(text.encode(), special=special), text
        llm.close()


# -- metadata and tensors ---------------------------------------------------------------------------


COMMON = {"context_length": 512, "embedding_length": 64, "feed_forward_length": 128,
          "attention.head_count": 4, "attention.head_count_kv": 2, "attention.key_length": 32,
          "attention.value_length": 32}  # fmt: skip


@pytest.mark.parametrize(
    ("arch", "kw", "keys"),
    [
        ("gemma2", {}, {**COMMON, "block_count": 4, "attention.sliding_window": 6,
                        "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0}),
        ("gemma3", {}, {**COMMON, "block_count": 7, "attention.sliding_window": 4,
                        "rope.freq_base": 1e6, "rope.freq_base_swa": 10000.0}),
        ("gemma3", {"rope_scaling": {"rope_type": "linear", "factor": 8.0}, "final_logit_softcapping": 30.0,
                    "rope_local_base_freq": 5000.0, "layer_types": GEMMA3_TYPES},
         {**COMMON, "block_count": 7, "attention.sliding_window": 4, "rope.freq_base": 1e6,
          "rope.freq_base_swa": 5000.0, "rope.scaling.type": "linear", "rope.scaling.factor": 8.0,
          "final_logit_softcapping": 30.0,
          "attention.sliding_window_pattern": [t == "sliding_attention" for t in GEMMA3_TYPES]}),
        ("gemma3", {"sliding_window_pattern": 1}, {**COMMON, "block_count": 7, "rope.freq_base": 1e6,
                                                   "rope.freq_base_swa": 10000.0}),
    ],
    ids=["gemma2", "gemma3", "gemma3-scaled-capped-pattern", "gemma3-all-global"],
)  # fmt: skip
def test_metadata_and_tensors(tmp_path: Path, arch: str, kw: dict[str, Any], keys: dict[str, Any]) -> None:
    """The {arch}.* keys are llama.cpp's (its Gemma2Model / Gemma3Model on transformers' config), the
    norms hold 1 + w, q/k keep HF's row order, and there is no output.weight (tied)."""
    _, weights = F.tiny_model(tmp_path / "hf", arch, tokenizer="spm", **kw)
    out = tmp_path / "m.gguf"
    convert(tmp_path / "hf", out, type="f32", quiet=True)
    got = TC.arch_keys(out, arch)
    assert got.pop("attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)
    keys = dict(keys)
    key = "attention.sliding_window_pattern"  # a list: compared apart (pytest.approx takes flat mappings)
    assert got.pop(key, None) == keys.pop(key, None)
    assert got == pytest.approx(keys)
    r = GGUFReader(out)
    assert TC.field(r, "tokenizer.ggml.add_space_prefix") is False
    assert TC.field(r, "tokenizer.ggml.model") == "llama"
    gguf_to_hf = {"attn_norm": "input_layernorm", "post_attention_norm": "post_attention_layernorm",
                  "ffn_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm",
                  "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
                  "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                  "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                  "ffn_down": "mlp.down_proj"}  # fmt: skip
    names = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}
    for t in r.tensors:
        if t.name.startswith("blk."):
            _, i, kind, _ = t.name.split(".")
            names[t.name] = f"model.layers.{i}.{gguf_to_hf[kind]}.weight"
    assert sorted(names.values()) == sorted(weights)  # every HF tensor, once; no output.weight
    got_tensors = TC.tensors(out)
    for name, hf in names.items():
        want = weights[hf] + np.float32(1.0) if "norm" in name else weights[hf]
        np.testing.assert_array_equal(TC.as_f32(got_tensors[name]), want, err_msg=name)


# -- Gemma3ForConditionalGeneration --------------------------------------------------------------


@pytest.mark.parametrize("layout", ["new", "old"])
def test_multimodal_layout_converts_like_causal_lm(tmp_path: Path, layout: str) -> None:
    """The text part of a Gemma3ForConditionalGeneration checkpoint (settings in text_config, some
    left to transformers' defaults; decoder under model.language_model. or language_model.model.;
    a vision tower and projector beside it, in two shards) gives the CausalLM's GGUF file."""
    _, weights = F.tiny_model(tmp_path / "causal" / "hf", "gemma3", tokenizer="spm", dtype="bf16",
                              rope_scaling={"rope_type": "linear", "factor": 8.0})  # fmt: skip
    F.gemma3_multimodal(tmp_path / "causal" / "hf", tmp_path / "mm" / "hf", weights, layout=layout, shards=2)
    text_config = json.loads((tmp_path / "mm" / "hf" / "config.json").read_text())["text_config"]
    assert "rms_norm_eps" not in text_config and "rope_local_base_freq" not in text_config
    ours = {}
    for kind in ("causal", "mm"):
        convert(tmp_path / kind / "hf", tmp_path / kind / "m.gguf", type="q8_0", quiet=True, n_threads=2)
        r = GGUFReader(tmp_path / kind / "m.gguf")
        fields = {k: f.contents() for k, f in r.fields.items()}
        data = {t.name: (t.tensor_type, np.asarray(t.data).tobytes()) for t in r.tensors}
        ours[kind] = (fields, data)
    assert ours["mm"][0] == ours["causal"][0]
    assert ours["mm"][1] == ours["causal"][1]  # the same tensors (the order follows the files)


# -- quantization mixes against llama.cpp's quantizer ------------------------------------------

GEMMA_MIX_MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    # rows of 96 and 192: every K-quant falls back; 8 layers so use_more_bits picks a pattern
    "gemma2-rows96": ("gemma2", {
        "hidden_size": 96, "intermediate_size": 192, "num_hidden_layers": 8, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 48, "query_pre_attn_scalar": 48,
    }),
    # rows of 256: K-quants as they are; 4 query heads per KV head (Q2_K's attn_v rule); tied output
    "gemma3-gqa4": ("gemma3", {
        "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 7, "num_attention_heads": 4,
        "num_key_value_heads": 1, "head_dim": 64, "query_pre_attn_scalar": 64,
    }),
    # an output matrix of its own (lm_head), rows of 160 (32-blocks only)
    "gemma3-untied-rows160": ("gemma3", {
        "hidden_size": 160, "intermediate_size": 320, "num_hidden_layers": 6, "num_attention_heads": 2,
        "num_key_value_heads": 1, "head_dim": 80, "query_pre_attn_scalar": 80, "tie_word_embeddings": False,
    }),
}  # fmt: skip


@pytest.fixture(scope="module", params=list(GEMMA_MIX_MODELS))
def gemma_mix_model(request: Any, tmp_path_factory: Any) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp(request.param)
    arch, kw = GEMMA_MIX_MODELS[request.param]
    F.tiny_model(d / "hf", arch, tokenizer="spm", **kw)
    convert(d / "hf", d / "f32.gguf", type="f32", quiet=True)
    return d / "hf", d / "f32.gguf"


@pytest.mark.reference
@pytest.mark.parametrize("qtype", TC.QUANT_TYPES)
def test_mix_and_bytes_match_llama_quantize(
    tmp_path: Path, llama_cpp: Any, gemma_mix_model: tuple[Path, Path], qtype: str
) -> None:
    TC.test_mix_and_bytes_match_llama_quantize(tmp_path, llama_cpp, gemma_mix_model, qtype)


# -- bad input ------------------------------------------------------------------------------------


def _nothing_written(d: Path) -> bool:
    return not list(d.glob("*.gguf")) and not list(d.glob(".*.part"))


@pytest.mark.parametrize(
    ("arch", "layout", "gone", "shown", "gguf_name"),
    [
        ("gemma2", None, "model.layers.1.pre_feedforward_layernorm.weight",
         "model.layers.1.pre_feedforward_layernorm.weight", "blk.1.ffn_norm.weight"),
        ("gemma3", None, "model.layers.3.post_feedforward_layernorm.weight",
         "model.layers.3.post_feedforward_layernorm.weight", "blk.3.post_ffw_norm.weight"),
        ("gemma3", "new", "model.layers.2.self_attn.k_norm.weight",
         "model.language_model.layers.2.self_attn.k_norm.weight", "blk.2.attn_k_norm.weight"),
        ("gemma3", "old", "model.norm.weight", "language_model.model.norm.weight", "output_norm.weight"),
        ("gemma", None, "model.layers.1.post_attention_layernorm.weight",
         "model.layers.1.post_attention_layernorm.weight", "blk.1.ffn_norm.weight"),
    ],
    ids=["gemma2", "gemma3", "gemma3-multimodal-new", "gemma3-multimodal-old", "gemma1"],
)  # fmt: skip
def test_missing_norm_is_named(
    tmp_path: Path, arch: str, layout: str | None, gone: str, shown: str, gguf_name: str
) -> None:
    """A missing norm is named as the checkpoint would spell it, with the GGUF tensor it would be."""
    d = tmp_path / "hf"
    _, weights = F.tiny_model(d, arch, tokenizer="spm")
    kept = {n: w for n, w in weights.items() if n != gone}
    if layout:
        d = tmp_path / "mm"
        F.gemma3_multimodal(tmp_path / "hf", d, kept, layout=layout)
    else:
        F.save_weights(d, kept)
    with pytest.raises(ConvertError, match=f"tensor '{shown}' \\({gguf_name}\\) is missing from {d}"):
        convert(d, tmp_path / "m.gguf", quiet=True)
    assert _nothing_written(tmp_path)


GEMMA3_BAD: list[tuple[dict[str, Any], str]] = [
    ({"sliding_window": 0}, "'sliding_window' must be a positive integer, got 0"),
    ({"sliding_window": None}, "'sliding_window' must be a positive integer, got None"),
    ({"sliding_window": "4096"}, "'sliding_window' must be a positive integer, got '4096'"),
    ({"sliding_window": 4.5}, "'sliding_window' must be a positive integer, got 4.5"),
    ({"sliding_window_pattern": 0}, "'sliding_window_pattern' must be a positive integer"),
    ({"layer_types": ["full_attention"] * 3}, "'layer_types' must list 7 entries"),
    ({"query_pre_attn_scalar": 256}, r"'query_pre_attn_scalar' is 256; llama.cpp's gemma3 .*sqrt\(32\)"),
    ({"attn_logit_softcapping": 50.0}, "'attn_logit_softcapping' is set"),
    ({"final_logit_softcapping": -1.0}, "'final_logit_softcapping' must be a positive number"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 64}},
     "rope scaling type 'yarn' is not supported for Gemma 3"),
]  # fmt: skip
GEMMA2_BAD: list[tuple[dict[str, Any], str]] = [
    ({"sliding_window": -6}, "'sliding_window' must be a positive integer, got -6"),
    ({"layer_types": ["local"] * 4}, "'layer_types' must list 4 entries"),
    ({"tie_word_embeddings": False}, "'tie_word_embeddings' is false"),
    ({"attn_logit_softcapping": None}, "'attn_logit_softcapping' must be a positive number, got None"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope scaling is not supported for Gemma 2"),
]


@pytest.mark.parametrize(
    ("arch", "over", "match"), [("gemma3", *c) for c in GEMMA3_BAD] + [("gemma2", *c) for c in GEMMA2_BAD]
)
def test_bad_config(tmp_path: Path, arch: str, over: dict[str, Any], match: str) -> None:
    TC._bad_config(tmp_path, arch, over, f"config.json: {match}")
    assert _nothing_written(tmp_path)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (None, "'text_config' must be an object, got None"),
        ({"sliding_window": 0}, "'sliding_window' must be a positive integer, got 0"),
    ],
)
def test_bad_multimodal_config(tmp_path: Path, text: dict[str, Any] | None, match: str) -> None:
    _, weights = F.tiny_model(tmp_path / "hf", "gemma3", tokenizer="spm")
    d = tmp_path / "mm"
    F.gemma3_multimodal(tmp_path / "hf", d, weights)
    cfg = json.loads((d / "config.json").read_text())
    cfg["text_config"] = None if text is None else {**cfg["text_config"], **text}
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConvertError, match=f"{d / 'config.json'}: {match}"):
        convert(d, tmp_path / "m.gguf", quiet=True)
    assert _nothing_written(tmp_path)


# -- Gemma 1 (GemmaForCausalLM) -------------------------------------------------------------------

# llama.cpp's GemmaModel.set_gguf_parameters on tiny_config("gemma"): these keys and no others
GEMMA1_KEYS = {"context_length": 512, "embedding_length": 64, "block_count": 3, "feed_forward_length": 128,
               "attention.head_count": 4, "attention.head_count_kv": 2, "attention.key_length": 32,
               "attention.value_length": 32, "attention.layer_norm_rms_epsilon": 1e-6}  # fmt: skip


def _gemma1(tmp_path: Path, **kw: Any) -> tuple[Path, dict[str, Any], dict[str, np.ndarray]]:
    d = tmp_path / "hf"
    cfg, weights = F.tiny_model(d, "gemma", tokenizer="spm", **kw)
    return d, cfg, weights


@pytest.mark.parametrize(
    ("kw", "keys"),
    [
        ({}, GEMMA1_KEYS),
        # rope.freq_base: GemmaModel writes none (llama.cpp's default is 10000); written for another base
        ({"num_key_value_heads": 1, "head_dim": 16, "rope_theta": 100.0},
         {**GEMMA1_KEYS, "attention.head_count_kv": 1, "attention.key_length": 16,
          "attention.value_length": 16, "rope.freq_base": 100.0}),
    ],
    ids=["7b-like", "2b-mqa-rope-base"],
)  # fmt: skip
def test_gemma1_metadata_and_tensors(tmp_path: Path, kw: dict[str, Any], keys: dict[str, Any]) -> None:
    """The gemma.* keys are GemmaModel's; every norm holds 1 + w (post_attention_layernorm as the
    feed-forward's norm), q/k in HF's row order, no output.weight (tied); the vocabulary is the
    SentencePiece one without a space prefix."""
    d, cfg, weights = _gemma1(tmp_path, **kw)
    out = tmp_path / "m.gguf"
    convert(d, out, type="f32", quiet=True)
    TC.assert_same_keys(TC.arch_keys(out, "gemma"), keys)
    r = GGUFReader(out)
    assert TC.field(r, "general.architecture") == "gemma"
    want = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.pre": "default",
            "tokenizer.ggml.add_space_prefix": False, "tokenizer.ggml.bos_token_id": 1,
            "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.unknown_token_id": None,
            "tokenizer.ggml.eot_token_id": 107, "tokenizer.ggml.add_bos_token": True,
            "tokenizer.ggml.add_eos_token": False, "tokenizer.ggml.padding_token_id": None}  # fmt: skip
    assert {k: TC.field(r, k) for k in want} == want
    assert len(TC.field(r, "tokenizer.ggml.tokens")) == cfg["vocab_size"]
    names = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
             "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
             "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
             "ffn_down": "mlp.down_proj"}  # fmt: skip
    expect = {"token_embd.weight": weights["model.embed_tokens.weight"],
              "output_norm.weight": weights["model.norm.weight"] + np.float32(1.0)}  # fmt: skip
    for i in range(cfg["num_hidden_layers"]):
        for kind, hf in names.items():
            w = weights[f"model.layers.{i}.{hf}.weight"]
            expect[f"blk.{i}.{kind}.weight"] = w + np.float32(1.0) if "norm" in kind else w
    TC.assert_holds(out, expect)


def _edit_json(path: Path, changes: dict[str, Any]) -> None:
    """Update a JSON file (created if absent); a None value removes the key."""
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.update(changes)
    path.write_text(json.dumps({k: v for k, v in data.items() if v is not None}))


FIM = (("prefix", 67), ("suffix", 69), ("middle", 68), ("fsep", 70), ("eot", 107))  # GemmaModel.set_vocab's


@pytest.mark.parametrize("case", ["google-files", "eot-flags-and-template"])
def test_gemma1_special_tokens_match_llama_cpp_converter(tmp_path: Path, case: str) -> None:
    """Special token ids, add_* flags and the chat template equal what llama.cpp's GemmaModel.set_vocab
    writes: gguf-py's SpecialVocab as _set_vocab_sentencepiece calls it, then a second one for
    CodeGemma's FIM tokens (ids 67, 69, 68, 70, 107 unless the files name them), its chat template
    dropped; gguf-py has keys for none of them but the EOT."""
    d, cfg, _ = _gemma1(tmp_path)
    _edit_json(d / "tokenizer_config.json", {"chat_template": "{{ messages[0]['content'] }}"})
    if case == "eot-flags-and-template":  # config.json's EOT; add_bos from tokenizer.json's template
        _edit_json(d / "config.json", {"eot_token_id": 5, "pad_token_id": 3})
        _edit_json(d / "tokenizer_config.json", {"add_bos_token": False, "add_eos_token": True,
                                                 "bos_token": "<s>", "eos_token": "</s>"})  # fmt: skip
        single = [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]
        _edit_json(d / "tokenizer.json", {
            "added_tokens": [{"id": 1, "content": "<s>", "special": True},
                             {"id": 2, "content": "</s>", "special": True}],
            "post_processor": {"type": "TemplateProcessing", "single": single, "pair": single + single[1:]},
        })  # fmt: skip
    out = tmp_path / "m.gguf"
    convert(d, out, type="f32", quiet=True)

    def gemma_model_set_vocab(w: Any) -> None:
        gguf.SpecialVocab(d, n_vocab=cfg["vocab_size"]).add_to_gguf(w, quiet=True)
        fim = gguf.SpecialVocab(d, load_merges=False, special_token_types=[t for t, _ in FIM])
        for typ, tid in FIM:
            fim._set_special_token(typ, tid)
        fim.chat_template = None
        fim.add_to_gguf(w, quiet=True)

    ref = TC._gguf_py_file(tmp_path / "ref.gguf", gemma_model_set_vocab)
    ours, theirs = TC._written(out, TC._is_special), TC._written(ref, TC._is_special)
    assert ours == theirs
    eot = 5 if case == "eot-flags-and-template" else 107
    assert ours["tokenizer.ggml.eot_token_id"] == eot
    assert ours["tokenizer.ggml.add_bos_token"] is True


# rows of 256 (K-quants as they are), head_dim 256 over 2 heads of a 256 width (Gemma 7B's shape), MQA
GEMMA1_MIX = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 2,
              "num_key_value_heads": 1, "head_dim": 256}  # fmt: skip


@pytest.mark.reference
@pytest.mark.parametrize("qtype", ["q8_0", "q4_k_m"])
def test_gemma1_types_and_bytes_match_llama_quantize(tmp_path: Path, llama_cpp: Any, qtype: str) -> None:
    d, _, _ = _gemma1(tmp_path, **GEMMA1_MIX)
    ours = tmp_path / "ours.gguf"
    convert(d, ours, type=qtype, quiet=True, n_threads=2)
    TC.same_as_llama_quantize(d, ours, tmp_path, qtype)


GEMMA1_BAD: list[tuple[str, dict[str, Any], str]] = [
    ("config.json", {"tie_word_embeddings": False},
     "config.json: 'tie_word_embeddings' is false, but llama.cpp's gemma always uses the token embedding"),
    ("config.json", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}},
     r"config.json: rope scaling is not supported for Gemma \(llama.cpp's has none\)"),
    ("config.json", {"attention_bias": True}, "config.json: 'attention_bias' is True; llama.cpp's gemma has"),
    ("config.json", {"hidden_activation": "gelu"},
     "config.json: 'hidden_activation' is 'gelu'; llama.cpp's gemma computes the tanh approximation"),
    ("config.json", {"head_dim": None},
     r"config.json: no 'head_dim'; transformers' GemmaConfig then takes 256, but q_proj's 128 rows in "
     r".*model.safetensors hold 4 heads of 32"),
    ("config.json", {"head_dim": 16},
     r"tensor 'model.layers.0.self_attn.k_proj.weight' in .* has shape \[64, 64\], "
     r"config.json implies \[32, 64\]"),
    ("config.json", {"rms_norm_eps": 0}, "config.json: 'rms_norm_eps' must be a positive number, got 0"),
    ("tokenizer.model", {}, "tokenizer.model: missing; llama.cpp's GemmaModel reads Gemma's SentencePiece"),
]  # fmt: skip


@pytest.mark.parametrize(("file", "changes", "match"), GEMMA1_BAD, ids=[m[:40] for _, _, m in GEMMA1_BAD])
def test_gemma1_bad_input_is_named(tmp_path: Path, file: str, changes: dict[str, Any], match: str) -> None:
    """Bad or unsupported settings, a head_dim the tensors contradict (or left to GemmaConfig's 256
    where they hold another) and a missing tokenizer.model are refused, naming the file and the key."""
    d, _, _ = _gemma1(tmp_path)
    if changes:
        _edit_json(d / file, changes)
    else:
        (d / file).unlink()
    with pytest.raises(ConvertError, match=match):
        convert(d, tmp_path / "m.gguf", quiet=True)
    assert _nothing_written(tmp_path)
