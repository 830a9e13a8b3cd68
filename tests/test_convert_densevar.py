"""convert-hf on tiny random Seed-OSS, Apertus, Hunyuan dense, AFM (Arcee) and StarCoder2
checkpoints, checked against references we did not write.

- llama.cpp (llama-cpp-python) on our f32 GGUF gives the logits of a numpy float64 forward pass of
  the Hugging Face model (hf_densevar.hf_logits), and so does splitllm's engine on the same file;
  each case also shows that what it checks (the rotation's pairs, the NTK alpha, the xIELU
  parameters, the biases) moves the logits well past the bound.
- Metadata keys are the ones llama.cpp's converter classes write; tensors hold the stored weights
  (arcee's q/k rows permuted for GGML's rope only).
- What llama.cpp would run differently from transformers is refused, nothing written.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hf_densevar as H
import numpy as np
import pytest
import test_convert as TC
from splitllm import Model
from splitllm_convert import convert
from splitllm_convert.errors import ConvertError

IDS = [(7 * i + 3) % 300 for i in range(24)]
Weights = dict[str, np.ndarray]
Change = Callable[[dict[str, Any], Weights], tuple[dict[str, Any], Weights]]


def _change(over: dict[str, Any]) -> Change:
    return lambda cfg, w: ({**cfg, **over}, w)


def _scaled(part: str, by: float) -> Change:
    return lambda cfg, w: (cfg, {n: x * by if part in n else x for n, x in w.items()})


def _halves(cfg: dict[str, Any], w: Weights) -> tuple[dict[str, Any], Weights]:
    return {**cfg, "_pairs": True}, w


CASES: dict[str, list[Change]] = {
    "seed_oss": [_halves, _scaled("self_attn.k_proj.bias", 0.0)],
    "apertus": [_halves, _scaled("act_fn.beta", 0.0), _scaled("act_fn.alpha_n", 3.0)],
    "hunyuan-dense": [_halves, _change({"rope_scaling": None})],
    "arcee": [_halves],
    "starcoder2": [_halves, _scaled("layernorm.bias", 0.0), _scaled("mlp.c_fc.bias", 0.0)],
}


def _logits(cfg: dict[str, Any], w: Weights) -> np.ndarray:
    return H.hf_logits(cfg, w, IDS, halves=not cfg.get("_pairs"))


def _tol(ref: np.ndarray) -> float:
    return 2e-3 * float(np.abs(ref).max())


@pytest.mark.reference
@pytest.mark.parametrize("arch", list(CASES))
def test_logits_match_float64_reference(tmp_path: Path, arch: str) -> None:
    pytest.importorskip("llama_cpp")
    cfg, weights = H.tiny_var_hf(tmp_path / "hf", arch)
    out = tmp_path / "m.gguf"
    convert(tmp_path / "hf", out, type="f32", quiet=True)
    ref = _logits(cfg, weights)
    for change in CASES[arch]:  # each feature the case exercises matters here, well beyond the tolerance
        assert np.abs(_logits(*change(cfg, weights)) - ref).max() > 5 * _tol(ref)
    assert np.abs(TC.llama_cpp_logits(out, IDS) - ref).max() < _tol(ref)
    with Model(out, n_ctx=64, n_threads=2) as m:  # splitllm's engine on the same file
        assert np.abs(m.logits(IDS) - ref).max() < _tol(ref)


SHAPE = {"embedding_length": 64, "feed_forward_length": 96, "attention.head_count": 4,
         "attention.head_count_kv": 2, "block_count": 3}  # fmt: skip
HEAD = {"attention.key_length": 16, "attention.value_length": 16}
KEYS = {
    "seed_oss": {**SHAPE, **HEAD, "context_length": 512, "rope.freq_base": 1e4,
                 "attention.layer_norm_rms_epsilon": 1e-5},
    "apertus": {**SHAPE, "context_length": 512, "rope.freq_base": 1e4,
                "attention.layer_norm_rms_epsilon": 1e-5,
                "vocab_size": 320, "rope.dimension_count": 16},
    # NTK alpha: 1e4 x 50^(16 / 14) as the base, scaling none, 256K contexts
    "hunyuan-dense": {**SHAPE, **HEAD, "context_length": 262144, "rope.freq_base": 1e4 * 50 ** (16 / 14),
                      "attention.layer_norm_rms_epsilon": 1e-5, "rope.scaling.type": "none",
                      "rope.scaling.factor": 1.0, "rope.scaling.original_context_length": 262144},
    "arcee": {**SHAPE, "context_length": 512, "rope.freq_base": 1e4, "attention.layer_norm_rms_epsilon": 1e-5,
              "vocab_size": 320, "rope.dimension_count": 16},
    "starcoder2": {**SHAPE, "context_length": 512, "rope.freq_base": 1e4,
                   "attention.layer_norm_epsilon": 1e-5},
}  # fmt: skip


@pytest.mark.parametrize("arch", list(KEYS))
def test_metadata_and_tensors(tmp_path: Path, arch: str) -> None:
    """The {arch}.* keys (apertus: xielu.* too) are llama.cpp's; every HF tensor is written once, as
    stored (arcee's q/k rows permuted from HF's halves to GGML's pairs; apertus's xIELU parameters as
    metadata); a tied model has no output.weight."""
    cfg, weights = H.tiny_var_hf(tmp_path / "hf", arch)
    out = tmp_path / "m.gguf"
    convert(tmp_path / "hf", out, type="f32", quiet=True)
    got_keys = TC.arch_keys(out, arch, ("xielu.",))
    xielu = {k: got_keys.pop(k) for k in list(got_keys) if k.startswith("xielu.")}
    TC.assert_same_keys(got_keys, KEYS[arch])
    if arch == "apertus":  # one float per layer, in layer order
        _, raw = H.to_gguf_names(arch, weights)
        TC.assert_same_keys(xielu, {"xielu." + k: v for k, v in raw.items()})
    got = TC.tensors(out)
    assert ("output.weight" in got) is not cfg.get("tie_word_embeddings", False)
    assert (got.pop("rope_freqs.weight", None) is not None) is (arch == "apertus")  # (its Llama 3 scaling)
    names = H.block_names(arch)
    hf_of = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
             "output_norm.bias": "model.norm.bias", "output.weight": "lm_head.weight"}  # fmt: skip
    for name in weights:
        if name.startswith("model.layers.") and ".act_fn." not in name:
            _, _, bid, rest = name.split(".", 3)
            module, kind = rest.rsplit(".", 1)
            hf_of[f"blk.{bid}.{names[module]}.{kind}"] = name
    want = sorted(n for n in weights if ".act_fn." not in n)
    assert sorted(hf_of[n] for n in got) == want  # every HF tensor, once
    hd = 16
    for name in got:
        want_x = weights[hf_of[name]]
        if arch == "arcee" and name.endswith(("attn_q.weight", "attn_k.weight")):  # halves -> pairs
            want_x = want_x.reshape(-1, 2, hd // 2, want_x.shape[1]).swapaxes(1, 2).reshape(want_x.shape)
        np.testing.assert_array_equal(TC.as_f32(got[name]), want_x, err_msg=name)


@pytest.fixture(scope="module")
def base_dirs(tmp_path_factory: Any) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    out = {}
    for arch in KEYS:
        out[arch] = root / arch
        H.tiny_var_hf(out[arch], arch)
    return out


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("seed_oss", {"attention_out_bias": True}, "'attention_out_bias' is true: llama.cpp's seed_oss has no"),
    ("seed_oss", {"partial_rotary_factor": 0.5},
     "'partial_rotary_factor' is 0.5: llama.cpp's seed_oss rotates"),
    ("apertus", {"hidden_act": "silu"}, "'hidden_act' is 'silu': llama.cpp's apertus runs xIELU"),
    ("hunyuan-dense", {"num_experts": 8}, "'num_experts' is 8: a Hunyuan MoE model"),
    ("hunyuan-dense", {"attention_bias": True}, "'attention_bias' is true"),
    ("hunyuan-dense", {"max_position_embeddings": 4096},
     "NTK-alpha rope scaling with rope_theta 10000.0 and max_position_embeddings 4096: llama.cpp's "),
    ("hunyuan-dense", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope scaling 'linear'"),
    ("arcee", {"attention_bias": True}, "'attention_bias' is true: llama.cpp's arcee"),
    ("arcee", {"hidden_act": "silu"}, "'hidden_act' is 'silu': llama.cpp's arcee runs relu2"),
    ("starcoder2", {"use_bias": False}, "'use_bias' is false: llama.cpp's starcoder2 requires every bias"),
    ("starcoder2", {"hidden_act": "relu"}, "'hidden_act' is 'relu'"),
]  # fmt: skip


@pytest.mark.parametrize(("arch", "over", "match"), BAD)
def test_bad_config(tmp_path: Path, base_dirs: dict[str, Path], arch: str, over: dict[str, Any],
                    match: str) -> None:  # fmt: skip
    TC.refused_config(tmp_path, base_dirs[arch], over, match, type="f32")


def test_apertus_missing_xielu(tmp_path: Path, base_dirs: dict[str, Path]) -> None:
    """A layer's xIELU parameter missing: refused, named (llama.cpp's converter would write no key)."""
    d = tmp_path / "hf"
    shutil.copytree(base_dirs["apertus"], d)
    cfg = json.loads((d / "config.json").read_text())
    w = H.var_weights(cfg, "apertus")
    del w["model.layers.1.mlp.act_fn.eps"]
    for f in d.glob("*.safetensors"):
        f.unlink()
    H.F.save_weights(d, w)
    with pytest.raises(ConvertError, match=r"'model.layers.1.mlp.act_fn.eps' \(xielu.eps\) is missing"):
        convert(d, tmp_path / "m.gguf", type="f32", quiet=True)
