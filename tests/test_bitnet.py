"""The bitnet architecture (llama.cpp's src/models/bitnet.cpp): tiny random models against a float64
reference written from that graph (tests/tiny_model.py: RMS sub-norms of the attention output
before W_o and of the gated activation before W_down, a scalar scale on each matmul's output,
NeoX rotary, the output tied to the token embeddings) and against llama.cpp on the same files,
in F32 and in the ternary types bitnet models are stored in."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from lcpp import llama_cpp_logits
from splitllm import Model
from tiny_model import TinyConfig, TinyModel, make_weights, reference_logits, write_gguf

TOKENS = [3, 77, 200, 15, 260, 1, 99, 42, 42, 131, 7, 300, 255, 18, 64, 5, 250, 33, 120, 11]
BITNET = TinyConfig(
    arch="bitnet", n_layer=3, n_embd=256, n_head=4, n_head_kv=2, n_ff=512, tied_output=True, seed=21
)


def rel_err(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)


def logits(path, tokens=TOKENS) -> np.ndarray:
    with Model(path, n_ctx=64, n_threads=2) as m:
        return m.logits(tokens)


def test_bitnet_matches_reference(tmp_path):
    path = tmp_path / "bitnet.gguf"
    held = write_gguf(make_weights(BITNET), path)
    ref = reference_logits(BITNET, held, TOKENS)
    ours = logits(path)
    assert rel_err(ours, ref).max() < 3e-4  # measured 1.05e-4 (logits up to |40|: scales up to 2)
    with Model(path, n_ctx=64, n_threads=2) as m:  # token by token (decode kernels) as well
        steps = np.stack([m.eval_prompt(TOKENS[: i + 1]) for i in range(8)])
    assert rel_err(steps, ref[:8]).max() < 3e-4
    # the sub-norms and the scales each matter (but v's and up's, which the sub-norms after them cancel)
    w = make_weights(BITNET).weights
    for name in (
        "blk.1.attn_sub_norm.weight",
        "blk.1.ffn_sub_norm.weight",
        "blk.0.attn_q.scale",
        "blk.2.ffn_gate.scale",
        "blk.1.attn_output.scale",
        "blk.1.ffn_down.scale",
    ):
        other = dict(w)
        other[name] = 2.0 * w[name]
        path2 = tmp_path / "other.gguf"
        write_gguf(TinyModel(BITNET, other), path2)
        assert rel_err(logits(path2), ref).max() > 1e-3, name


def test_bitnet_output_is_the_token_embeddings(tmp_path):
    """An output.weight in a bitnet file is not used (llama.cpp's bitnet ties its output)."""
    w = dict(make_weights(BITNET).weights)
    path = tmp_path / "bitnet.gguf"
    held = write_gguf(TinyModel(BITNET, w), path)
    w["output.weight"] = np.ones((BITNET.n_vocab, BITNET.n_embd))
    path2 = tmp_path / "with-output.gguf"
    write_gguf(TinyModel(replace(BITNET, tied_output=False), w), path2)
    np.testing.assert_array_equal(logits(path2), logits(path))
    assert held


@pytest.mark.reference
@pytest.mark.parametrize("wtype", ["F32", "TQ1_0", "TQ2_0"])
def test_bitnet_matches_llama_cpp(tmp_path, wtype):
    path = tmp_path / f"bitnet-{wtype}.gguf"
    held = write_gguf(make_weights(BITNET), path, weight_type=wtype)
    ours, theirs = logits(path), llama_cpp_logits(path, TOKENS)
    ref = reference_logits(BITNET, held, TOKENS)
    if wtype == "F32":
        assert rel_err(ours, theirs).max() < 1e-3
    else:  # int8 activations (ours) and Q8_K ones (llama.cpp's): each about 2% from the reference
        assert rel_err(ours, theirs).max() < 5e-2
        assert rel_err(ours, ref).max() < 3e-2
