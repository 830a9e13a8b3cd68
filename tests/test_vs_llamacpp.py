"""SmolLM2-135M Q4_1 against llama.cpp (llama-cpp-python built from source) as the reference;
the same model requantized by llama.cpp's quantizer to IQ4_XS (IQ4_XS where rows are a multiple of
256 values, IQ4_NL elsewhere, as llama.cpp falls back: both i-quant kernels).

This model amplifies last-bit differences: two llama.cpp configurations (flash attention on and
off) agree on the top token at only 95.5% of the first 512 tokens of tinyshakespeare, and so do
two batch sizes of an engine whose kernels round differently per batch size. Every disagreement
we measured sits where llama.cpp's own top-2 logits are within 0.25 of each other, so the tests
check agreement where the reference is decided (top-2 gap above NOISE) and the KL divergence.
"""

from __future__ import annotations

import numpy as np
import pytest
from splitllm import GGUFFile, Model

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python (the reference) is not installed")

pytestmark = pytest.mark.reference

NOISE = 0.5  # logit differences this large come from rounding alone in this model (see above)

PROMPTS = [
    "The capital of France is",
    "Once upon a time, there was a",
    "def fibonacci(n):",
    "The three laws of robotics are",
    "Water boils at a temperature of",
]


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


# llama.cpp's file types (llama_ftype) of the requantized variants.
REQUANTIZED = {"IQ4_XS": 30}
ALL_F32 = 0


def llama_quantize(src, dst, ftype: int) -> None:
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype, p.nthread, p.allow_requantize = ftype, 2, True
    assert llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), p) == 0


@pytest.fixture(scope="module", params=["Q4_1", *REQUANTIZED])
def variant(request, smollm2_path, tmp_path_factory):
    """(our model file, llama.cpp's reference file). For the i-quants, the reference is llama.cpp
    on the same weights dequantized to F32 by llama.cpp: its IQ4_XS kernels quantize activations
    per 256 values (Q8_K), ours per 32, and measured against the exact weights ours are the closer
    (mean KL 0.0034 against llama.cpp IQ4_XS's 0.0054; the two 0.0067 apart)."""
    if request.param == "Q4_1":
        return smollm2_path, smollm2_path
    d = tmp_path_factory.mktemp("requant")
    path, f32 = d / f"SmolLM2-135M.{request.param}.gguf", d / f"SmolLM2-135M.{request.param}.F32.gguf"
    llama_quantize(smollm2_path, path, REQUANTIZED[request.param])
    types = {t.type for t in GGUFFile(path).tensors.values()}
    assert {"IQ4_XS", "IQ4_NL"} <= types and "Q4_1" not in types, types
    llama_quantize(path, f32, ALL_F32)
    return path, f32


@pytest.fixture(scope="module")
def reference(variant):
    llm = llama_cpp.Llama(str(variant[1]), n_ctx=1024, n_threads=2, logits_all=True, verbose=False)
    yield llm
    llm.close()


@pytest.fixture(scope="module")
def ours(variant):
    with Model(variant[0], n_ctx=1024, n_threads=2) as m:
        yield m


def test_teacher_forced_logits_agree(variant, reference, ours, tinyshakespeare):
    """First 512 tokens of tinyshakespeare: top-1 agreement and KL(llama.cpp || ours)."""
    tokens = reference.tokenize(tinyshakespeare[:8000].encode(), add_bos=False)[:512]
    assert len(tokens) == 512
    assert ours.tokenize(tinyshakespeare[:8000].encode(), add_bos=False)[:512] == tokens
    reference.reset()
    reference.eval(tokens)
    ref = np.array(reference.scores[: len(tokens)], dtype=np.float32)
    got = ours.logits(tokens)
    lp_ref, lp_got = log_softmax(ref), log_softmax(got)
    kl = (np.exp(lp_ref) * (lp_ref - lp_got)).sum(axis=-1)
    agree = ref.argmax(-1) == got.argmax(-1)
    top2 = np.sort(ref, axis=-1)[:, -2:]
    decided = top2[:, 1] - top2[:, 0] > NOISE
    print(
        f"\nteacher-forced 512 tokens: top-1 agreement {agree.mean():.4f} (where llama.cpp's top-2 gap > "
        f"{NOISE}: {agree[decided].mean():.4f} of {decided.sum()}), mean KL {kl.mean():.5f}, "
        f"max KL {kl.max():.5f}"
    )
    assert kl.mean() <= 0.005
    assert agree[decided].all()
    # Against the F32 reading of the i-quants' weights, 8-bit activations move more near-ties:
    # llama.cpp's own IQ4_XS kernels agree with its F32 reading on 94.5% of these tokens.
    assert agree.mean() >= (0.95 if variant[0] == variant[1] else 0.94)


def greedy_tokens_reference(llm, prompt_tokens: list[int], n: int) -> list[int]:
    out = []
    for tok in llm.generate(prompt_tokens, temp=0.0, top_k=1, reset=True):
        out.append(tok)
        if len(out) == n or tok == llm.token_eos():
            break
    return out


def test_greedy_completions_match(reference, ours):
    """32 greedy tokens for 5 prompts: where a completion differs, it starts at a near-tie."""
    equal = 0
    for prompt in PROMPTS:
        toks = ours.tokenize(prompt.encode(), add_bos=False, special=True)
        assert toks == reference.tokenize(prompt.encode(), add_bos=False, special=True)
        ref = greedy_tokens_reference(reference, toks, 32)
        got = []
        for tok in ours.generate(toks, temp=0.0):
            got.append(tok)
            if len(got) == len(ref):
                break
        if got == ref:
            equal += 1
            continue
        step = next(i for i, (a, b) in enumerate(zip(got, ref, strict=False)) if a != b)
        reference.reset()
        reference.eval(toks + ref[:step])
        row = np.array(reference.scores[reference.n_tokens - 1], dtype=np.float64)
        top2 = np.sort(row)[-2:]
        gap = top2[1] - top2[0]
        print(f"\n{prompt!r}: differs at step {step}, llama.cpp top-2 gap {gap:.4f}")
        assert gap < NOISE, f"{prompt!r}: first difference at step {step} is not a near-tie (gap {gap:.3f})"
    print(f"\ngreedy: {equal} of {len(PROMPTS)} completions equal llama.cpp's")


def test_metadata_strings_equal_llama_cpp(smollm2_path):
    """``Model.metadata`` is ``Llama.metadata``: the same keys, numbers, booleans and floats
    written as llama.cpp writes them."""
    llm = llama_cpp.Llama(str(smollm2_path), n_ctx=64, n_threads=2, verbose=False)
    try:
        with Model(smollm2_path, n_ctx=64, n_threads=2) as m:
            assert m.metadata == llm.metadata
    finally:
        llm.close()
