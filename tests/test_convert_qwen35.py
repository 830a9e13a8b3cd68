"""convert-hf on tiny random Qwen3.5 checkpoints (tests/tiny_qwen35.py's weights under transformers'
names, as Qwen3_5ForCausalLM and as Qwen3_5ForConditionalGeneration's text part saves them):
splitllm's engine and llama.cpp give the float64 reference's logits, computed on the checkpoint's
own weights, on the converted file; the metadata is Qwen3_5TextModel's."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import hf_fixtures as F
import numpy as np
import pytest
import test_convert as TC
from gguf import GGUFReader
from splitllm import Model
from splitllm_convert import convert
from splitllm_convert.errors import ConvertError
from tiny_qwen35 import Qwen35Config, make_hf_weights, qwen35_reference_logits

IDS = [(7 * i + 3) % 300 for i in range(24)]
CFG = Qwen35Config(seed=71)
WIDE = replace(Qwen35Config(seed=72), n_layer=4, full_attention_interval=4, k_heads=1, tied_output=True)


def hf_checkpoint(
    d: Path, cfg: Qwen35Config, *, multimodal: bool = False, dtype: str = "f32", fused: bool = False
) -> dict:
    """A Qwen3.5 directory: config.json as Qwen3.5 writes it (the text settings in text_config for
    the multimodal class, a vision tower's tensors and an MTP block beside), a byte-level BPE
    tokenizer, the weights (a MoE's experts one tensor each, or ``fused`` as transformers saves them).
    Returns the stored weights (float64) under transformers' names, the experts one tensor each."""
    d.mkdir(parents=True, exist_ok=True)
    pre = "qwen2" if cfg.qwen3next else "qwen35"
    assert F.write_bpe_tokenizer(d, pre=pre, vocab_size=cfg.n_vocab) == cfg.n_vocab
    types = [("linear_attention" if cfg.is_linear(i) else "full_attention") for i in range(cfg.n_layer)]
    text = {
        "model_type": "qwen3_5_text", "vocab_size": cfg.n_vocab, "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.n_ff, "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_head_kv, "head_dim": cfg.head_dim, "rms_norm_eps": cfg.rms_eps,
        "max_position_embeddings": cfg.n_ctx_train, "full_attention_interval": cfg.full_attention_interval,
        "layer_types": types,
        "linear_conv_kernel_dim": cfg.conv_kernel, "linear_key_head_dim": cfg.dn_head_dim,
        "linear_value_head_dim": cfg.dn_head_dim, "linear_num_key_heads": cfg.k_heads,
        "linear_num_value_heads": cfg.v_heads, "tie_word_embeddings": cfg.tied_output,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_base, "mrope_interleaved": True,
                            "mrope_section": list(cfg.mrope_section),
                            "partial_rotary_factor": cfg.partial_rotary},
        "mtp_num_hidden_layers": 1, "torch_dtype": "float32", "bos_token_id": 1, "eos_token_id": 2,
    }  # fmt: skip
    if cfg.qwen3next:  # (Qwen3NextConfig: the rotation's settings at the top, no MTP count)
        del text["rope_parameters"], text["mtp_num_hidden_layers"]
        text.update(
            model_type="qwen3_next", rope_theta=cfg.rope_base, partial_rotary_factor=cfg.partial_rotary
        )
        text.update(decoder_sparse_step=1, mlp_only_layers=[])
    if cfg.n_expert:
        text.update(num_experts=cfg.n_expert, num_experts_per_tok=cfg.n_expert_used, norm_topk_prob=True)
        text.update(moe_intermediate_size=cfg.n_ff_exp, shared_expert_intermediate_size=cfg.n_ff_shexp)
        del text["intermediate_size"]
    hf = {k: v.astype(np.float32) for k, v in make_hf_weights(cfg).items()}
    if fused:
        for i in range(cfg.n_layer):
            p = f"model.layers.{i}.mlp.experts."
            ex = [
                {t: hf.pop(p + f"{x}.{t}_proj.weight") for t in ("gate", "up", "down")}
                for x in range(cfg.n_expert)
            ]
            hf[p + "gate_up_proj"] = np.stack([np.concatenate([e["gate"], e["up"]]) for e in ex])
            hf[p + "down_proj"] = np.stack([e["down"] for e in ex])
    hf["mtp.fc.weight"] = np.zeros((cfg.n_embd, 2 * cfg.n_embd), np.float32)  # (left out)
    moe = "Moe" if cfg.n_expert else ""
    if multimodal:
        top = {"architectures": [f"Qwen3_5{moe}ForConditionalGeneration"], "model_type": "qwen3_5",
               "text_config": text, "vision_config": {"depth": 1},
               "tie_word_embeddings": cfg.tied_output}  # fmt: skip
        hf = {("model.language_model." + k.removeprefix("model.") if k.startswith("model.") else k): v
              for k, v in hf.items()}  # fmt: skip
        hf["model.visual.patch_embed.proj.weight"] = np.zeros((8, 4), np.float32)
    else:
        top = {
            "architectures": ["Qwen3NextForCausalLM" if cfg.qwen3next else f"Qwen3_5{moe}ForCausalLM"],
            **text,
        }
    (d / "config.json").write_text(json.dumps(top))
    stored = {
        k.replace("model.language_model.", "model."): v for k, v in F.save_weights(d, hf, dtype=dtype).items()
    }
    for i in range(cfg.n_layer if fused else 0):  # (back to one tensor per expert, for the reference)
        p = f"model.layers.{i}.mlp.experts."
        gate_up, down = stored.pop(p + "gate_up_proj"), stored.pop(p + "down_proj")
        for x in range(cfg.n_expert):
            stored[p + f"{x}.gate_proj.weight"], stored[p + f"{x}.up_proj.weight"] = np.split(gate_up[x], 2)
            stored[p + f"{x}.down_proj.weight"] = down[x]
    return {k: v.astype(np.float64) for k, v in stored.items()}


def runs_as_reference(out: Path, ref: np.ndarray) -> None:
    """Ours within 1e-4 of the reference's logits on the converted file, llama.cpp within 1e-3."""
    with Model(str(out), n_ctx=64, n_threads=2) as m:
        ours = m.logits(IDS)
    assert (np.linalg.norm(ours - ref, axis=-1) / np.linalg.norm(ref, axis=-1)).max() < 1e-4
    theirs = TC.lcpp_logits(pytest.importorskip("llama_cpp"), out, IDS)
    assert (np.linalg.norm(theirs - ref, axis=-1) / np.linalg.norm(ref, axis=-1)).max() < 1e-3


@pytest.mark.parametrize(
    ("cfg", "multimodal", "dtype"),
    [(CFG, False, "f32"), (WIDE, True, "bf16")],
    ids=["causal-lm-f32", "conditional-generation-tied-bf16"],
)
def test_converted_file_runs_as_the_reference(
    tmp_path: Path, cfg: Qwen35Config, multimodal: bool, dtype: str
):
    held = hf_checkpoint(tmp_path / "hf", cfg, multimodal=multimodal, dtype=dtype)
    out = tmp_path / "m.gguf"
    convert(tmp_path / "hf", out, type="f32", quiet=True)
    r = GGUFReader(out)
    keys = {k.removeprefix("qwen35."): f.contents() for k, f in r.fields.items() if k.startswith("qwen35.")}
    assert keys["ssm.conv_kernel"] == cfg.conv_kernel and keys["ssm.state_size"] == cfg.dn_head_dim
    assert (keys["ssm.group_count"], keys["ssm.time_step_rank"]) == (cfg.k_heads, cfg.v_heads)
    assert keys["ssm.inner_size"] == cfg.v_heads * cfg.dn_head_dim
    assert keys["full_attention_interval"] == cfg.full_attention_interval
    assert keys["rope.dimension_count"] == cfg.n_rot
    assert keys["rope.dimension_sections"] == [*cfg.mrope_section, 0]
    assert r.fields["tokenizer.ggml.pre"].contents() == "qwen35"  # (Qwen3.5's split, by its structure)
    names = {t.name for t in r.tensors}
    assert not any("mtp" in n or "visual" in n for n in names)
    assert TC.as_f32(next(t for t in r.tensors if t.name == "blk.0.ssm_conv1d.weight")).shape == (
        cfg.conv_dim,
        cfg.conv_kernel,
    )
    ref = qwen35_reference_logits(cfg, held, IDS)
    runs_as_reference(out, ref)


def test_quantized_types(tmp_path: Path):
    """q8_0: the convolution kernels, norms and delta-net vectors stay F32; f16 the same."""
    hf_checkpoint(tmp_path / "hf", replace(CFG, n_embd=256, n_ff=512))
    for qtype in ("q8_0", "f16"):
        out = tmp_path / f"{qtype}.gguf"
        convert(tmp_path / "hf", out, type=qtype, quiet=True, n_threads=2)
        got = TC.tensors(out)
        f32 = {n for n, t in got.items() if t.tensor_type.name == "F32"}
        assert f32 == {
            n for n in got if n.endswith(("norm.weight", "ssm_conv1d.weight", "ssm_dt.bias", "ssm_a"))
        }
        with Model(str(out), n_ctx=64, n_threads=2) as m:
            assert np.isfinite(m.logits(IDS[:4])).all()


def refused(tmp_path: Path, cfg: Qwen35Config, cases: list[tuple[dict, str]]) -> None:
    """Each change of cfg's config.json refused by convert-hf with a message matching its pattern."""
    d = tmp_path / "hf"
    hf_checkpoint(d, cfg)
    written = json.loads((d / "config.json").read_text())
    for change, match in cases:
        (d / "config.json").write_text(json.dumps({**written, **change}))
        with pytest.raises(ConvertError, match=match):
            convert(d, tmp_path / "x.gguf", type="f32", quiet=True)


def test_bad_checkpoints_are_refused(tmp_path: Path):
    refused(tmp_path, CFG, [({"linear_value_head_dim": 8}, "linear_value_head_dim"),
                            ({"layer_types": ["full_attention"] * CFG.n_layer}, "layer_types"),
                            ({"num_experts": 4}, "mixture of experts"),
                            ({"attn_output_gate": False}, "attn_output_gate")])  # fmt: skip


@pytest.mark.parametrize(
    ("fused", "multimodal"), [(False, False), (True, True)], ids=["per-expert", "fused-multimodal"]
)
def test_moe_converted_file_runs_as_the_reference(tmp_path: Path, fused: bool, multimodal: bool):
    """Qwen3.5-MoE: the experts stacked (from one tensor each, or split from transformers' fused
    gate_up_proj), the shared expert and its gate; ours and llama.cpp's logits on the file against
    the float64 reference on the checkpoint's weights."""
    cfg = replace(CFG, n_expert=4)
    held = hf_checkpoint(tmp_path / "hf", cfg, multimodal=multimodal, fused=fused)
    out = tmp_path / "m.gguf"
    convert(tmp_path / "hf", out, type="f32", quiet=True)
    r = GGUFReader(out)
    keys = {
        k.removeprefix("qwen35moe."): f.contents() for k, f in r.fields.items() if k.startswith("qwen35moe.")
    }
    assert (keys["expert_count"], keys["expert_used_count"]) == (4, cfg.n_expert_used)
    assert (keys["expert_feed_forward_length"], keys["expert_shared_feed_forward_length"]) == (32, 64)
    ref = qwen35_reference_logits(cfg, held, IDS)
    runs_as_reference(out, ref)


@pytest.mark.parametrize("qtype", ["q8_0", "q4_k_m"])
@pytest.mark.parametrize(
    "kind",
    [dict(n_expert=0), dict(n_expert=4), dict(n_expert=4, qwen3next=True)],
    ids=["dense", "moe", "qwen3next"],
)
def test_types_and_bytes_match_llama_quantize(tmp_path: Path, qtype: str, kind: dict) -> None:
    """Our quantized file (convert-hf, and splitllm quantize of our f32 file) against llama.cpp's
    quantizer on our f32 file: the same types, shapes and bytes for every tensor (qwen3next: its
    attn_qkv / attn_gate split from in_proj_qkvz and its ssm_ba too)."""
    from splitllm_convert.mix import FILE_TYPES
    from splitllm_convert.requantize import quantize

    llama_cpp = pytest.importorskip("llama_cpp")
    cfg = replace(CFG, n_embd=256, n_ff=512, head_dim=64, dn_head_dim=64, n_ff_exp=256, **kind)
    hf = tmp_path / "hf"
    hf_checkpoint(hf, cfg)
    ours, f32, ref = tmp_path / "ours.gguf", tmp_path / "f32.gguf", tmp_path / "ref.gguf"
    convert(hf, ours, type=qtype, quiet=True, n_threads=2)
    convert(hf, f32, type="f32", quiet=True)
    TC.lcpp_quantize(llama_cpp, f32, ref, int(FILE_TYPES[qtype].ftype))
    want = TC.tensors(ref)
    requantized = tmp_path / "requantized.gguf"
    quantize(f32, requantized, qtype.upper(), nthreads=2)
    for got in (TC.tensors(ours), TC.tensors(requantized)):
        assert sorted(got) == sorted(want)
        for name, t in got.items():
            assert (t.tensor_type, list(t.shape)) == (want[name].tensor_type, list(want[name].shape)), name
            assert np.array_equal(np.asarray(t.data), np.asarray(want[name].data)), name


def test_qwen35_split_tokenizes_as_llama_cpp(tmp_path: Path):
    """The converted tokenizer (pre qwen35: combining marks stay in words) splits text as llama.cpp's
    tokenizer does on the same file."""
    hf_checkpoint(tmp_path / "hf", CFG)
    out = tmp_path / "m.gguf"
    convert(tmp_path / "hf", out, type="f32", quiet=True)
    llama_cpp = pytest.importorskip("llama_cpp")
    text = "Cafe\u0301 na\u0308ive 12345 don't\tWE'LL  go\n\nx\u0300y!! \u0915\u093f\u0924\u093e\u092c"
    llm = llama_cpp.Llama(str(out), n_ctx=64, verbose=False, vocab_only=True)
    try:
        want = llm.tokenize(text.encode(), add_bos=False, special=False)
    finally:
        llm.close()
    with Model(str(out), n_ctx=64, n_threads=2) as m:
        assert m.tokenize(text, add_bos=False) == want
