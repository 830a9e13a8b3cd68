"""convert-hf on tiny random MambaForCausalLM, FalconMambaForCausalLM and Mamba2ForCausalLM
checkpoints (tests/tiny_mamba.py's weights under transformers' names, A as A_log, the Conv1d kernels
(channels, 1, d_conv)): the file holds llama.cpp's names and MambaModel's / Mamba2Model's metadata;
splitllm's engine and llama.cpp give the float64 reference's logits on it; q8_0 has the types and
bytes of llama.cpp's quantizer on our f32 file; what llama.cpp would not run is refused."""

from __future__ import annotations

import json
from dataclasses import replace
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
from test_mamba import CASES
from tiny_mamba import MambaConfig, make_weights_v1, mamba_reference_logits
from tiny_mamba2 import hf_weights, make_weights

IDS = [(7 * i + 3) % 300 for i in range(20)]
NAMES = {"attn_norm.weight": "norm.weight", "token_embd.weight": "backbone.embeddings.weight",
         "output_norm.weight": "backbone.norm_f.weight", "output.weight": "lm_head.weight"}  # fmt: skip
# Mamba-1's mixer: GGUF name (after "blk.N.") -> transformers' (after "backbone.layers.N.mixer."), as is
MIXER1 = {"ssm_in.weight": "in_proj.weight", "ssm_conv1d.bias": "conv1d.bias",
          "ssm_x.weight": "x_proj.weight", "ssm_dt.weight": "dt_proj.weight", "ssm_dt.bias": "dt_proj.bias",
          "ssm_d": "D", "ssm_out.weight": "out_proj.weight"}  # fmt: skip


def hf_checkpoint(d: Path, cfg: MambaConfig, **over: Any) -> dict[str, np.ndarray]:
    """A checkpoint directory holding cfg's weights; returns them as the converter should write them."""
    d.mkdir(parents=True, exist_ok=True)
    assert F.write_bpe_tokenizer(d, vocab_size=cfg.n_vocab) == cfg.n_vocab
    common = {"hidden_size": cfg.n_embd, "num_hidden_layers": cfg.n_layer, "vocab_size": cfg.n_vocab,
              "state_size": cfg.d_state, "conv_kernel": cfg.d_conv, "layer_norm_epsilon": cfg.rms_eps,
              "use_bias": False, "use_conv_bias": True, "tie_word_embeddings": cfg.tied_output,
              "torch_dtype": "float32", "bos_token_id": 0, "eos_token_id": 0}  # fmt: skip
    if cfg.version == 2:
        held = make_weights(cfg.hybrid())
        hf = hf_weights(held, NAMES, "backbone.layers", "mixer.")
        hf_cfg = {"architectures": ["Mamba2ForCausalLM"], "model_type": "mamba2", "expand": 2,
                  "head_dim": cfg.d_inner // cfg.ssm_heads, "num_heads": cfg.ssm_heads,
                  "n_groups": cfg.n_group, "pad_vocab_size_multiple": 16, **common}  # fmt: skip
    else:
        held = make_weights_v1(cfg)
        hf = {NAMES[n]: x for n, x in held.items() if n in NAMES}
        for n, x in held.items():
            if n.startswith("blk."):
                _, bid, rest = n.split(".", 2)
                p = f"backbone.layers.{bid}."
                if rest in NAMES:
                    hf[p + NAMES[rest]] = x
                elif rest == "ssm_conv1d.weight":
                    hf[p + "mixer.conv1d.weight"] = x[:, None, :]
                elif rest == "ssm_a":
                    hf[p + "mixer.A_log"] = np.log(-x)
                else:
                    hf[p + "mixer." + MIXER1[rest]] = x
        falcon = cfg.dt_b_c_rms
        hf_cfg = {"architectures": ["FalconMambaForCausalLM" if falcon else "MambaForCausalLM"],
                  "model_type": "falcon_mamba" if falcon else "mamba", "intermediate_size": cfg.d_inner,
                  "time_step_rank": cfg.dt_rank, "mixer_rms_eps": cfg.rms_eps, **common}  # fmt: skip
    if cfg.tied_output:  # (transformers saves the tied lm_head too)
        hf["lm_head.weight"] = held["token_embd.weight"]
    (d / "config.json").write_text(json.dumps({**hf_cfg, **over}))
    F.save_weights(d, {n: x.astype(np.float32) for n, x in hf.items()})
    return {n: x.astype(np.float32).astype(np.float64) for n, x in held.items()}


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float((np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)).max())


@pytest.mark.parametrize("name", list(CASES))
def test_converted_file_runs_as_the_reference(tmp_path: Path, name: str) -> None:
    """The tensors as held, MambaModel's / Mamba2Model's keys; ours and llama.cpp on the file within
    3e-5 and 1e-4 of the float64 reference (measured ours 2.7e-6 / 2.1e-6 / 1.1e-6 for mamba /
    falcon-mamba / mamba2, llama.cpp 2.4e-6 / 8.0e-7 / 1.0e-6)."""
    cfg = CASES[name]
    want = hf_checkpoint(tmp_path / "hf", cfg)
    out = tmp_path / "m.gguf"
    convert(tmp_path / "hf", out, type="f32", quiet=True)
    r = GGUFReader(out)
    a = cfg.arch + "."
    keys = {k.removeprefix(a): f.contents() for k, f in r.fields.items() if k.startswith(a)}
    head = keys["attention.head_count"]
    assert (keys["context_length"], head, keys["feed_forward_length"]) == (2**20, 0, 0)
    assert (keys["ssm.inner_size"], keys["ssm.conv_kernel"], keys["ssm.state_size"]) == (
        cfg.d_inner,
        cfg.d_conv,
        cfg.d_state,
    )
    assert keys["ssm.time_step_rank"] == (cfg.dt_rank if cfg.version == 1 else cfg.ssm_heads)
    if cfg.version == 1:
        assert keys["ssm.dt_b_c_rms"] == cfg.dt_b_c_rms
    else:
        assert keys["ssm.group_count"] == cfg.n_group
    got = {t.name: TC.as_f32(t) for t in r.tensors}
    assert sorted(got) == sorted(want)
    for n, x in want.items():  # (A: -exp(log(-A)) in float32)
        np.testing.assert_allclose(got[n], x, rtol=1e-6, atol=0, err_msg=n)
    ref = mamba_reference_logits(cfg, want, IDS)
    with Model(out, n_ctx=64, n_threads=2) as m:
        assert rel_err(m.logits(IDS), ref) < 3e-5
    assert rel_err(TC.lcpp_logits(pytest.importorskip("llama_cpp"), out, IDS), ref) < 1e-4


@pytest.mark.parametrize("name", ["mamba", "mamba2"])
def test_q8_0_types_and_bytes_match_llama_quantize(tmp_path: Path, name: str) -> None:
    cfg = replace(CASES[name], n_embd=128, dt_rank=32)
    hf_checkpoint(tmp_path / "hf", cfg)
    ours = tmp_path / "ours.gguf"
    convert(tmp_path / "hf", ours, type="q8_0", quiet=True, n_threads=2)
    assert TC.tensors(ours)["blk.0.ssm_a"].tensor_type.name == "F32"
    TC.same_as_llama_quantize(tmp_path / "hf", ours, tmp_path, "q8_0")


@pytest.mark.parametrize(
    ("name", "over", "match"),
    [
        ("mamba", {"use_bias": True}, "use_bias"),
        ("mamba", {"use_conv_bias": False}, "use_conv_bias"),
        ("mamba", {"intermediate_size": 96}, "intermediate_size"),
        ("mamba", {"vocab_size": 324}, "pad_vocab_size_multiple"),
        ("mamba", {"time_step_rank": 4}, "dt_proj.weight"),
        ("mamba2", {"head_dim": 48}, "head_dim"),
        ("mamba2", {"n_groups": 3}, "groups"),
    ],
)
def test_bad_checkpoints_are_refused(tmp_path: Path, name: str, over: dict[str, Any], match: str) -> None:
    hf_checkpoint(tmp_path / "hf", CASES[name], **over)
    with pytest.raises(ConvertError, match=match):
        convert(tmp_path / "hf", tmp_path / "m.gguf", type="f32", quiet=True)
