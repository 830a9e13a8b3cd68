"""convert-hf on tiny random SmolLM3, Granite 3 and OLMo 2 models, checked against references we did
not write.

- llama.cpp (llama-cpp-python) on our f32 GGUF gives the logits of a numpy float64 forward pass
  written from transformers' SmolLM3 / Granite / Olmo2 modeling (hf_fixtures.variant_logits), and
  so does splitllm's engine on the same file; each case also shows that what it checks (the
  unrotated layers, each Granite multiplier, OLMo 2's norms) moves the logits well past the bound.
- The per-tensor types and bytes of every ``--type`` equal those of llama.cpp's own quantizer
  run on our f32 file (the test of test_convert, on these models).
- Metadata keys are the ones llama.cpp's SmolLM3Model / GraniteModel / Olmo2Model write (transformers'
  config defaults where config.json leaves keys out); tensors hold the stored weights (q/k rows
  permuted for the llama-style rope of smollm3 and granite, as HF has them for olmo2's NEOX rope).
- What llama.cpp would run differently from transformers (another NoPE pattern, a sliding window,
  Granite's head_dim, experts, biases it has no tensor for) is refused, nothing written.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
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

IDS = [(7 * i + 3) % 300 for i in range(24)]
TEXT = "hello world it's 12345 the model über 東京! \n  quantize  the   block?"
Weights = dict[str, np.ndarray]


@pytest.fixture(scope="module")
def llama_cpp() -> Any:
    return pytest.importorskip("llama_cpp")


def _swap_post_norms(cfg: dict[str, Any], w: Weights) -> tuple[dict[str, Any], Weights]:
    """OLMo 2 with its two post-norms exchanged (what a mix-up in the table would run)."""
    w = dict(w)
    for i in range(cfg["num_hidden_layers"]):
        a, f = (f"model.layers.{i}.post_{n}_layernorm.weight" for n in ("attention", "feedforward"))
        w[a], w[f] = w[f], w[a]
    return cfg, w


def _unit_qk_norms(cfg: dict[str, Any], w: Weights) -> tuple[dict[str, Any], Weights]:
    qk = ("q_norm.weight", "k_norm.weight")
    return cfg, {n: np.ones_like(x) if n.endswith(qk) else x for n, x in w.items()}


def _change(over: dict[str, Any]) -> Callable[[dict[str, Any], Weights], tuple[dict[str, Any], Weights]]:
    return lambda cfg, w: ({**cfg, **over}, w)


Change = Callable[[dict[str, Any], Weights], tuple[dict[str, Any], Weights]]
# (architecture, tiny_variant options, changes to the model the case must be able to tell apart)
CASES: dict[str, tuple[str, dict[str, Any], list[Change]]] = {
    # layers 3 and 7 unrotated; embeddings tied (SmolLM3's default)
    "smollm3": ("smollm3", {}, [_change({"no_rope_layers": [1] * 8})]),
    # no no_rope_layers: transformers' interval (4); an output matrix; wider heads; MQA
    "smollm3-bf16-sharded-untied-headdim": (
        "smollm3", {"dtype": "bf16", "shards": 2, "tie_word_embeddings": False, "head_dim": 32,
                    "num_key_value_heads": 1, "drop": ("no_rope_layers", "layer_types")},
        [_change({"no_rope_layer_interval": 100})]),
    # q, k, v and o biases (q/k permuted with their rows)
    "granite": ("granite", {"attention_bias": True}, [
        _change({"embedding_multiplier": 1.0}), _change({"residual_multiplier": 1.0}),
        _change({"attention_multiplier": 0.25}), _change({"logits_scaling": 1.0}),
        lambda cfg, w: (cfg, {n: x for n, x in w.items() if not n.endswith(".bias")})]),
    "granite-bf16-sharded-tied-linear": (
        "granite", {"dtype": "bf16", "shards": 3, "tie_word_embeddings": True,
                    "rope_scaling": {"rope_type": "linear", "factor": 2.0}},
        [_change({"rope_scaling": None})]),
    "olmo2": ("olmo2", {}, [_swap_post_norms, _unit_qk_norms]),
    # head_dim written (as hidden_size / heads), no GQA, another rope base
    "olmo2-bf16-sharded-mha-headdim": (
        "olmo2", {"dtype": "bf16", "shards": 2, "num_key_value_heads": 4, "head_dim": 16, "rope_theta": 5e5},
        [_change({"rope_theta": 1e4})]),
}  # fmt: skip


@pytest.mark.reference
@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_float64_reference(tmp_path: Path, llama_cpp: Any, case: str) -> None:
    arch, kw, others = CASES[case]
    cfg, weights = F.tiny_variant(tmp_path / "hf", arch, **kw)
    out = tmp_path / "m.gguf"
    convert(tmp_path / "hf", out, type="f32", quiet=True)
    ref = F.variant_logits(cfg, weights, IDS)
    tol = 2e-3 * np.abs(ref).max()
    for change in others:  # each feature the case exercises matters here, well beyond the tolerance
        assert np.abs(F.variant_logits(*change(cfg, weights), IDS) - ref).max() > 5 * tol
    got = TC.lcpp_logits(llama_cpp, out, IDS)
    assert np.abs(got - ref).max() < tol
    with Model(out, n_ctx=64, n_threads=2) as m:  # splitllm's engine on the same file
        assert np.abs(m.logits(IDS) - ref).max() < tol
    if case == arch:  # the converted vocabulary, as Hugging Face's tokenizers reads tokenizer.json
        from tokenizers import Tokenizer

        hf = Tokenizer.from_file(str(tmp_path / "hf" / "tokenizer.json"))
        want = hf.encode(TEXT, add_special_tokens=False)
        llm = llama_cpp.Llama(str(out), vocab_only=True, verbose=False)
        assert llm.tokenize(TEXT.encode(), add_bos=False, special=False) == want.ids
        llm.close()
        with Model(out, n_ctx=64) as m:
            assert m.tokenize(TEXT.encode(), special=False) == want.ids


# -- metadata and tensors ---------------------------------------------------------------------------


SHAPE = {"embedding_length": 64, "feed_forward_length": 128, "attention.head_count": 4,
         "attention.head_count_kv": 2}  # fmt: skip
LLAMA_KEYS = {"vocab_size": 320, "rope.dimension_count": 16}  # LlamaModel's, after TextModel's
GRANITE_SCALES = {"attention.scale": 0.0625, "embedding_scale": 0.5, "residual_scale": 0.22,
                  "logit_scale": 8.0}  # fmt: skip
# transformers' defaults of the keys tiny_variant leaves out
DEFAULTED = ("max_position_embeddings", "rope_theta", "rms_norm_eps", "tie_word_embeddings")


@pytest.mark.parametrize(
    ("arch", "kw", "keys"),
    [
        ("smollm3", {}, {**SHAPE, **LLAMA_KEYS, "block_count": 8, "context_length": 512,
                         "rope.freq_base": 1e4, "attention.layer_norm_rms_epsilon": 1e-5}),
        ("smollm3", {"drop": (*DEFAULTED, "no_rope_layers", "layer_types", "no_rope_layer_interval"),
                     "head_dim": 32},
         {**SHAPE, **LLAMA_KEYS, "block_count": 8, "context_length": 32768, "rope.freq_base": 2e6,
          "attention.layer_norm_rms_epsilon": 1e-6, "rope.dimension_count": 32, "attention.key_length": 32,
          "attention.value_length": 32}),
        ("granite", {"head_dim": 16}, {**SHAPE, **LLAMA_KEYS, **GRANITE_SCALES, "block_count": 3,
                                       "context_length": 512, "rope.freq_base": 1e4,
                                       "attention.layer_norm_rms_epsilon": 1e-5}),
        ("granite", {"drop": (*DEFAULTED, "attention_multiplier", "embedding_multiplier",
                              "residual_multiplier", "logits_scaling")},
         {**SHAPE, **LLAMA_KEYS, "block_count": 3, "context_length": 2048, "rope.freq_base": 1e4,
          "attention.layer_norm_rms_epsilon": 1e-6, "attention.scale": 1.0, "embedding_scale": 1.0,
          "residual_scale": 1.0, "logit_scale": 1.0}),
        ("olmo2", {}, {**SHAPE, "block_count": 3, "context_length": 512, "rope.freq_base": 1e4,
                       "attention.layer_norm_rms_epsilon": 1e-6}),
        ("olmo2", {"drop": DEFAULTED[:3], "head_dim": 16},
         {**SHAPE, "block_count": 3, "context_length": 2048, "rope.freq_base": 1e4,
          "attention.layer_norm_rms_epsilon": 1e-5, "attention.key_length": 16,
          "attention.value_length": 16}),
    ],
    ids=["smollm3", "smollm3-defaults-headdim", "granite-headdim", "granite-defaults", "olmo2",
         "olmo2-defaults-headdim"],
)  # fmt: skip
def test_metadata_and_tensors(tmp_path: Path, arch: str, kw: dict[str, Any], keys: dict[str, Any]) -> None:
    """The {arch}.* keys are llama.cpp's (its converter on transformers' config); every HF tensor is
    written once under llama.cpp's name, q/k permuted for the llama-style rope (smollm3, granite) or
    in HF's order (olmo2, NEOX); a tied model has no output.weight."""
    cfg, weights = F.tiny_variant(tmp_path / "hf", arch, **kw)
    out = tmp_path / "m.gguf"
    convert(tmp_path / "hf", out, type="f32", quiet=True)
    assert TC.arch_keys(out, arch) == pytest.approx(keys)
    r = GGUFReader(out)
    assert TC.field(r, "general.architecture") == arch
    assert TC.field(r, "tokenizer.ggml.model") == "gpt2"
    assert TC.field(r, "tokenizer.ggml.pre") == F.VARIANT_PRE[arch]  # from the structure (an unknown hash)
    # LlamaModel.set_vocab copies tokenizer_config.json's add_prefix_space; Olmo2Model's does not
    assert TC.field(r, "tokenizer.ggml.add_space_prefix") is (None if arch == "olmo2" else False)
    hf_of = {**F._GGUF_TO_HF, "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
             "post_attention_norm": "post_attention_layernorm", "post_ffw_norm": "post_feedforward_layernorm"}
    got = TC.tensors(out)
    names = {}
    for name in got:
        parts = name.split(".")
        names[name] = (f"model.layers.{parts[1]}.{hf_of[parts[2]]}.{parts[3]}" if parts[0] == "blk"
                       else f"{hf_of[parts[0]]}.{parts[1]}")  # fmt: skip
    assert sorted(names.values()) == sorted(weights)  # every HF tensor, once
    tied = cfg.get("tie_word_embeddings", arch == "smollm3")  # transformers' default if left out
    assert ("output.weight" in got) is not tied
    hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    for name, hf in names.items():
        want = weights[hf]
        if arch != "olmo2" and name.endswith(("attn_q.weight", "attn_k.weight")):  # HF halves -> GGML pairs
            want = want.reshape(-1, 2, hd // 2, want.shape[1]).swapaxes(1, 2).reshape(want.shape)
        np.testing.assert_array_equal(TC.as_f32(got[name]), want, err_msg=name)


def test_olmo2_reads_tokenizer_json_even_beside_a_sentencepiece_model(tmp_path: Path) -> None:
    """llama.cpp's Olmo2Model knows only byte-level BPE: a tokenizer.model beside tokenizer.json is
    not read (LlamaModel's would prefer it)."""
    F.tiny_variant(tmp_path / "hf", "olmo2")
    (tmp_path / "spm").mkdir()
    F.write_spm_tokenizer(tmp_path / "spm")
    shutil.copy(tmp_path / "spm" / "tokenizer.model", tmp_path / "hf" / "tokenizer.model")
    convert(tmp_path / "hf", tmp_path / "m.gguf", type="f32", quiet=True)
    assert TC.field(GGUFReader(tmp_path / "m.gguf"), "tokenizer.ggml.model") == "gpt2"


# -- quantization mixes against llama.cpp's quantizer ------------------------------------------

MIX_MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    # rows of 256: K-quants as they are; 4 query heads per KV head; tied output; 8 layers
    "smollm3-gqa4-tied": ("smollm3", {
        "hidden_size": 256, "intermediate_size": 256, "num_hidden_layers": 8, "num_attention_heads": 8,
        "num_key_value_heads": 2}),
    # rows of 96 and 192: every K-quant falls back; biases stay F32; an output matrix of its own
    "granite-rows96-biases": ("granite", {
        "hidden_size": 96, "intermediate_size": 192, "num_hidden_layers": 6, "num_attention_heads": 4,
        "num_key_value_heads": 4, "attention_bias": True}),
    # rows of 160 (32-blocks only); the q/k norms and post-norms stay F32
    "olmo2-rows160-mqa": ("olmo2", {
        "hidden_size": 160, "intermediate_size": 320, "num_hidden_layers": 4, "num_attention_heads": 2,
        "num_key_value_heads": 1}),
}  # fmt: skip


@pytest.fixture(scope="module", params=list(MIX_MODELS))
def variant_mix_model(request: Any, tmp_path_factory: Any) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp(request.param)
    arch, kw = MIX_MODELS[request.param]
    F.tiny_variant(d / "hf", arch, **kw)
    convert(d / "hf", d / "f32.gguf", type="f32", quiet=True)
    return d / "hf", d / "f32.gguf"


@pytest.mark.reference
@pytest.mark.parametrize("qtype", TC.QUANT_TYPES)
def test_mix_and_bytes_match_llama_quantize(
    tmp_path: Path, llama_cpp: Any, variant_mix_model: tuple[Path, Path], qtype: str
) -> None:
    TC.test_mix_and_bytes_match_llama_quantize(tmp_path, llama_cpp, variant_mix_model, qtype)


@pytest.mark.parametrize("qtype", ["f16", "bf16"])
@pytest.mark.parametrize("arch", list(F.VARIANT_ARCHS))
def test_float_types(tmp_path: Path, arch: str, qtype: str) -> None:
    """f16 / bf16 (llama.cpp's converter): every matrix in that type, the norms (OLMo 2's q/k norms
    and post-norms too) and Granite's biases in F32, values rounded to nearest even."""
    _, weights = F.tiny_variant(tmp_path / "hf", arch, attention_bias=arch == "granite")
    convert(tmp_path / "hf", tmp_path / "m.gguf", type=qtype, quiet=True)
    tensors = GGUFReader(tmp_path / "m.gguf").tensors
    types = {t.name: t.tensor_type.name for t in tensors}
    assert {n for n, t in types.items() if t == "F32"} == {n for n in types if "norm" in n or "bias" in n}
    assert {t for t in types.values() if t != "F32"} == {qtype.upper()}
    embd = next(t for t in tensors if t.name == "token_embd.weight")
    want = F.as_dtype(weights["model.embed_tokens.weight"], qtype)[2]
    np.testing.assert_array_equal(TC.as_f32(embd), want)


# -- bad input ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_dirs(tmp_path_factory: Any) -> dict[str, Path]:
    """One tiny model directory per architecture, copied by each bad-config case."""
    root = tmp_path_factory.mktemp("bad")
    out = {}
    for arch in F.VARIANT_ARCHS:
        out[arch] = root / arch
        F.tiny_variant(out[arch], arch, num_hidden_layers=4)
    return out


def _with_config(base: Path, d: Path, over: dict[str, Any], drop: tuple[str, ...] = ()) -> Path:
    shutil.copytree(base, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg = {k: v for k, v in {**cfg, **over}.items() if k not in drop}
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def _nothing_written(d: Path) -> bool:
    return not list(d.glob("*.gguf")) and not list(d.glob(".*.part"))


BAD: list[tuple[str, dict[str, Any], tuple[str, ...], str]] = [
    # SmolLM3: another NoPE pattern than llama.cpp's every fourth layer
    ("smollm3", {"no_rope_layers": [1, 0, 1, 1]}, (),
     r"'no_rope_layers' leaves layers \[1\] unrotated; llama.cpp's smollm3 always skips the rotation on "
     r"every 4th layer \(\[3\]\)"),
    ("smollm3", {"no_rope_layer_interval": 3}, ("no_rope_layers",),
     r"'no_rope_layer_interval' leaves layers \[2\] unrotated"),
    ("smollm3", {"no_rope_layers": [1, 1, 1]}, (), "'no_rope_layers' must list at least 4 entries"),
    ("smollm3", {"no_rope_layers": [1, 1, 1, 2]}, (), "'no_rope_layers' must list at least 4 entries"),
    ("smollm3", {"no_rope_layer_interval": 0}, ("no_rope_layers",),
     "'no_rope_layer_interval' must be a positive integer, got 0"),
    ("smollm3", {"use_sliding_window": True, "sliding_window": 4}, ("layer_types",),
     "'use_sliding_window' is true: sliding-window layers are not supported"),
    ("smollm3", {"attention_bias": True}, (), "'attention_bias' is true: llama.cpp's smollm3 has no biases"),
    ("smollm3", {"mlp_bias": True}, (), "'mlp_bias' is true"),
    ("smollm3", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}, (),
     "rope scaling type 'llama3' is not supported for smollm3"),
    # Granite: head_dim that llama.cpp ignores, experts (GraniteMoe), feed-forward biases, multipliers
    ("granite", {"head_dim": 32}, (),
     "'head_dim' is 32, but llama.cpp's granite ignores it and takes hidden_size / num_attention_heads = 16"),
    ("granite", {"num_local_experts": 4, "num_experts_per_tok": 2}, (),
     r"'num_local_experts' is 4: experts are not supported \(granite is dense\)"),
    ("granite", {"mlp_bias": True}, (), "'mlp_bias' is true: feed-forward biases are not supported"),
    ("granite", {"logits_scaling": 0}, (), "'logits_scaling' must be a positive number, got 0"),
    ("granite", {"attention_multiplier": None}, (),
     "'attention_multiplier' must be a positive number, got None"),
    ("granite", {"architectures": ["GraniteMoeForCausalLM"]}, (),  # (test_convert_moe_archs.py's)
     "'num_local_experts' must be a positive integer, got None"),
    ("granite", {"architectures": ["GraniteSpeechForConditionalGeneration"]}, (),
     "architecture 'GraniteSpeechForConditionalGeneration' is not supported"),
    # OLMo 2: OLMo 3's sliding window, a tied output, an attention bias, a head size of its own
    ("olmo2", {"sliding_window": 4096, "layer_types": ["sliding_attention"] * 3 + ["full_attention"]}, (),
     r"'sliding_window' is 4096: sliding-window layers \(OLMo 3's\) are not supported"),
    ("olmo2", {"architectures": ["Olmo3ForCausalLM"], "sliding_window": 4096}, (),
     "architecture 'Olmo3ForCausalLM' is not supported"),
    ("olmo2", {"tie_word_embeddings": True}, (),
     "'tie_word_embeddings' is true, but llama.cpp's olmo2 needs"),
    ("olmo2", {"attention_bias": True}, (), "'attention_bias' is true: llama.cpp's olmo2 has no attention"),
    ("olmo2", {"head_dim": 32}, (), r"head size 32 \('head_dim'\) is not hidden_size / num_attention_heads"),
]  # fmt: skip


@pytest.mark.parametrize(("arch", "over", "drop", "match"), BAD)
def test_bad_config(
    tmp_path: Path, base_dirs: dict[str, Path], arch: str, over: dict[str, Any], drop: tuple[str, ...],
    match: str
) -> None:  # fmt: skip
    d = _with_config(base_dirs[arch], tmp_path / "hf", over, drop)
    with pytest.raises(ConvertError, match=f"{d / 'config.json'}: {match}"):
        convert(d, tmp_path / "m.gguf", quiet=True)
    assert _nothing_written(tmp_path)


@pytest.mark.parametrize(
    "over",
    [
        {"no_rope_layers": [1, 1, 1, 0, 1, 0]},  # longer than the model: the first 4 count
        {"no_rope_layers": [True, True, True, False]},
        {"use_sliding_window": True, "sliding_window": 4, "layer_types": ["full_attention"] * 4},
        {"use_sliding_window": False, "sliding_window": 4},  # the window is not used
    ],
    ids=["long-list", "bools", "window-no-sliding-layer", "window-off"],
)
def test_smollm3_configs_llama_cpp_runs_alike(
    tmp_path: Path, base_dirs: dict[str, Path], over: dict[str, Any]
) -> None:
    """Configs that spell SmolLM3's pattern otherwise, or name a window no layer uses, convert."""
    d = _with_config(base_dirs["smollm3"], tmp_path / "hf", over)
    convert(d, tmp_path / "m.gguf", type="f32", quiet=True)
    assert TC.field(GGUFReader(tmp_path / "m.gguf"), "general.architecture") == "smollm3"


@pytest.mark.reference
def test_smollm3_other_interval_same_pattern(tmp_path: Path, llama_cpp: Any) -> None:
    """Three layers and an interval of 5: transformers rotates every layer, and so does llama.cpp's
    every-fourth pattern on three layers; the model converts and runs as trained."""
    cfg, weights = F.tiny_variant(tmp_path / "hf", "smollm3", num_hidden_layers=3, no_rope_layer_interval=5,
                                  drop=("no_rope_layers", "layer_types"))  # fmt: skip
    convert(tmp_path / "hf", tmp_path / "m.gguf", type="f32", quiet=True)
    ref = F.variant_logits(cfg, weights, IDS)
    assert np.abs(TC.lcpp_logits(llama_cpp, tmp_path / "m.gguf", IDS) - ref).max() < 2e-3 * np.abs(ref).max()
