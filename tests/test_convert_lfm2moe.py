"""convert-hf on tiny random Lfm2MoeForCausalLM checkpoints (the weights of tests/tiny_lfm2.py's
lfm2moe under transformers' names): the file holds the stored weights under llama.cpp's names with
LFM2MoeModel's metadata (expert_feed_forward_length, leading_dense_block_count, sigmoid gating);
splitllm's engine and llama.cpp give the float64 reference's logits on it; what llama.cpp would run
otherwise is refused."""

from __future__ import annotations

import json
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
from test_convert_lfm2 import LAYER_NAMES, TOP_NAMES
from tiny_lfm2 import Lfm2Config, lfm2_reference_logits, make_lfm2_weights

IDS = [(7 * i + 3) % 300 for i in range(24)]
MOE_NAMES = {
    "ffn_gate_inp.weight": "feed_forward.gate.weight",
    "exp_probs_b.bias": "feed_forward.expert_bias",
}
EXPERTS = {"ffn_gate_exps.weight": "w1", "ffn_up_exps.weight": "w3", "ffn_down_exps.weight": "w2"}
CFG = Lfm2Config(
    arch="lfm2moe",
    layer_types=("conv", "full_attention", "conv", "conv"),
    n_dense=1,
    n_expert=4,
    n_expert_used=2,
    n_ff_exp=32,
    seed=71,
)


def hf_checkpoint(d: Path, cfg: Lfm2Config, *, dtype: str = "f32", **over: Any) -> dict[str, np.ndarray]:
    """An Lfm2MoeForCausalLM directory (transformers' Lfm2MoeConfig keys); returns the stored weights
    under their GGUF names (float64 of the stored values, as the reference takes)."""
    d.mkdir(parents=True, exist_ok=True)
    n_vocab = F.write_bpe_tokenizer(d, vocab_size=cfg.n_vocab)
    hf_cfg = {
        "architectures": ["Lfm2MoeForCausalLM"],
        "model_type": "lfm2_moe",
        "vocab_size": n_vocab,
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.n_ff,
        "moe_intermediate_size": cfg.n_ff_exp,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_head_kv,
        "num_experts": cfg.n_expert,
        "num_experts_per_tok": cfg.n_expert_used,
        "num_dense_layers": cfg.n_dense,
        "norm_topk_prob": True,
        "use_expert_bias": True,
        "routed_scaling_factor": 1.0,
        "layer_types": list(cfg.layer_types),
        "conv_L_cache": cfg.l_cache,
        "conv_bias": False,
        "norm_eps": cfg.rms_eps,
        "rope_theta": cfg.rope_base,
        "max_position_embeddings": cfg.n_ctx_train,
        "tie_embedding": cfg.tied_output,
        "torch_dtype": "float32",
    }
    hf_cfg.update(over)
    (d / "config.json").write_text(json.dumps(hf_cfg))
    held = make_lfm2_weights(cfg).weights
    hf, back = {}, {}
    for name, x in held.items():
        x = (x[:, None, :] if name.endswith("shortconv.conv.weight") else x).astype(np.float32)
        if not name.startswith("blk."):
            hf[TOP_NAMES[name]], back[TOP_NAMES[name]] = x, name
            continue
        _, bid, rest = name.split(".", 2)
        p = f"model.layers.{bid}."
        if rest in EXPERTS:  # (one tensor per expert)
            for e in range(cfg.n_expert):
                hf[f"{p}feed_forward.experts.{e}.{EXPERTS[rest]}.weight"] = x[e]
            continue
        hf_name = p + (
            MOE_NAMES[rest] if rest in MOE_NAMES else LAYER_NAMES[rest.removesuffix(".weight")] + ".weight"
        )
        hf[hf_name], back[hf_name] = x, name
    stored = F.save_weights(d, hf, dtype=dtype)
    out = {back[n]: x.reshape(held[back[n]].shape).astype(np.float64) for n, x in stored.items() if n in back}
    for name in held:
        if name.split(".", 2)[-1] in EXPERTS:
            _, bid, rest = name.split(".", 2)
            names = [
                f"model.layers.{bid}.feed_forward.experts.{e}.{EXPERTS[rest]}.weight"
                for e in range(cfg.n_expert)
            ]
            out[name] = np.stack([stored[n] for n in names]).astype(np.float64)
    return out


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_converted_file_runs_as_the_reference(tmp_path: Path, dtype: str) -> None:
    held = hf_checkpoint(tmp_path / "hf", CFG, dtype=dtype)
    out = tmp_path / "m.gguf"
    convert(tmp_path / "hf", out, type="f32", quiet=True)
    r = GGUFReader(out)
    keys = {k.removeprefix("lfm2moe."): f.contents() for k, f in r.fields.items() if k.startswith("lfm2moe.")}
    want = {
        "expert_count": 4,
        "expert_used_count": 2,
        "expert_feed_forward_length": 32,
        "leading_dense_block_count": 1,
        "expert_gating_func": 2,
        "feed_forward_length": CFG.n_ff,
        "shortconv.l_cache": CFG.l_cache,
        "attention.head_count_kv": [0, CFG.n_head_kv, 0, 0],
    }
    assert {k: keys[k] for k in want} == want
    got = {t.name: TC.as_f32(t) for t in r.tensors}
    assert sorted(got) == sorted(held)
    for name, x in held.items():
        np.testing.assert_array_equal(got[name], x.astype(np.float32), err_msg=name)
    ref = lfm2_reference_logits(CFG, held, IDS)
    with Model(str(out), n_ctx=64, n_threads=2) as m:
        assert np.abs(m.logits(IDS) - ref).max() < 2e-4 * np.abs(ref).max()
    theirs = TC.lcpp_logits(pytest.importorskip("llama_cpp"), out, IDS)
    assert np.abs(theirs - ref).max() < 1e-3 * np.abs(ref).max()


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"norm_topk_prob": False}, "'norm_topk_prob' is False: llama.cpp's lfm2moe renormalizes"),
        ({"use_expert_bias": False}, "'use_expert_bias' is False"),
        ({"routed_scaling_factor": 2.5}, "'routed_scaling_factor' is 2.5"),
        ({"num_dense_layers": 2}, "tensor 'model.layers.1.feed_forward.expert_bias' .* is not part of"),
    ],
)
def test_what_llama_cpp_runs_otherwise_is_refused(tmp_path: Path, over: dict[str, Any], match: str) -> None:
    hf_checkpoint(tmp_path / "hf", CFG, **over)
    with pytest.raises(ConvertError, match=match):
        convert(tmp_path / "hf", tmp_path / "m.gguf", type="f32", quiet=True)
    assert not (tmp_path / "m.gguf").exists()
