"""convert-hf on a tiny random DeciLMForCausalLM (Nemotron NAS) checkpoint with every kind of
block_config, checked against references we did not write: the converted file holds the weights
of tests/tiny_deci.py's model (HF's q / k rows permuted back per layer), llama.cpp and splitllm run
it as the float64 DeciLM reference, and its keys are those llama.cpp's DeciModel writes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import test_convert as TC
from gguf import GGUFReader
from hf_fixtures import save_weights, undo_rope_permute, write_bpe_tokenizer
from lcpp import llama_cpp_logits
from splitllm import Model
from splitllm_convert import convert
from splitllm_convert.errors import ConvertError
from tiny_deci import LLAMA3, DeciConfig, make_weights, reference_logits

IDS = [(7 * i + 3) % 300 for i in range(20)]
# (n_heads_in_group or "linear" / None, ffn_mult or None) per layer and the shapes DeciModel derives
BLOCKS = [(2, 1.5), ("linear", 7.5), (None, 3.0), (1, 1.5), (None, None), (4, 1.5)]
CFG = DeciConfig(layers=((4, 2, 256), (4, 0, 512), (0, 0, 256), (4, 4, 256), (0, 0, 0), (4, 1, 256)), seed=11)
_HF = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
       "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
       "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
       "ffn_down": "mlp.down_proj"}  # fmt: skip


def hf_config(n_vocab: int, blocks: list[tuple[Any, Any]] = BLOCKS) -> dict[str, Any]:
    def block(g: Any, mult: Any) -> dict[str, Any]:
        linear = g == "linear"
        return {"attention": {"n_heads_in_group": None if linear else g, "replace_with_linear": linear,
                              "no_op": g is None},
                "ffn": {"ffn_mult": mult, "replace_with_linear": False, "no_op": mult is None}}  # fmt: skip

    return {"architectures": ["DeciLMForCausalLM"], "model_type": "nemotron-nas", "hidden_size": CFG.n_embd,
            "num_attention_heads": CFG.n_head, "num_hidden_layers": len(blocks), "vocab_size": n_vocab,
            "max_position_embeddings": CFG.n_ctx_train, "rms_norm_eps": CFG.rms_eps,
            "rope_theta": CFG.rope_base, "rope_scaling": dict(LLAMA3), "tie_word_embeddings": False,
            "block_configs": [block(g, m) for g, m in blocks]}  # fmt: skip


def hf_weights(cfg: DeciConfig, w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The GGUF-named weights under transformers' DeciLM names, q / k rows in HF's order."""
    out = {"model.embed_tokens.weight": w["token_embd.weight"], "model.norm.weight": w["output_norm.weight"],
           "lm_head.weight": w["output.weight"]}  # fmt: skip
    for name, x in w.items():
        parts = name.split(".")
        if parts[0] != "blk":
            continue
        nh, nkv, _ = cfg.layers[int(parts[1])]
        hf = "self_attn.linear_attn" if parts[2] == "attn_output" and nkv == 0 else _HF[parts[2]]
        if parts[2] in ("attn_q", "attn_k"):
            x = undo_rope_permute(x, nh if parts[2] == "attn_q" else nkv)
        out[f"model.layers.{parts[1]}.{hf}.{parts[3]}"] = x
    return out


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[Path, DeciConfig, dict[str, np.ndarray]]:
    d = tmp_path_factory.mktemp("deci-hf")
    n_vocab = write_bpe_tokenizer(d, vocab_size=300)
    cfg = dataclasses.replace(CFG, n_vocab=n_vocab)
    (d / "config.json").write_text(json.dumps(hf_config(n_vocab)))
    w = {n: x.astype(np.float32).astype(np.float64) for n, x in make_weights(cfg).items()}
    save_weights(d, hf_weights(cfg, w))
    out = d / "deci.gguf"
    convert(d, out, type="f32", quiet=True)
    return out, cfg, w


def test_keys_and_tensors_as_deci_model_writes_them(converted):
    path, cfg, w = converted
    r = GGUFReader(path)
    f = r.fields
    a = "deci."

    def val(key: str) -> Any:
        return f[key].contents()

    assert val(a + "attention.head_count") == [h for h, _, _ in cfg.layers]
    assert val(a + "attention.head_count_kv") == [kv for _, kv, _ in cfg.layers]
    assert val(a + "feed_forward_length") == [ff for _, _, ff in cfg.layers]
    assert (val(a + "attention.key_length"), val(a + "attention.value_length")) == (16, 16)
    assert (val(a + "rope.dimension_count"), val(a + "vocab_size"), val(a + "block_count")) == (
        16,
        cfg.n_vocab,
        6,
    )
    tensors = {
        t.name: np.asarray(t.data, np.float64).reshape(list(reversed(t.shape.tolist()))) for t in r.tensors
    }
    assert set(tensors) == {*w, "rope_freqs.weight"}
    for name, x in w.items():
        np.testing.assert_array_equal(tensors[name], x, err_msg=name)


def test_converted_file_runs_as_the_reference(converted):
    """Ours within 1e-4 of the float64 DeciLM (measured 1.1e-5), llama.cpp within 1e-3 (2.6e-4)."""
    path, cfg, w = converted
    ref = reference_logits(cfg, w, IDS)
    with Model(str(path), n_ctx=64, n_threads=2) as m:
        ours = m.logits(IDS)
    theirs = llama_cpp_logits(path, IDS)
    scale = np.abs(ref).max()
    assert np.abs(ours - ref).max() / scale < 1e-4
    assert np.abs(theirs - ref).max() / scale < 1e-3


@pytest.mark.parametrize("qtype", ["q8_0", "q4_k_m"])
def test_types_and_bytes_match_llama_quantize(converted, tmp_path, qtype):
    """--type q8_0 / q4_k_m: the tensors, types and bytes llama.cpp's quantizer writes from our f32 file."""
    path, _, _ = converted
    ours = tmp_path / "ours.gguf"
    convert(path.parent, ours, type=qtype, quiet=True, n_threads=2)
    TC.same_as_llama_quantize(path.parent, ours, tmp_path, qtype)


THIRDS = {"attention": {"n_heads_in_group": 3}, "ffn": {"ffn_mult": 1.5}}


def _linear_ffn(cfg: dict[str, Any]) -> dict[str, Any]:
    cfg["block_configs"][0]["ffn"]["replace_with_linear"] = True
    return cfg


def _window(cfg: dict[str, Any]) -> dict[str, Any]:
    cfg["block_configs"][3]["attention"]["window_length"] = 32
    return cfg


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda c: {**c, "block_configs": [THIRDS] * 6}, "n_heads_in_group = 3 must divide 4"),
        (lambda c: {**c, "block_configs": c["block_configs"][:5]}, "one block per layer"),
        (lambda c: {k: v for k, v in c.items() if k != "block_configs"}, "num_key_value_heads_per_layer"),
        (_linear_ffn, "a linear or sparse feed-forward"),
        (_window, r"block_configs\[3\].attention.window_length = 32"),
        (lambda c: {**c, "rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "llama3 scaling only"),
    ],
)  # fmt: skip
def test_bad_checkpoints_are_refused(tmp_path, change, match):
    """What llama.cpp's deci would not run as transformers does: refused, nothing written."""
    (tmp_path / "config.json").write_text(json.dumps(change(hf_config(300))))
    with pytest.raises(ConvertError, match=match):
        convert(tmp_path, tmp_path / "m.gguf", type="f32", quiet=True)
    assert not (tmp_path / "m.gguf").exists()
