"""convert-hf on tiny random Ministral 3 (and Mistral 3 with vision), GLM-4, EXAONE 4.0, ERNIE 4.5,
Command R7B and Command-R / R+ checkpoints, checked against references we did not write.

- llama.cpp (llama-cpp-python) on our f32 GGUF gives the logits of a numpy float64 forward pass of
  the Hugging Face model (hf_dense.hf_logits), and so does splitllm's engine on the same file; each
  case also shows that what it checks (YaRN's terms, the temperature, GLM-4's partial rotation,
  Cohere 2's windows and logit scale, Command R+'s per-head q/k norms) moves the logits well past
  the bound.
- Metadata keys are the ones llama.cpp's Mistral3Model / Glm4Model / Exaone4Model / Ernie4_5Model /
  Cohere2Model / CommandR2Model write; tensors hold the stored weights (q/k rows permuted for
  mistral3's rope only).
- What llama.cpp would run differently from transformers is refused, nothing written.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import hf_dense as H
import numpy as np
import pytest
import test_convert as TC
from gguf import GGUFReader
from splitllm import Model
from splitllm_convert import convert
from splitllm_convert.errors import ConvertError

IDS = [(7 * i + 3) % 300 for i in range(24)]
MODEL_BETAS = {"yarn_beta_fast": -1.0, "yarn_beta_slow": -1.0}  # the file's YaRN turns (test_dense_archs)
Weights = dict[str, np.ndarray]
Change = Callable[[dict[str, Any], Weights], tuple[dict[str, Any], Weights]]


@pytest.fixture(scope="module")
def llama_cpp() -> Any:
    return pytest.importorskip("llama_cpp")


def _change(over: dict[str, Any]) -> Change:
    return lambda cfg, w: ({**cfg, **over}, w)


def _without(suffix: str) -> Change:
    return lambda cfg, w: (cfg, {k: v for k, v in w.items() if not k.endswith(suffix)})


def _rope(over: dict[str, Any]) -> Change:
    return lambda cfg, w: ({**cfg, "rope_parameters": {**cfg["rope_parameters"], **over}}, w)


# (architecture, tiny_dense_hf options, changes to the model the case must be able to tell apart)
CASES: dict[str, tuple[str, dict[str, Any], list[Change]]] = {
    "mistral3": ("mistral3", {}, [_rope({"llama_4_scaling_beta": 0.0}), _rope({"mscale_all_dim": 1.0}),
                                  _rope({"beta_fast": 32.0, "beta_slow": 1.0})]),
    "mistral3-vl-bf16-sharded": ("mistral3-vl", {"dtype": "bf16", "shards": 2}, [_rope({"factor": 2.0})]),
    # Mistral Small 3.x's text model: a plain llama under mistral3 (no YaRN, no temperature)
    "mistral3-vl-small": ("mistral3-vl", {"model_type": "mistral", "rope_parameters": None,
                                          "rope_theta": 1e6}, [_change({"rope_theta": 1e4})]),
    "glm4": ("glm4", {}, [_change({"partial_rotary_factor": 1.0})]),
    "exaone4": ("exaone4", {}, [_change({"_halves": False})]),  # (the other pairs rotated)
    "ernie4_5": ("ernie4_5", {}, [_change({"_halves": True})]),
    "cohere2": ("cohere2", {}, [_change({"sliding_window": 64}), _change({"logit_scale": 1.0})]),
    "qwen3vl": ("qwen3vl", {}, [_change({"_halves": False})]),
    "command-r": ("command-r", {}, [_change({"logit_scale": 1.0}), _change({"_halves": True})]),
    "exaone": ("exaone", {}, [_change({"_halves": False})]),
    # EXAONE 3.5: Llama 3's rotary scaling (rope_freqs), tied (2.4B)
    "exaone-3.5": ("exaone", {"tie_word_embeddings": True, "rope_scaling": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64}}, [_change({"rope_scaling": None})]),
    # Command R+'s layout: 64 layers (llama.cpp's condition for its q/k norms), each head's own row
    "command-r-plus": ("command-r", {"num_hidden_layers": 64, "hidden_size": 32, "intermediate_size": 32,
                                     "num_attention_heads": 2, "num_key_value_heads": 1, "use_qk_norm": True},
                       [_without("q_norm.weight"), _without("k_norm.weight")]),
}  # fmt: skip


def _tol(ref: np.ndarray) -> float:
    return 2e-3 * float(np.abs(ref).max())


@pytest.mark.reference
@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_float64_reference(tmp_path: Path, llama_cpp: Any, case: str) -> None:
    arch, kw, others = CASES[case]
    cfg, weights = H.tiny_dense_hf(tmp_path / "hf", arch, **kw)
    out = tmp_path / "m.gguf"
    convert(tmp_path / "hf", out, type="f32", quiet=True)
    ref = H.hf_logits(cfg, weights, IDS)
    for change in others:  # each feature the case exercises matters here, well beyond the tolerance
        assert np.abs(H.hf_logits(*change(cfg, weights), IDS) - ref).max() > 5 * _tol(ref)
    assert np.abs(TC.llama_cpp_logits(out, IDS, **MODEL_BETAS) - ref).max() < _tol(ref)
    with Model(out, n_ctx=64, n_threads=2, **MODEL_BETAS) as m:  # splitllm's engine on the same file
        assert np.abs(m.logits(IDS) - ref).max() < _tol(ref)


@pytest.mark.parametrize("case", list(CASES))
def test_engine_logits_match_float64_reference(tmp_path: Path, case: str) -> None:
    """(without llama.cpp too) the engine on the converted file, and each change visible"""
    arch, kw, others = CASES[case]
    cfg, weights = H.tiny_dense_hf(tmp_path / "hf", arch, **kw)
    out = tmp_path / "m.gguf"
    convert(tmp_path / "hf", out, type="f32", quiet=True)
    ref = H.hf_logits(cfg, weights, IDS)
    for change in others:
        assert np.abs(H.hf_logits(*change(cfg, weights), IDS) - ref).max() > 5 * _tol(ref)
    with Model(out, n_ctx=64, n_threads=2, **MODEL_BETAS) as m:
        assert np.abs(m.logits(IDS) - ref).max() < _tol(ref)


SHAPE = {"embedding_length": 64, "feed_forward_length": 96, "attention.head_count": 4,
         "attention.head_count_kv": 2, "context_length": 512}  # fmt: skip
KEYS = {
    "mistral3": {**SHAPE, "block_count": 3, "rope.freq_base": 1e4, "attention.layer_norm_rms_epsilon": 1e-5,
                 "vocab_size": 320, "rope.dimension_count": 16, "attention.key_length": 16,
                 "attention.value_length": 16, "rope.scaling.type": "yarn", "rope.scaling.factor": 4.0,
                 "rope.scaling.original_context_length": 8, "rope.scaling.yarn_beta_fast": 2.0,
                 "rope.scaling.yarn_beta_slow": 0.05, "rope.scaling.yarn_log_multiplier": 0.5,
                 "attention.temperature_scale": 0.5},
    "glm4": {**SHAPE, "block_count": 3, "rope.freq_base": 1e4, "attention.layer_norm_rms_epsilon": 1e-5,
             "attention.key_length": 16, "attention.value_length": 16, "rope.dimension_count": 8},
    "exaone4": {**SHAPE, "block_count": 3, "rope.freq_base": 1e4, "attention.layer_norm_rms_epsilon": 1e-5,
                "vocab_size": 320},
    "ernie4_5": {**SHAPE, "block_count": 3, "rope.freq_base": 1e4, "attention.layer_norm_rms_epsilon": 1e-5,
                 "attention.key_length": 16, "attention.value_length": 16},
    "cohere2": {**SHAPE, "block_count": 4, "rope.freq_base": 1e4, "attention.layer_norm_epsilon": 1e-5,
                "logit_scale": 0.5, "attention.sliding_window": 5, "vocab_size": 320,
                "rope.dimension_count": 16,
                "rope.scaling.type": "none"},
    "command-r": {**SHAPE, "context_length": 1024, "block_count": 3, "rope.freq_base": 1e4,
                  "attention.layer_norm_epsilon": 1e-5, "logit_scale": 0.25, "rope.scaling.type": "none"},
    "exaone": {**SHAPE, "block_count": 3, "rope.freq_base": 1e4, "attention.layer_norm_rms_epsilon": 1e-5,
               "rope.dimension_count": 16},
    "qwen3vl": {**SHAPE, "block_count": 3, "rope.freq_base": 1e4, "attention.layer_norm_rms_epsilon": 1e-5,
                "attention.key_length": 16, "attention.value_length": 16,
                "rope.dimension_sections": [3, 3, 2, 0], "n_deepstack_layers": 2},
}  # fmt: skip


@pytest.mark.parametrize("arch", list(KEYS))
def test_metadata_and_tensors(tmp_path: Path, arch: str) -> None:
    """The {arch}.* keys are llama.cpp's; every HF tensor is written once, as stored (mistral3's
    q/k rows permuted from HF's halves to GGML's pairs); a tied model has no output.weight."""
    cfg, weights = H.tiny_dense_hf(tmp_path / "hf", arch)
    out = tmp_path / "m.gguf"
    convert(tmp_path / "hf", out, type="f32", quiet=True)
    want = dict(KEYS[arch])
    if arch in ("glm4", "ernie4_5"):  # (their vocabularies: 321 with GLM-4's <|user|>; SentencePiece's 400)
        want.pop("vocab_size", None)
    got_keys = TC.arch_keys(out, arch)
    lists = {k for k, v in want.items() if isinstance(v, list)}  # (pytest.approx takes no nested lists)
    assert {k: got_keys.get(k) for k in lists} == {k: want[k] for k in lists}
    assert {k: v for k, v in got_keys.items() if k not in lists} == \
        pytest.approx({k: v for k, v in want.items() if k not in lists})
    got = TC.tensors(out)
    assert ("output.weight" in got) is not cfg.get("tie_word_embeddings", False)
    names = {**H._BLOCK, **H._ARCH_BLOCK.get(arch, {})}
    hf_of = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight"}  # fmt: skip
    for name in weights:
        if name.startswith("model.layers."):
            _, _, bid, rest = name.split(".", 3)
            module, kind = rest.rsplit(".", 1)
            hf_of[f"blk.{bid}.{names[module]}.{kind}"] = name
    assert sorted(hf_of[n] for n in got) == sorted(weights)  # every HF tensor, once
    hd = 16
    for name in got:
        want_x = weights[hf_of[name]]
        if arch == "mistral3" and name.endswith(("attn_q.weight", "attn_k.weight")):  # halves -> pairs
            want_x = want_x.reshape(-1, 2, hd // 2, want_x.shape[1]).swapaxes(1, 2).reshape(want_x.shape)
        np.testing.assert_array_equal(TC.as_f32(got[name]), want_x, err_msg=name)
    if arch == "glm4":  # Glm4Model.set_vocab's special tokens
        r = GGUFReader(out)
        assert TC.field(r, "tokenizer.ggml.eot_token_id") == 320
        assert TC.field(r, "tokenizer.ggml.bos_token_id") == TC.field(r, "tokenizer.ggml.eos_token_id") == 0


# -- bad input ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_dirs(tmp_path_factory: Any) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    out = {}
    for arch in ("mistral3", "glm4", "exaone4", "ernie4_5", "cohere2", "command-r", "exaone"):
        out[arch] = root / arch
        H.tiny_dense_hf(out[arch], arch, num_hidden_layers=4)
    return out


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("mistral3", {"sliding_window": 4096},
     "'sliding_window' is 4096: llama.cpp's mistral3 has no sliding window"),
    ("mistral3", {"mlp_bias": True}, "'mlp_bias' is true: feed-forward biases are not supported"),
    ("mistral3", {"rope_parameters": {"rope_type": "default", "rope_theta": 1e4}},
     "a ministral3 model needs yarn rope_parameters"),
    ("mistral3", {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "mscale_all_dim": 1.0,
                                      "original_max_position_embeddings": 8}},
     r"rope_parameters.llama_4_scaling_beta must be a number >= 0, got None"),
    ("glm4", {"partial_rotary_factor": 0.3125}, "5 rotated dimensions per head"),
    ("glm4", {"rope_scaling": {"rope_type": "default", "mrope_section": [2, 3, 3]}},
     "rope 'mrope_section': GLM-4V's multimodal"),
    ("exaone4", {"sliding_window": 4096, "layer_types": ["sliding_attention"] * 3 + ["full_attention"]},
     "'sliding_window' is 4096 on 4 layers: llama.cpp's exaone4 applies windows"),
    ("ernie4_5", {"use_bias": True}, "'use_bias' is true: llama.cpp's ernie4_5 drops"),
    ("cohere2", {"tie_word_embeddings": False}, "'tie_word_embeddings' is false"),
    ("cohere2", {"attention_bias": True}, "'attention_bias' is true"),
    ("cohere2", {"rotary_pct": 0.5}, "'rotary_pct' is 0.5"),
    ("cohere2", {"logit_scale": None}, "'logit_scale' must be a positive number, got None"),
    ("cohere2", {"layer_types": ["sliding_attention", "full_attention"] * 2},
     r"layer types \[.*\] are not llama.cpp's cohere2 pattern"),
    ("cohere2", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope scaling 'linear'"),
    ("exaone", {"activation_function": "gelu"}, "'activation_function' is 'gelu': llama.cpp's exaone"),
    ("command-r", {"use_qk_norm": True}, "'use_qk_norm' is true on 4 layers: llama.cpp's command-r reads"),
    ("command-r", {"tie_word_embeddings": False}, "'tie_word_embeddings' is false, but llama.cpp's comm"),
    ("command-r", {"attention_bias": True}, "'attention_bias' is true: llama.cpp's command-r has no biases"),
    ("command-r", {"logit_scale": 0}, "'logit_scale' must be a positive number, got 0"),
    ("command-r", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope scaling 'linear': llama"),
]  # fmt: skip


@pytest.mark.parametrize(("arch", "over", "match"), BAD)
def test_bad_config(tmp_path: Path, base_dirs: dict[str, Path], arch: str, over: dict[str, Any],
                    match: str) -> None:  # fmt: skip
    TC.refused_config(tmp_path, base_dirs[arch], over, match)


def test_exaone4_32b_layout_needs_a_window(tmp_path: Path) -> None:
    """64 layers without a window: llama.cpp would give them 4096-token windows and unrotated global
    layers that transformers does not have."""
    H.tiny_dense_hf(tmp_path / "hf", "exaone4", num_hidden_layers=64, hidden_size=16, intermediate_size=16,
                    num_attention_heads=2, num_key_value_heads=1)  # fmt: skip
    with pytest.raises(ConvertError, match="no 'sliding_window', but llama.cpp's exaone4 gives a model of"):
        convert(tmp_path / "hf", tmp_path / "m.gguf", quiet=True)


# -- quantization mixes against llama.cpp's quantizer ------------------------------------------

MIX_TYPES = ["q8_0", "q6_k", "q4_k_m", "q3_k_m", "q2_k", "iq4_xs"]


@pytest.fixture(scope="module", params=["mistral3", "glm4", "exaone4", "cohere2", "command-r", "exaone"])
def dense_mix_model(request: Any, tmp_path_factory: Any) -> tuple[Path, Path]:
    """Rows of 256 (the k-quants as they are), 8 query heads on 2 KV heads, 4 layers."""
    d = tmp_path_factory.mktemp(request.param)
    H.tiny_dense_hf(d / "hf", request.param, hidden_size=256, intermediate_size=256, num_hidden_layers=4,
                    num_attention_heads=8, num_key_value_heads=2, head_dim=32)  # fmt: skip
    convert(d / "hf", d / "f32.gguf", type="f32", quiet=True)
    return d / "hf", d / "f32.gguf"


@pytest.mark.reference
@pytest.mark.parametrize("qtype", MIX_TYPES)
def test_mix_and_bytes_match_llama_quantize(
    tmp_path: Path, llama_cpp: Any, dense_mix_model: tuple[Path, Path], qtype: str
) -> None:
    """Every tensor's type and bytes as llama.cpp's quantizer gives them from our f32 file."""
    TC.test_mix_and_bytes_match_llama_quantize(tmp_path, llama_cpp, dense_mix_model, qtype)
