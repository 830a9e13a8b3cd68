"""seed_oss, apertus, hunyuan-dense, arcee and starcoder2 on the GPU against the CPU (as
test_model_gpu): seed_oss's and hunyuan-dense's blocks (q/k norms after the rotation) on the GPU;
the ungated feed-forwards (xIELU, ReLU squared) stay on the CPU with a warning, the output layer
on the GPU; starcoder2 (LayerNorm biases) wholly on the CPU, with a warning."""

from __future__ import annotations

from dataclasses import replace

import pytest
from conftest import mean_kl
from splitllm import _core
from splitllm.quants import quantize
from test_dense_archs import CASES
from test_model_gpu import KL_MAX, PROMPT, check_against_cpu, greedy
from tiny_densevar import make_weights
from tiny_model import TinyModel, write_gguf


def _write(tmp_path, case: str) -> str:
    cfg = replace(CASES[case], n_embd=256, n_head=8, n_head_kv=2, n_ff=512, n_layer=4)
    path = tmp_path / f"tiny-{case}-q4k.gguf"
    write_gguf(TinyModel(cfg.tiny(), make_weights(cfg)), path, weight_type="Q4_K", quantize=quantize,
               metadata=cfg.metadata())  # fmt: skip
    return str(path)


@pytest.mark.parametrize("case", ["seed_oss", "hunyuan-dense-alpha"])
def test_blocks_on_the_gpu(tmp_path, case):
    check_against_cpu(_write(tmp_path, case), PROMPT)


OUTPUT_ONLY = "only the output layer goes to the GPU"


KEPT = [("apertus", OUTPUT_ONLY), ("arcee", OUTPUT_ONLY), ("starcoder2", "runs on the CPU in this version")]


@pytest.mark.parametrize(("case", "warning"), KEPT)
def test_blocks_kept_on_the_cpu(tmp_path, case, warning):
    path = _write(tmp_path, case)
    ref_logits, ref_text = greedy(_core.Model(path, n_ctx=256, op_offload=False), PROMPT)
    m = _core.Model(path, n_ctx=256, n_gpu_layers=-1)
    assert len(m.warnings) == 1 and warning in m.warnings[0]
    got_logits, got_text = greedy(m, PROMPT)
    assert mean_kl(ref_logits, got_logits) <= KL_MAX
    assert got_text == ref_text
