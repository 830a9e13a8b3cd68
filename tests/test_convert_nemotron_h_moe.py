"""convert-hf on a tiny random NemotronHForCausalLM checkpoint with experts (Nemotron 3 Nano: the
weights of tests/test_nemotron_h_moe.py's model under transformers' names, each expert's up_proj /
down_proj apart): the file is a nemotron_h_moe one with NemotronHModel's expert keys; splitllm's
engine and llama.cpp give the float64 reference's logits on it; q8_0 has the types and bytes of
llama.cpp's quantizer on our f32 file; what llama.cpp would not run as transformers does is refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import test_convert as TC
from gguf import GGUFReader
from splitllm import Model
from splitllm_convert import convert
from splitllm_convert.errors import ConvertError
from test_convert_nemotron_h import IDS, hf_checkpoint, rel_err
from test_nemotron_h_moe import NANO
from tiny_mamba2 import hybrid_reference_logits


def test_converted_file_runs_as_the_reference(tmp_path: Path) -> None:
    want = hf_checkpoint(tmp_path / "hf", NANO)
    out = tmp_path / "m.gguf"
    convert(tmp_path / "hf", out, type="f32", quiet=True)
    r = GGUFReader(out)
    a = "nemotron_h_moe."
    keys = {k.removeprefix(a): f.contents() for k, f in r.fields.items() if k.startswith(a)}
    assert keys["feed_forward_length"] == [NANO.ff_of(i) for i in range(NANO.n_layer)]
    assert keys["attention.head_count_kv"] == [
        NANO.n_head_kv if t == "attention" else 0 for t in NANO.layer_types
    ]
    assert {k: keys[k] for k in keys if k.startswith("expert_")} == pytest.approx(
        {
            "expert_count": NANO.n_expert, "expert_used_count": NANO.n_expert_used,
            "expert_feed_forward_length": NANO.n_ff, "expert_shared_feed_forward_length": NANO.n_ff_shexp,
            "expert_shared_count": 1, "expert_weights_norm": True, "expert_weights_scale": 2.5,
            "expert_group_count": 1,
        }
    )  # fmt: skip
    got = {t.name: TC.as_f32(t) for t in r.tensors}
    assert sorted(got) == sorted(want)
    for name, x in want.items():
        np.testing.assert_allclose(got[name], x, rtol=1e-6, atol=0, err_msg=name)
    ref = hybrid_reference_logits(NANO, {n: x.astype(np.float64) for n, x in got.items()}, IDS)
    with Model(str(out), n_ctx=64, n_threads=2) as m:
        assert rel_err(m.logits(IDS), ref) < 1e-4  # (measured 2.3e-5; llama.cpp 8.5e-5)
    assert rel_err(TC.lcpp_logits(pytest.importorskip("llama_cpp"), out, IDS), ref) < 1e-3


def test_q8_0_types_and_bytes_match_llama_quantize(tmp_path: Path) -> None:
    hf = tmp_path / "hf"
    hf_checkpoint(hf, NANO)
    ours = tmp_path / "ours.gguf"
    convert(hf, ours, type="q8_0", quiet=True, n_threads=2)
    TC.same_as_llama_quantize(hf, ours, tmp_path, "q8_0")


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"hybrid_override_pattern": "MEM*-M"}, "'E' layers need"),
        ({"hybrid_override_pattern": "MEM*MM"}, "of mamba layer 4 is missing"),
        ({"n_group": 2}, "expert groups"),
        ({"moe_latent_size": 32}, "latent"),
        ({"norm_topk_prob": None}, "norm_topk_prob"),
        ({"moe_shared_expert_intermediate_size": 32}, "has shape"),
    ],
)
def test_bad_checkpoints_are_refused(tmp_path: Path, over: dict[str, Any], match: str) -> None:
    hf_checkpoint(tmp_path / "hf", NANO, **over)
    with pytest.raises(ConvertError, match=match):
        convert(tmp_path / "hf", tmp_path / "m.gguf", type="f32", quiet=True)
    assert not (tmp_path / "m.gguf").exists()
