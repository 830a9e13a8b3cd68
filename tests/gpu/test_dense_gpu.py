"""mistral3, glm4, exaone4, ernie4_5, cohere2, command-r, exaone and internlm2 on the GPU against the
CPU (as test_model_gpu): mistral3's attention temperature after the rotation, glm4's post-norms, fused
gate/up and partial rotation, exaone4's windows with unrotated global layers, cohere2's and
command-r's LayerNorm and parallel block, exaone's llama3 factors with the NEOX rotation."""

from __future__ import annotations

from dataclasses import replace

import pytest
from splitllm.quants import quantize
from test_dense_archs import CASES
from test_model_gpu import PROMPT, check_against_cpu
from tiny_dense import make_weights
from tiny_model import TinyModel, write_gguf


@pytest.mark.parametrize("case", ["mistral3", "glm4", "exaone4-swa", "ernie4_5", "cohere2", "command-r",
                                  "exaone-3.5", "internlm2"])  # fmt: skip
def test_tiny_dense_models(tmp_path, case):
    cfg = CASES[case]
    cfg = replace(cfg, n_embd=256, n_head=8, n_head_kv=2, n_ff=512 if cfg.n_layer < 64 else 256,
                  n_layer=min(cfg.n_layer, 4) if cfg.n_layer < 64 else 64)
    path = tmp_path / f"tiny-{case}-q4k.gguf"
    write_gguf(TinyModel(cfg.tiny(), make_weights(cfg)), path, weight_type="Q4_K", quantize=quantize,
               metadata=cfg.metadata())
    check_against_cpu(str(path), PROMPT)

