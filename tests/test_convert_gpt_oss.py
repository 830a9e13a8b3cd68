"""convert-hf on tiny random gpt-oss checkpoints, experts as MXFP4 blocks (OpenAI's form) or
dequantized (bf16), checked against references we did not write.

- The GGUF's tensors, decoded by gguf-py, hold the checkpoint's values as transformers reads them
  (experts: transformers' MXFP4 dequantization, gate at the even columns of gate_up_proj, up at the
  odd ones); the MXFP4 experts are repacked, not requantized.
- llama.cpp (llama-cpp-python) and splitllm's engine on the converted file give the logits of the
  float64 reference (tiny_model's, transformers' GptOss formulas) on those values.
- Metadata keys in the order llama.cpp's GptOssModel writes them; general.file_type MOSTLY_MXFP4_MOE
  for an MXFP4 checkpoint's default (bf16, as llama.cpp's --outtype auto) and float types.
- ``--type mxfp4_moe`` (and the k-quants) give llama.cpp's quantizer's types and bytes on our f32 file.
llama.cpp's own converter needs torch, which is not installed here: it is not run.
"""

from __future__ import annotations

import json
import shutil
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
from tiny_model import TinyConfig, reference_logits

IDS = [(7 * i + 3) % 300 for i in range(24)]
Weights = dict[str, np.ndarray]


@pytest.fixture(scope="module")
def llama_cpp() -> Any:
    return pytest.importorskip("llama_cpp")


def tiny_config(cfg: dict[str, Any]) -> TinyConfig:
    """tiny_model's description of the checkpoint ``cfg``."""
    return TinyConfig(
        arch="gpt-oss", n_layer=cfg["num_hidden_layers"], n_embd=cfg["hidden_size"],
        n_head=cfg["num_attention_heads"], n_head_kv=cfg["num_key_value_heads"],
        n_ff=cfg["intermediate_size"],
        n_vocab=cfg["vocab_size"], rope_base=cfg["rope_theta"], rms_eps=cfg["rms_norm_eps"],
        n_ctx_train=cfg["max_position_embeddings"], rope_scaling=cfg.get("rope_scaling"),
        key_length=cfg["head_dim"], n_expert=cfg["num_local_experts"],
        n_expert_used=cfg["num_experts_per_tok"], n_ff_exp=cfg["intermediate_size"],
        sliding_window=cfg["sliding_window"],
    )  # fmt: skip


def gguf_weights(cfg: dict[str, Any], w: Weights) -> Weights:
    """The checkpoint's values under GGUF names, as transformers' GptOss uses them: x @ gate_up_proj
    (n_embd, 2 n_ff) + bias, gate the even columns, up the odd; x @ down_proj (n_ff, n_embd)."""
    out = {"token_embd.weight": w["model.embed_tokens.weight"],
           "output_norm.weight": w["model.norm.weight"], "output.weight": w["lm_head.weight"]}
    names = {"input_layernorm.weight": "attn_norm.weight", "self_attn.sinks": "attn_sinks.weight",
             "post_attention_layernorm.weight": "post_attention_norm.weight",
             "mlp.router.weight": "ffn_gate_inp.weight", "mlp.router.bias": "ffn_gate_inp.bias",
             "mlp.experts.down_proj_bias": "ffn_down_exps.bias"}  # fmt: skip
    for i in range(cfg["num_hidden_layers"]):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        for hf, g in names.items():
            out[b + g] = w[p + hf]
        for t, g in (("q", "attn_q"), ("k", "attn_k"), ("v", "attn_v"), ("o", "attn_output")):
            out[b + g + ".weight"] = w[p + f"self_attn.{t}_proj.weight"]
            out[b + g + ".bias"] = w[p + f"self_attn.{t}_proj.bias"]
        gate_up, bias = w[p + "mlp.experts.gate_up_proj"], w[p + "mlp.experts.gate_up_proj_bias"]
        out[b + "ffn_gate_exps.weight"] = gate_up[:, :, 0::2].transpose(0, 2, 1)
        out[b + "ffn_up_exps.weight"] = gate_up[:, :, 1::2].transpose(0, 2, 1)
        out[b + "ffn_gate_exps.bias"], out[b + "ffn_up_exps.bias"] = bias[:, 0::2], bias[:, 1::2]
        out[b + "ffn_down_exps.weight"] = w[p + "mlp.experts.down_proj"].transpose(0, 2, 1)
    return {n: x.astype(np.float64) for n, x in out.items()}


def rel_err(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(np.float64(a) - b).max(axis=-1) / np.abs(b).max()


@pytest.fixture(scope="module", params=["mxfp4", "bf16"])
def converted(request: Any, tmp_path_factory: Any) -> tuple[str, dict[str, Any], Weights, Path]:
    """A checkpoint of each form and its conversion with the default --type."""
    d = tmp_path_factory.mktemp(request.param)
    cfg, w = F.tiny_gpt_oss(d / "hf", mxfp4=request.param == "mxfp4", seed=3)
    convert(d / "hf", d / "m.gguf", quiet=True)
    return request.param, cfg, w, d / "m.gguf"


def test_tensors_hold_the_checkpoint(converted: tuple[str, dict[str, Any], Weights, Path]) -> None:
    form, cfg, w, path = converted
    want = gguf_weights(cfg, w)
    got = GGUFReader(path).tensors
    assert {t.name for t in got} == set(want)
    types = {t.name: t.tensor_type.name for t in got}
    experts = {n for n in want if "_exps.weight" in n}
    # the default --type: f16; bf16 (the checkpoint's) for MXFP4 experts, as llama.cpp's auto
    float_type = "BF16" if form == "mxfp4" else "F16"
    for n, t in types.items():
        if n in experts:
            assert t == ("MXFP4" if form == "mxfp4" else "F16"), n
        else:  # matrices in the float type; norms, biases, sinks and the router F32
            matrix = want[n].ndim == 2 and n.endswith("weight") and "ffn_gate_inp" not in n
            assert t == (float_type if matrix else "F32"), n
    for t in got:  # the values exact in F32, BF16 and MXFP4; rounded to nearest in F16
        x = want[t.name].astype(np.float32)
        x = x.astype(np.float16).astype(np.float32) if t.tensor_type.name == "F16" else x
        np.testing.assert_array_equal(TC.as_f32(t), x, err_msg=t.name)
    ft = TC.field(GGUFReader(path), "general.file_type")
    assert ft == (38 if form == "mxfp4" else 1)


@pytest.mark.reference
def test_logits_match_float64_reference(
    converted: tuple[str, dict[str, Any], Weights, Path], llama_cpp: Any
) -> None:
    """llama.cpp and splitllm against the reference on the checkpoint's values. With MXFP4 experts
    both engines round activations to 8 bits for those products (test_gpt_oss's bound), which can
    flip a near tie of the router: the median error is bounded tighter than the worst."""
    form, cfg, w, path = converted
    ref = reference_logits(tiny_config(cfg), gguf_weights(cfg, w), IDS)
    theirs = TC.lcpp_logits(llama_cpp, path, IDS)
    with Model(path, n_ctx=64, n_threads=2) as m:
        ours = m.logits(IDS)
    if form == "mxfp4":
        assert np.median(rel_err(theirs, ref)) < 2e-2 and np.median(rel_err(ours, ref)) < 2e-2
        assert rel_err(ours, theirs).max() < 3e-2
    else:  # f16 weights, f16 KV cache
        assert rel_err(theirs, ref).max() < 1e-2
        assert rel_err(ours, theirs).max() < 1e-3


@pytest.mark.reference
@pytest.mark.parametrize("form", ["mxfp4", "bf16"])
def test_f32_logits_match_float64_reference(tmp_path: Path, llama_cpp: Any, form: str) -> None:
    """--type f32 (MXFP4 experts stay MXFP4): the other weights exact in both engines."""
    cfg, w = F.tiny_gpt_oss(tmp_path / "hf", mxfp4=form == "mxfp4", dtype="f32", seed=4)
    convert(tmp_path / "hf", tmp_path / "m.gguf", type="f32", quiet=True)
    ref = reference_logits(tiny_config(cfg), gguf_weights(cfg, w), IDS)
    theirs = TC.lcpp_logits(llama_cpp, tmp_path / "m.gguf", IDS)
    with Model(tmp_path / "m.gguf", n_ctx=64, n_threads=2) as m:
        ours = m.logits(IDS)
    bound = 3e-2 if form == "mxfp4" else 1e-3
    assert np.median(rel_err(theirs, ref)) < bound and np.median(rel_err(ours, ref)) < bound
    assert rel_err(ours, theirs).max() < bound
    # the sinks, the window and the experts' biases each move the logits well past the bound
    for name in ("attn_sinks", "ffn_up_exps.bias"):
        changed = {k: (v * 0 if name in k else v) for k, v in gguf_weights(cfg, w).items()}
        assert rel_err(reference_logits(tiny_config(cfg), changed, IDS), ref).max() > 5 * bound, name


def _keys(path: Path) -> dict[str, Any]:
    r = GGUFReader(path)
    return {k: f.contents() for k, f in r.fields.items() if k.startswith("gpt-oss.")}


def test_metadata(converted: tuple[str, dict[str, Any], Weights, Path]) -> None:
    """The keys and their order as llama.cpp's TextModel + GptOssModel write them."""
    _, cfg, _, path = converted
    keys = _keys(path)
    a = "gpt-oss."
    want = {a + "block_count": 3, a + "context_length": 512, a + "embedding_length": 64,
            a + "feed_forward_length": 64, a + "attention.head_count": 4, a + "attention.head_count_kv": 2,
            a + "rope.scaling.type": "yarn", a + "rope.scaling.factor": 4.0,
            a + "rope.scaling.original_context_length": 16, a + "rope.scaling.yarn_beta_fast": 32.0,
            a + "rope.scaling.yarn_beta_slow": 1.0, a + "rope.freq_base": 150000.0,
            a + "attention.layer_norm_rms_epsilon": 1e-5, a + "expert_count": 4, a + "expert_used_count": 2,
            a + "attention.key_length": 16, a + "attention.value_length": 16,
            a + "attention.sliding_window": 6, a + "expert_feed_forward_length": 64}  # fmt: skip
    assert list(keys) == list(want)
    for k, v in want.items():
        assert keys[k] == pytest.approx(v), k
    fields = list(GGUFReader(path).fields)
    assert fields.index(a + "attention.value_length") < fields.index("general.file_type")
    assert fields.index("general.file_type") < fields.index(a + "attention.sliding_window")
    r = GGUFReader(path)
    assert TC.field(r, "tokenizer.ggml.pre") == "gpt-4o" and TC.field(r, "tokenizer.ggml.model") == "gpt2"


@pytest.mark.reference
def test_tokenizer_matches_hf(converted: tuple[str, dict[str, Any], Weights, Path], llama_cpp: Any) -> None:
    from tokenizers import Tokenizer

    text = "hello World it's 12345 THE model über 東京! \n  quantize  the   block?"
    _, _, _, path = converted
    hf_dir = path.parent / "hf"
    want = Tokenizer.from_file(str(hf_dir / "tokenizer.json")).encode(text, add_special_tokens=False).ids
    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    assert llm.tokenize(text.encode(), add_bos=False, special=False) == want
    llm.close()
    with Model(path, n_ctx=64) as m:
        assert m.tokenize(text.encode(), special=False) == want


def test_packed_experts_keep_their_type(tmp_path: Path) -> None:
    """MXFP4 experts stay MXFP4 (bits moved) whatever --type; the file type is then the chosen one."""
    F.tiny_gpt_oss(tmp_path / "hf", mxfp4=True)
    for qtype, ftype in (("f32", 38), ("q8_0", 7), ("mxfp4_moe", 38)):
        out = tmp_path / f"{qtype}.gguf"
        convert(tmp_path / "hf", out, type=qtype, quiet=True)
        got = GGUFReader(out)
        assert {t.tensor_type.name for t in got.tensors if "_exps.weight" in t.name} == {"MXFP4"}
        assert TC.field(got, "general.file_type") == ftype


# -- --type mxfp4_moe against llama.cpp's quantizer ---------------------------------------------------


@pytest.fixture(scope="module")
def gpt_oss_mix_model(tmp_path_factory: Any) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("gpt-oss-mix")
    F.tiny_gpt_oss(d / "hf", mxfp4=False, dtype="f32", hidden_size=256, intermediate_size=256)
    convert(d / "hf", d / "f32.gguf", type="f32", quiet=True)
    return d / "hf", d / "f32.gguf"


@pytest.mark.reference
@pytest.mark.parametrize("qtype", ["mxfp4_moe", "q8_0", "q4_k_m", "q3_k_m"])
def test_mix_and_bytes_match_llama_quantize(
    tmp_path: Path, llama_cpp: Any, gpt_oss_mix_model: tuple[Path, Path], qtype: str
) -> None:
    TC.test_mix_and_bytes_match_llama_quantize(tmp_path, llama_cpp, gpt_oss_mix_model, qtype)


# -- bad input ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: Any) -> Path:
    d = tmp_path_factory.mktemp("bad") / "hf"
    F.tiny_gpt_oss(d, mxfp4=True)
    return d


BAD = [
    ({"layer_types": ["full_attention", "sliding_attention", "full_attention"]}, (),
     "'layer_types' .* is not llama.cpp's gpt-oss pattern"),
    ({"swiglu_limit": 10.0}, (), "'swiglu_limit' is 10.0"),
    ({}, ("sliding_window",), "'sliding_window' must be a positive integer, got None"),
    ({"num_experts_per_tok": 8}, (), "num_experts_per_tok 8 is more than num_local_experts 4"),
    ({"intermediate_size": 96}, (),
     r"gate_up_proj_bias' .* has shape \[4, 128\], config.json implies \[4, 192\]"),
]  # fmt: skip


@pytest.mark.parametrize(("over", "drop", "match"), BAD)
def test_bad_config(tmp_path: Path, base_dir: Path, over: dict[str, Any], drop: tuple[str, ...],
                    match: str) -> None:  # fmt: skip
    d = tmp_path / "hf"
    shutil.copytree(base_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg = {k: v for k, v in {**cfg, **over}.items() if k not in drop}
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConvertError, match=match):
        convert(d, tmp_path / "m.gguf", quiet=True)
    assert not list(tmp_path.glob("*.gguf"))


def test_nan_scale_is_refused(tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    d = tmp_path / "hf"
    F.tiny_gpt_oss(d, mxfp4=True, dtype="f32")  # (numpy has no bfloat16)
    tensors = load_file(str(d / "model.safetensors"))
    tensors["model.layers.1.mlp.experts.down_proj_scales"][2, 5, 1] = 255
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConvertError, match="down_proj_scales' has an MXFP4 scale of 255"):
        convert(d, tmp_path / "m.gguf", quiet=True)


@pytest.mark.reference
def test_quantize_converted_mxfp4_checkpoint(tmp_path: Path, llama_cpp: Any) -> None:
    """splitllm quantize MXFP4_MOE of the default conversion of an MXFP4 checkpoint (bf16, experts
    MXFP4): the experts copied, the rest Q8_0, byte for byte llama.cpp's quantizer's file."""
    from splitllm_convert import quantize

    F.tiny_gpt_oss(tmp_path / "hf", mxfp4=True, hidden_size=256, intermediate_size=256)
    src = tmp_path / "m.gguf"
    convert(tmp_path / "hf", src, quiet=True)
    theirs, ours = tmp_path / "theirs.gguf", tmp_path / "ours.gguf"
    TC.lcpp_quantize(llama_cpp, src, theirs, 38)
    quantize(src, ours, "MXFP4_MOE", nthreads=2, quiet=True)
    assert ours.read_bytes() == theirs.read_bytes()
    types = {t.name: t.tensor_type.name for t in GGUFReader(ours).tensors}
    assert {types[n] for n in types if "_exps.weight" in n} == {"MXFP4"}
    assert types["output.weight"] == types["blk.0.attn_q.weight"] == "Q8_0"
