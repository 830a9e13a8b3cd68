"""Hyperparameters from GGUF metadata: a missing or inconsistent key is a GGUFError that names the
file and the key (tiny llama files written with gguf-py, one key changed or removed)."""

from __future__ import annotations

import pytest
from splitllm import GGUFError, Model
from tiny_model import TinyConfig, make_weights, write_gguf

# (metadata change, what the message names: the value or tensor at fault, and the key)
CASES = {
    "missing-block_count": ({"llama.block_count": None}, "llama.block_count", "llama.block_count"),
    "missing-head_count": (
        {"llama.attention.head_count": None},
        "llama.attention.head_count",
        "llama.attention.head_count",
    ),
    "head_count_kv-not-dividing": (
        {"llama.attention.head_count_kv": 3},
        "attention.head_count_kv",
        "llama.attention.head_count_kv",
    ),
    "embedding_length-vs-tensors": (
        {"llama.embedding_length": 128},  # the tensors are 64 wide
        "token_embd.weight",
        "llama.embedding_length",
    ),
    "feed_forward_length-vs-tensors": (
        {"llama.feed_forward_length": 100},  # the tensors are 96 wide
        "ffn_gate.weight",
        "llama.feed_forward_length",
    ),
    "unknown-architecture": ({"general.architecture": "mamba9"}, "mamba9", "general.architecture"),
}

def bad_file(tmp_path, case: str):
    path = tmp_path / f"{case}.gguf"
    write_gguf(make_weights(TinyConfig()), path, metadata=CASES[case][0])
    return path


def load_error(path) -> str:
    with pytest.raises(GGUFError) as e:
        Model(path, n_ctx=32, n_threads=1)
    return str(e.value)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_metadata_is_a_gguf_error_naming_the_file(tmp_path, case):
    path = bad_file(tmp_path, case)
    msg = load_error(path)
    assert str(path) in msg
    assert CASES[case][1] in msg


@pytest.mark.parametrize("case", list(CASES))
def test_bad_metadata_error_names_the_key(tmp_path, case):
    assert CASES[case][2] in load_error(bad_file(tmp_path, case))


def test_good_file_loads(tmp_path):
    """The same writer without changes gives a file that loads (the errors above are the keys')."""
    path = tmp_path / "good.gguf"
    write_gguf(make_weights(TinyConfig()), path)
    with Model(path, n_ctx=32, n_threads=1) as m:
        assert m.config["n_layer"] == 2
