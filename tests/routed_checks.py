"""The checks the tiny mixture-of-experts suites (test_minimax_phimoe, test_glm4moe, test_deepseek2,
...) run on each of their files: against llama.cpp at F32 and Q8_0, greedy tokens, the placement with
a (fake) GPU; and their converter suites' checkpoints and logits."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from hf_fixtures import save_weights
from lcpp import check_routed_q8, llama_cpp_greedy, llama_cpp_logits
from splitllm import Model
from tiny_model import F32_LOGITS_TOL


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.float64(a) - b).max() / np.abs(b).max())


def write_files(root: Path, cases: dict[str, tuple[Any, Any]]) -> dict:
    """Each case's F32 file (cases: name -> (the tiny_* module, its config)): name -> (config, path,
    the weights as held)."""
    out = {}
    for name, (tiny, cfg) in cases.items():
        path = root / f"{name}.gguf"
        out[name] = (cfg, path, tiny.write_gguf(cfg, tiny.make_weights(cfg), path))
    return out


def f32_against_llama_cpp(path: Path, ref: np.ndarray, tokens: list[int]) -> None:
    """llama.cpp's logits within 1e-3 of the reference's (its float16 attention), ours within 1e-3
    of its."""
    theirs = llama_cpp_logits(path, tokens)
    assert rel_err(theirs, ref) < 1e-3
    with Model(path, n_ctx=64, n_batch=8, n_threads=2) as m:
        assert rel_err(m.logits(tokens), theirs) < 1e-3


def q8_against_llama_cpp(
    path: Path, held_ref: Callable[[dict], np.ndarray], held: dict, tokens: list[int]
) -> None:
    """A Q8_0 file (held: its weights as held): per token, ours against llama.cpp's logits and the
    reference's on the held weights (lcpp.check_routed_q8)."""
    theirs = llama_cpp_logits(path, tokens)
    with Model(path, n_ctx=64, n_threads=2) as m:
        ours = m.logits(tokens)
    check_routed_q8(ours, held_ref(held), theirs)


def greedy_matches_llama_cpp(path: Path, prompt: list[int], n: int = 12) -> None:
    want = llama_cpp_greedy(path, prompt, n)
    with Model(path, n_ctx=64, n_threads=2) as m:
        assert list(itertools.islice(m.generate(prompt, temp=0.0), n)) == want


def with_fake_gpu(path: Path, tokens: list[int], monkeypatch: Any, **kw: Any) -> Any:
    """The model on a (fake) GPU with n_gpu_layers -1 (and kw), after checking its logits are the
    CPU-only model's, exactly (FAKEGPU0 runs the CPU's kernels); returns it for its placement and
    warnings."""
    from splitllm import _core  # noqa: PLC0415

    toks = np.asarray(tokens, np.int32)
    args = (toks, np.arange(len(toks), dtype=np.int32), np.zeros(len(toks), np.int32))
    want = _core.Model(str(path), n_ctx=64, n_threads=1, op_offload=False).decode(*args)
    monkeypatch.setenv("SPLITLLM_FAKE_GPU", "1")
    m = _core.Model(str(path), n_ctx=64, n_threads=1, n_gpu_layers=-1, **kw)
    np.testing.assert_array_equal(m.decode(*args), want)
    return m


def state_round_trip(path: Path, tokens: list[int]) -> None:
    """A state saved after tokens[:10] goes back into the cache (after other tokens were read) and
    the next token's logits are those of never having been interrupted, to the bit."""
    with Model(path, n_ctx=64, n_threads=2) as m:
        m.eval_prompt(tokens[:10])
        want = m.eval_prompt(tokens[:11])
        m.reset()
        m.eval_prompt(tokens[:10])
        state = m.save_state()
        m.reset()
        m.eval_prompt(tokens[5:20])
        m.load_state(state)
        np.testing.assert_array_equal(m.eval_prompt(tokens[:11]), want)


def refused(
    tmp_path: Path, cfg: Any, weights: dict, write_gguf: Callable, match: str, *, n_ctx: int = 32, **kw: Any
) -> None:
    """A file of cfg with these weights (kw to write_gguf: metadata_changes) is refused by a
    GGUFError naming it and matching match (loaded with n_ctx)."""
    from splitllm import GGUFError  # noqa: PLC0415

    path = tmp_path / "m.gguf"
    write_gguf(cfg, weights, path, **kw)
    with pytest.raises(GGUFError, match=f"m.gguf: .*{match}"):
        Model(path, n_ctx=n_ctx)


HOST_TENSOR = re.compile(r"\.(ffn_(gate|up|down|gate_up)_exps|ffn_gate_inp|exp_probs_b)\.")
# (qwen35's feed-forward norm is its post_attention_norm)
FFN_TENSOR = re.compile(r"\.(ffn_\w+|post_attention_norm)(\.|$)")  # (falcon-h1's "ffn_norm")
RECURRENT_TENSOR = re.compile(r"\.(ssm_\w+|shortconv\.\w+)\.")
# (their gated attention; falcon-h1's attention beside its Mamba-2)
ALL_MIXERS_ON_HOST = ("qwen35", "qwen35moe", "qwen3next", "falcon-h1")


def expected_placement(path: Path, n_layer: int, ngl: int) -> list[tuple[str, str, int]]:
    """(part, device, bytes) as n_gpu_layers = ngl should place the file's tensors (gguf-py's
    reader): the output layer and the last ngl - 1 blocks on FAKEGPU0, but for what stays in host
    memory for the CPU to run: of a routed block its router, selection bias and experts (and a
    shared expert gated per token, with its gate) as the part blk.N.experts; of a block whose mixer
    has no GPU path (recurrent layers; every layer of ALL_MIXERS_ON_HOST) all but the
    feed-forward's tensors, as blk.N.mixer. Blocks past n_layer (NextN) are not loaded."""
    first = 0 if ngl < 0 else n_layer - max(ngl - 1, 0)
    reader = gguf.GGUFReader(path)
    arch = str(bytes(reader.fields["general.architecture"].parts[-1]), "utf-8")
    blocks: list[dict[str, int]] = [{"dev": 0, "mixer": 0, "experts": 0} for _ in range(n_layer)]
    embd = out = 0
    names = [t.name for t in reader.tensors]
    for t in reader.tensors:
        if m := re.match(r"blk\.(\d+)\.", t.name):
            i = int(m.group(1))
            if i >= n_layer:
                continue
            block = [n for n in names if n.startswith(f"blk.{i}.")]
            mixer_host = arch in ALL_MIXERS_ON_HOST or any(RECURRENT_TENSOR.search(n) for n in block)
            gated = f"blk.{i}.ffn_gate_inp_shexp.weight" in names
            if i < first:
                part = "dev"
            elif HOST_TENSOR.search(t.name) or (gated and "_shexp." in t.name):
                part = "experts"
            elif mixer_host and not FFN_TENSOR.search(t.name):
                part = "mixer"
            else:
                part = "dev"
            blocks[i][part] += int(t.n_bytes)
        elif t.name.startswith("token_embd."):
            embd += int(t.n_bytes)
        else:
            out += int(t.n_bytes)
    gpu = ngl != 0
    if "output.weight" not in names and gpu:  # (on the GPU a tied output layer holds its own copy)
        out += embd
    want = [("token_embd", "CPU", embd)]
    for i, b in enumerate(blocks):
        want.append((f"blk.{i}", "FAKEGPU0" if i >= first else "CPU", b["dev"]))
        want += [(f"blk.{i}.{part}", "CPU", b[part]) for part in ("mixer", "experts") if b[part]]
    return [*want, ("output", "FAKEGPU0" if gpu else "CPU", out)]


def split_with_host_parts(path: Path, monkeypatch: Any, *, ngl: int = -1, **kw: Any) -> Any:
    """With a (fake) GPU and n_gpu_layers ngl: the GPU blocks' routers and experts (and recurrent
    mixers) stay in host memory, said once; the placement is expected_placement's; the logits of a
    40-token prompt (past the op-offload threshold) and of one token after it are the CPU-only
    model's, exactly (FAKEGPU0 runs the CPU's kernels, and what runs on the host adds to the stream
    in the CPU's order)."""
    from splitllm import _core  # noqa: PLC0415

    def run(m: Any) -> np.ndarray:
        n_vocab = m.config["n_vocab"]
        prompt = np.asarray([(7 * i + 3) % n_vocab for i in range(40)], np.int32)
        a = m.decode(prompt, np.arange(40, dtype=np.int32), np.zeros(40, np.int32))
        b = m.decode(np.asarray([5], np.int32), np.asarray([40], np.int32), np.zeros(1, np.int32))
        return np.concatenate([a, b])

    want = run(_core.Model(str(path), n_ctx=64, n_threads=1, op_offload=False))
    monkeypatch.setenv("SPLITLLM_FAKE_GPU", "1")
    monkeypatch.delenv("SPLITLLM_FAKE_GPU_MEM", raising=False)
    m = _core.Model(str(path), n_ctx=64, n_threads=1, n_gpu_layers=ngl, **kw)
    assert len(m.warnings) == 1 and "host memory" in m.warnings[0], m.warnings
    got = [(p["name"], p["device"], p["weight_bytes"]) for p in m.placement]
    assert got == expected_placement(path, m.config["n_layer"], ngl)
    np.testing.assert_array_equal(run(m), want)  # (FAKEGPU0 runs the CPU's kernels: the same sums)
    # the prompt's expert matmuls of each block went to the GPU with their weights (op offload)
    host_experts = [p for p in m.placement if p["name"].endswith(".experts")]
    assert m.n_op_offload >= (len(host_experts) if kw.get("op_offload", True) else 0)
    return m


# -- converted checkpoints (the test_convert_* suites of these architectures)


def save_checkpoint(d: Path, config: dict[str, Any], tensors: dict[str, np.ndarray], drop: Any = ()) -> None:
    """config.json (the keys whose value is None left out) and the checkpoint's tensors in float32
    (but those named in drop) in the directory d."""
    (d / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
    save_weights(d, {k: v.astype(np.float32) for k, v in tensors.items() if k not in drop})


def as_held(w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The weights as a float32 checkpoint holds them (as float64)."""
    return {k: v.astype(np.float32).astype(np.float64) for k, v in w.items()}


def ours_near(path: Path, ref: np.ndarray, tokens: list[int], tol: float = F32_LOGITS_TOL) -> np.ndarray:
    """splitllm's logits on the file within tol of the reference's (relative to its largest); returns
    them."""
    with Model(path, n_ctx=64, n_threads=2) as m:
        ours = m.logits(tokens)
    assert rel_err(ours, ref) < tol
    return ours


def llama_cpp_near(path: Path, ref: np.ndarray, tokens: list[int], tol: float = 1e-3) -> None:
    """llama.cpp's logits on the file within tol of the reference's (its float16 attention)."""
    assert rel_err(llama_cpp_logits(path, tokens), ref) < tol
