"""transformers' packed experts (Llama4TextExperts, Qwen3VLMoeTextExperts) as llama.cpp's converters
write them: ``gate_up_proj`` (n_expert, hidden, 2 ff; each expert's gate columns first) split into
ffn_gate_exps and ffn_up_exps (n_expert, ff, hidden), ``down_proj`` (n_expert, ff, hidden) transposed
into ffn_down_exps (n_expert, hidden, ff). An architecture's rules name the packed tensors with the
shapes and transforms below; its plan() passes its sources through ``split``, its transforms()
includes ``transforms(ff)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from splitllm_convert.arch import Architecture, PlannedSource

GATE_UP = ("n_expert", "embd", "ff_exp2")  # (HF's shape; the rule's transform "gate_up")
DOWN = ("n_expert", "ff_exp", "embd")  # (the rule's transform "t")


def split(arch: Architecture, planned: list[PlannedSource]) -> list[PlannedSource]:
    """The sources with one packed gate_up_proj as two GGUF tensors and down_proj transposed."""
    out = []
    rows = (arch.n_expert, arch.n_ff_exp, arch.n_embd)  # (ffn_gate_exps / ffn_up_exps, row-major)
    for s in planned:
        if s.transform == "gate_up":  # (one HF tensor, two GGUF ones)
            up = s.gguf_name.replace("gate_exps", "up_exps")
            out.append(PlannedSource(s.gguf_name, rows, s.hf_name, "gate_t"))
            out.append(PlannedSource(up, rows, s.hf_name, "up_t"))
        elif s.transform == "t":
            down = (arch.n_expert, arch.n_embd, arch.n_ff_exp)
            out.append(PlannedSource(s.gguf_name, down, s.hf_name, "t"))
        else:
            out.append(s)
    return out


def transforms(ff: int) -> dict[str, Callable[[Any], Any]]:
    return {
        "gate_t": lambda w: w[..., :ff].transpose(0, 2, 1).copy(),
        "up_t": lambda w: w[..., ff:].transpose(0, 2, 1).copy(),
        "t": lambda w: w.transpose(0, 2, 1).copy(),
    }
