"""convert-hf on the real SmolLM2-135M-Instruct, rebuilt as a Hugging Face directory from its GGUF.

- ``--type q4_1`` gives back the original GGUF (made by llama.cpp): the same tensors, types and
  shapes, values within one quantization step, and the same metadata and tokenizer arrays.
- llama.cpp's greedy continuation on our q8_0 equals the one on a q8_0 that llama.cpp's own
  quantizer made from our f32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import hf_fixtures as F
import numpy as np
import pytest
from gguf import GGUFReader
from splitllm_convert import FILE_TYPES, convert

PROMPT = "The three primary colors are"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def smollm2_hf(smollm2_path: Path) -> Path:
    return F.smollm2_hf_dir(gguf_path=smollm2_path)


@pytest.fixture(scope="module")
def converted(smollm2_hf: Path, tmp_path_factory: Any) -> dict[str, Path]:
    """Our conversions of the rebuilt model, made once for the module."""
    pytest.importorskip("splitllm.quants")
    d = tmp_path_factory.mktemp("smollm2")
    out = {}
    for qtype in ("q4_1", "q8_0", "f32"):
        out[qtype] = d / f"{qtype}.gguf"
        convert(smollm2_hf, out[qtype], type=qtype, quiet=True)
    return out


def _block_step(t: Any) -> np.ndarray:
    """Per-value quantization step of a Q4_1 / Q8_0 tensor: its block's scale d (the first fp16)."""
    blk, size = gguf.GGML_QUANT_SIZES[t.tensor_type]
    d = np.asarray(t.data).reshape(-1, size)[:, :2].copy().view(np.float16).astype(np.float32)
    return np.repeat(d.reshape(-1), blk)


def test_rebuilt_tokenizer_is_smollms(smollm2_hf: Path) -> None:
    from splitllm_convert.pretok import check_hash

    # llama.cpp's table names this hash of the check text's token ids "smollm" (SmolLM-135M)
    assert (
        check_hash(smollm2_hf / "tokenizer.json")
        == "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249"
    )


def test_q4_1_gives_back_the_original(smollm2_path: Path, converted: dict[str, Path]) -> None:
    orig, ours = GGUFReader(smollm2_path), GGUFReader(converted["q4_1"])
    assert sorted(orig.fields) == sorted(ours.fields)
    for key, f in orig.fields.items():
        assert ours.fields[key].types == f.types, key
        assert ours.fields[key].contents() == f.contents(), key
    mine = {t.name: t for t in ours.tensors}
    assert len(mine) == len(orig.tensors) == 272
    for t in orig.tensors:
        m = mine[t.name]
        assert (m.tensor_type, list(m.shape)) == (t.tensor_type, list(t.shape)), t.name
        a = gguf.quants.dequantize(t.data, t.tensor_type).reshape(-1)
        b = gguf.quants.dequantize(m.data, m.tensor_type).reshape(-1)
        if t.tensor_type == gguf.GGMLQuantizationType.F32:
            np.testing.assert_array_equal(a, b, err_msg=t.name)
        else:
            assert (np.abs(a - b) <= _block_step(t) * 1.001).all(), t.name


@pytest.mark.reference
def test_greedy_q8_0_matches_llama_quantize(converted: dict[str, Path], tmp_path: Path) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    theirs = tmp_path / "llama-quantize.q8_0.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = int(FILE_TYPES["q8_0"].ftype), 2
    assert llama_cpp.llama_model_quantize(str(converted["f32"]).encode(), str(theirs).encode(), params) == 0

    def greedy(path: Path) -> list[int]:
        llm = llama_cpp.Llama(str(path), n_ctx=128, n_threads=2, verbose=False, seed=0)
        tokens = llm.tokenize(PROMPT.encode(), add_bos=False)
        out = []
        for tok in llm.generate(tokens, temp=0.0, top_k=1, reset=True):
            out.append(tok)
            if len(out) == 32:
                break
        llm.close()
        return out

    ours = greedy(converted["q8_0"])
    assert len(ours) == 32 and ours == greedy(theirs)
