"""Whole models on the GPU against the CPU: logits with n_gpu_layers = 0, half and all agree
(mean KL <= 1e-3) and greedy 32-token completions are equal; the split options and the memory
check behave as on FAKEGPU0 (tests/test_placement.py)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import splitllm
from conftest import mean_kl
from splitllm import _core
from splitllm.quants import quantize
from tiny_model import TinyConfig, make_weights, write_gguf
from tiny_moe import MoeConfig, write_moe_gguf
from tiny_moe import make_weights as make_moe_weights

KL_MAX = 1e-3
PROMPT = [(13 * i + 5) % 320 for i in range(48)]  # above the op-offload threshold of 32


def logits(m, tokens, start=0, slot=0):
    n = len(tokens)
    return m.decode(np.asarray(tokens, np.int32), np.arange(start, start + n, dtype=np.int32),
                    np.full(n, slot, np.int32))


def greedy(m, prompt, n=32):
    """Prompt logits and the greedy n-token completion (decoded one token at a time)."""
    first = logits(m, prompt)
    out, last = [], first[-1]
    for i in range(n):
        out.append(int(np.argmax(last)))
        last = logits(m, [out[-1]], start=len(prompt) + i)[0]
    return first, out


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    cfg = TinyConfig(arch="llama", n_layer=6, n_embd=256, n_head=8, n_head_kv=2, n_ff=512, seed=7)
    path = tmp_path_factory.mktemp("gpu") / "tiny-q4k.gguf"
    write_gguf(make_weights(cfg), path, weight_type="Q4_K", quantize=quantize)
    return str(path)


def check_against_cpu(path, prompt, *, n_ctx=256, warning=None, **kw):
    """warning: a text the one warning of a model with GPU blocks holds (else: no warnings)."""
    cpu = _core.Model(path, n_ctx=n_ctx, op_offload=False)
    ref_logits, ref_text = greedy(cpu, prompt)
    for ngl in (0, cpu.config["n_layer"] // 2, -1):
        m = _core.Model(path, n_ctx=n_ctx, n_gpu_layers=ngl, **kw)
        if warning and ngl != 0:
            assert len(m.warnings) == 1 and warning in m.warnings[0], m.warnings
        else:
            assert m.warnings == []
        got_logits, got_text = greedy(m, prompt)
        assert mean_kl(ref_logits, got_logits) <= KL_MAX, ngl
        assert got_text == ref_text, ngl


def test_tiny_model(tiny_path):
    check_against_cpu(tiny_path, PROMPT)


def test_tiny_qwen3_model(tmp_path):
    """Per-head query/key norms (rows = tokens x heads through the CUDA rms_norm, in place)."""
    cfg = TinyConfig(arch="qwen3", n_layer=4, n_embd=256, n_head=8, n_head_kv=2, n_ff=512, key_length=64,
                     seed=8)
    path = tmp_path / "tiny-qwen3-q4k.gguf"
    write_gguf(make_weights(cfg), path, weight_type="Q4_K", quantize=quantize)
    check_against_cpu(str(path), PROMPT)


@pytest.mark.parametrize("arch", ["qwen3moe", "qwen2moe", "granitemoe"])
def test_tiny_moe_model_experts_on_the_host(tmp_path, arch):
    """A mixture-of-experts model's blocks on the GPU, their routers and experts on the CPU (the
    block's normed input down, the experts' sum up; qwen2moe's gated shared expert on the host,
    granitemoe's plain one on the GPU): logits and greedy text as the CPU's at 0, half and all."""
    path = tmp_path / f"tiny-{arch}-q4k.gguf"
    if arch == "qwen3moe":
        cfg = TinyConfig(arch=arch, n_layer=4, n_embd=256, n_head=8, n_head_kv=2, n_ff=256, n_expert=8,
                         n_expert_used=2, key_length=64, seed=12)
        write_gguf(make_weights(cfg), path, weight_type="Q4_K", quantize=quantize)
    else:
        # (shared experts wider than the routed ones: the GPU's feed-forward scratch holds them)
        shexp = dict(n_ff_exp=256, n_ff_shexp=512) if arch == "qwen2moe" else dict(n_ff_shexp=512)
        mcfg = MoeConfig(arch, n_layer=4, n_embd=256, n_head=8, n_head_kv=2, n_ff=256, n_expert=8, seed=13,
                         **shexp)
        write_moe_gguf(mcfg, make_moe_weights(mcfg), path, weight_type="Q4_K", quantize=quantize)
    check_moe_against_cpu(str(path), PROMPT)


def test_tiny_gpt_oss_model(tmp_path):
    """gpt-oss: attention sinks, q/k/v/o biases, sliding-window layers every other one (ring
    caches), YaRN, on the GPU; biased routers and MXFP4 experts on the host."""
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}
    cfg = TinyConfig(arch="gpt-oss", n_layer=4, n_embd=256, n_head=8, n_head_kv=2, n_ff=256, n_expert=8,
                     n_expert_used=2, n_ff_exp=256, sliding_window=16, rope_scaling=yarn, seed=14)
    path = tmp_path / "tiny-gpt-oss.gguf"
    write_gguf(make_weights(cfg), path, weight_type="Q8_0", quantize=quantize)
    check_moe_against_cpu(str(path), PROMPT)


def forced(m, prompt, text):
    """The prompt's logits (one pass) and those of each pick of text, fed one token at a time."""
    first = logits(m, prompt)
    steps = [logits(m, [t], start=len(prompt) + i)[0] for i, t in enumerate(text[:-1])]
    return first, np.stack([first[-1], *steps])


def check_moe_against_cpu(path, prompt):
    """As check_against_cpu, but along the CPU's greedy text (teacher-forced): the CUDA kernels'
    rounding may change a router's choice where two experts' scores nearly tie, and a greedy pick
    where two logits nearly tie. So: mean KL <= 1e-3 over the prompt and over the 32 picks, and
    the same argmax wherever the CPU's best logit leads the next by a tenth of the logits'
    standard deviation (at least 16 of the 32 picks, so that the check has teeth)."""
    cpu = _core.Model(path, n_ctx=256, op_offload=False)
    _, text = greedy(cpu, prompt)
    ref_first, ref = forced(cpu, prompt, text)
    top2 = np.sort(ref, axis=-1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] >= 0.1 * ref.std()
    assert clear.sum() >= 16, clear.sum()
    for ngl in (0, cpu.config["n_layer"] // 2, -1):
        m = _core.Model(path, n_ctx=256, n_gpu_layers=ngl)
        if ngl != 0:
            assert len(m.warnings) == 1 and "host memory" in m.warnings[0], m.warnings
        blocks = [p["device"] for p in m.placement if re.fullmatch(r"blk\.\d+", p["name"])]
        assert blocks.count("CPU") == {0: len(blocks), -1: 0}.get(ngl, len(blocks) - (ngl - 1))
        first, got = forced(m, prompt, text)
        assert mean_kl(ref_first, first) <= KL_MAX, ngl
        assert mean_kl(ref, got) <= KL_MAX, ngl
        np.testing.assert_array_equal(got[clear].argmax(-1), ref[clear].argmax(-1))


def test_tiny_phi3_model(tmp_path):
    """Fused q/k/v and gate/up matrices (row slices of one tensor), partial rotary, LongRoPE's
    factors and attention factor (cos/sin scaled on the GPU)."""
    longrope = {"rope_type": "longrope", "original_max_position_embeddings": 32,  # long factors at n_ctx 256
                "short_factor": [1.0 + 0.1 * i for i in range(8)],
                "long_factor": [1.0 + 2.0 * i for i in range(8)]}
    cfg = TinyConfig(arch="phi3", n_layer=4, n_embd=256, n_head=8, n_head_kv=2, n_ff=512, n_rot=16,
                     rope_scaling=longrope, n_ctx_train=1024, seed=9)
    path = tmp_path / "tiny-phi3-q4k.gguf"
    write_gguf(make_weights(cfg), path, weight_type="Q4_K", quantize=quantize)
    check_against_cpu(str(path), PROMPT)


@pytest.mark.parametrize("arch", ["gemma2", "gemma3"])
@pytest.mark.parametrize("n_batch", [512, 16], ids=["full-cache", "ring-cache"])
def test_tiny_gemma_models(tmp_path, arch, n_batch):
    """Gemma: scaled embeddings, GeGLU, post-norms (the residual adds on the GPU), sliding-window
    layers with their own rotary tables (gemma3) and soft-capped scores and logits (gemma2); a
    window of 16 on a 48-token prompt and its 32-token completion; with n_batch 16 the sliding
    layers' caches are rings of 32 cells (against a CPU model with full-size ones)."""
    extra = dict(attn_softcap=20.0, final_softcap=15.0) if arch == "gemma2" else dict(rope_base=1e6)
    cfg = TinyConfig(arch=arch, n_layer=7, n_embd=256, n_head=8, n_head_kv=2, n_ff=512, key_length=64,
                     sliding_window=16, tied_output=True, seed=10, **extra)
    path = tmp_path / f"tiny-{arch}-q4k.gguf"
    write_gguf(make_weights(cfg), path, weight_type="Q4_K", quantize=quantize)
    check_against_cpu(str(path), PROMPT, n_batch=n_batch)


@pytest.mark.parametrize("arch", ["smollm3", "granite", "olmo2"])
def test_tiny_llama_variants(tmp_path, arch):
    """smollm3's unrotated layers, granite's multipliers (the scaled residual adds on the GPU),
    olmo2's post-norms without input norms and its q/k norms over whole projections."""
    cfg = TinyConfig(arch=arch, n_layer=4, n_embd=256, n_head=8, n_head_kv=2, n_ff=512, seed=11)
    path = tmp_path / f"tiny-{arch}-q4k.gguf"
    write_gguf(make_weights(cfg), path, weight_type="Q4_K", quantize=quantize)
    check_against_cpu(str(path), PROMPT)


@pytest.mark.parametrize("wtype", ["TQ1_0", "TQ2_0"])
def test_tiny_ternary_model(tmp_path, wtype):
    """Ternary weights (token embeddings and output too): the GPU's block readers and mat-vec."""
    cfg = TinyConfig(arch="llama", n_layer=4, n_embd=256, n_head=8, n_head_kv=2, n_ff=512, seed=12)
    path = tmp_path / f"tiny-{wtype}.gguf"
    write_gguf(make_weights(cfg), path, weight_type=wtype, quantize=quantize)
    check_against_cpu(str(path), PROMPT)


def test_tiny_bitnet_model(tmp_path):
    """bitnet: the sub-norms (uploaded with the layer's norms) and the matmul scales on the GPU."""
    cfg = TinyConfig(arch="bitnet", n_layer=4, n_embd=256, n_head=8, n_head_kv=2, n_ff=512, tied_output=True,
                     seed=13)
    path = tmp_path / "tiny-bitnet-tq2.gguf"
    write_gguf(make_weights(cfg), path, weight_type="TQ2_0", quantize=quantize)
    check_against_cpu(str(path), PROMPT)


def test_tiny_model_kv_on_cpu(tiny_path):
    check_against_cpu(tiny_path, PROMPT, offload_kqv=False)


@pytest.mark.parametrize("kv", ["q8_0", "q4_0"])
def test_tiny_model_quantized_kv(tiny_path, kv):
    cpu = _core.Model(tiny_path, n_ctx=256, op_offload=False, type_k=kv, type_v=kv)
    gpu = _core.Model(tiny_path, n_ctx=256, n_gpu_layers=-1, type_k=kv, type_v=kv)
    assert mean_kl(logits(cpu, PROMPT), logits(gpu, PROMPT)) <= KL_MAX


def test_tiny_model_small_batches_and_two_sequences(tiny_path):
    a, b = PROMPT[:20], PROMPT[20:40]
    tokens = np.array([t for pair in zip(a, b, strict=True) for t in pair], np.int32)
    pos = np.repeat(np.arange(20, dtype=np.int32), 2)
    slot = np.tile(np.array([0, 1], np.int32), 20)
    kw = dict(n_ctx=128, n_seq_max=2, n_batch=7)
    cpu = _core.Model(tiny_path, op_offload=False, **kw).decode(tokens, pos, slot)
    gpu = _core.Model(tiny_path, n_gpu_layers=4, **kw).decode(tokens, pos, slot)
    assert mean_kl(cpu, gpu) <= KL_MAX


def test_cuda_graphs_change_nothing(tiny_path, monkeypatch):
    runs = []
    for graphs in ("1", "0"):
        monkeypatch.setenv("SPLITLLM_CUDA_GRAPHS", graphs)
        runs.append(greedy(_core.Model(tiny_path, n_ctx=256, n_gpu_layers=-1), PROMPT))
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-5, atol=1e-5)
    assert runs[0][1] == runs[1][1]


def test_op_offload(tiny_path):
    m = _core.Model(tiny_path, n_ctx=256, n_gpu_layers=0)
    cpu = _core.Model(tiny_path, n_ctx=256, op_offload=False)
    assert mean_kl(logits(cpu, PROMPT), logits(m, PROMPT)) <= KL_MAX
    assert m.n_op_offload == 6


def test_embeddings_from_the_gpu(tiny_path):
    """The final hidden states come back from the GPU when the output layer is there."""
    n = len(PROMPT)
    args = (np.asarray(PROMPT, np.int32), np.arange(n, dtype=np.int32), np.zeros(n, np.int32))
    cpu = _core.Model(tiny_path, n_ctx=256, op_offload=False).decode(*args, embeddings=True)
    for ngl in (1, -1):
        got = _core.Model(tiny_path, n_ctx=256, n_gpu_layers=ngl).decode(*args, embeddings=True)
        assert got.shape == cpu.shape
        cos = (got * cpu).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(cpu, axis=1)
        assert cos.min() > 0.999, ngl


def test_state_from_gpu_caches(tiny_path):
    """K/V saved from caches on the GPU (kv_read through the host) continue a CPU model's text."""
    n = len(PROMPT)
    gpu = _core.Model(tiny_path, n_ctx=256, n_gpu_layers=-1)
    cpu = _core.Model(tiny_path, n_ctx=256, op_offload=False)
    ref = logits(cpu, PROMPT)
    logits(gpu, PROMPT)
    cpu.kv_write(0, n, gpu.kv_read(0, n))
    nxt = int(np.argmax(ref[-1]))
    assert mean_kl(logits(_core.Model(tiny_path, n_ctx=256, op_offload=False), PROMPT + [nxt])[-1:],
                   logits(cpu, [nxt], start=n)) <= KL_MAX
    gpu2 = _core.Model(tiny_path, n_ctx=256, n_gpu_layers=-1)
    gpu2.kv_write(0, n, cpu.kv_read(0, n))
    assert mean_kl(logits(cpu, [nxt], start=n), logits(gpu2, [nxt], start=n)) <= KL_MAX


def test_smollm2(smollm2_path):
    check_against_cpu(str(smollm2_path), [1] + PROMPT[1:])


def test_not_enough_memory_is_reported_before_allocating(smollm2_path, gpu):
    # 2^24 cells of KV cache on every layer (12 blocks: 150 GiB): beyond any GPU here.
    with pytest.raises(splitllm.CudaError, match=r"needs .* MiB is free"):
        _core.Model(str(smollm2_path), n_ctx=1 << 24, n_batch=64, n_gpu_layers=-1)
    # the device is still usable
    m = _core.Model(str(smollm2_path), n_ctx=256, n_gpu_layers=-1)
    assert np.isfinite(logits(m, PROMPT[:8])).all()


def test_causal_reranker_head_after_gpu_layers(tmp_path):
    """A Qwen3-Reranker-style head (cls.output on the last token's normed state) when the output
    layer is on the GPU: the rows come back to the host for the head, scores as on the CPU."""
    cfg = TinyConfig(arch="qwen3", n_layer=4, n_embd=256, n_head=8, n_head_kv=2, n_ff=512, seed=13)
    tm = make_weights(cfg)
    tm.weights["cls.output.weight"] = tm.weights["output.weight"][[100, 101]]
    path = tmp_path / "qwen3-rr.gguf"
    write_gguf(tm, path, weight_type="Q4_K", quantize=quantize,
               metadata={"qwen3.pooling_type": 4, "qwen3.classifier.output_labels": ["yes", "no"]})
    n = len(PROMPT)
    want = np.zeros(n, np.uint8)
    want[-1] = 1
    args = (np.asarray(PROMPT, np.int32), np.arange(n, dtype=np.int32), np.zeros(n, np.int32), want, None,
            True, True)  # embeddings, classify
    cpu = _core.Model(str(path), n_ctx=256, op_offload=False).decode(*args)
    gpu = _core.Model(str(path), n_ctx=256, n_gpu_layers=-1).decode(*args)
    assert cpu.shape == (1, 2) and abs(cpu.sum() - 1) < 1e-5
    assert np.abs(gpu - cpu).max() < 2e-3


def test_lora_scales_changed_on_the_gpu(tmp_path):
    """An adapter's B held on the GPU is refreshed when its scale changes (after CUDA graphs were
    captured with the old one): the GPU model then matches a CPU model loaded with the new scale."""
    from test_lora import random_pairs, write_lora

    cfg = TinyConfig(arch="llama", n_layer=4, n_embd=256, n_head=8, n_head_kv=2, n_ff=512, seed=8)
    path = tmp_path / "base.gguf"
    held = write_gguf(make_weights(cfg), path)
    names = ["blk.0.attn_q.weight", "blk.1.ffn_up.weight", "blk.3.attn_output.weight", "output.weight"]
    lora = str(tmp_path / "a.gguf")
    write_lora(tmp_path / "a.gguf", "llama", random_pairs(held, names, 8, 3), alpha=16.0)
    gpu = _core.Model(str(path), n_ctx=256, n_gpu_layers=-1, loras=[(lora, 1.0)])
    greedy(gpu, PROMPT)
    for scale in (0.5, 0.0, -1.0):
        gpu.set_lora_scales([scale])
        cpu = _core.Model(str(path), n_ctx=256, op_offload=False, loras=[(lora, scale)])
        ref_logits, ref_text = greedy(cpu, PROMPT)
        got_logits, got_text = greedy(gpu, PROMPT)
        assert mean_kl(ref_logits, got_logits) <= KL_MAX, scale
        assert got_text == ref_text, scale


@pytest.mark.parametrize("arch", ["lfm2", "granitehybrid", "granitehybrid-moe", "qwen35", "qwen3next",
                                  "falcon-h1"])
def test_tiny_recurrent_model_mixers_on_the_host(tmp_path, arch):
    """Recurrent mixers have no CUDA kernels yet: lfm2's short convolutions, granitehybrid's
    Mamba-2 layers, qwen35 / qwen3next's delta nets and gated attention, falcon-h1's attention and
    Mamba-2 side by side run on the host (the stream down and up around each); attention layers,
    feed-forwards and shared experts run on the GPU (routed experts on the host). Logits and greedy
    picks along the CPU's text as check_moe_against_cpu's, at 0, half and all."""
    from tiny_falcon_h1 import FalconConfig, write_falcon_gguf
    from tiny_lfm2 import Lfm2Config, write_lfm2_gguf
    from tiny_mamba2 import HybridConfig, write_hybrid_gguf
    from tiny_qwen35 import Qwen35Config, write_qwen35_gguf

    path = tmp_path / f"tiny-{arch}-q4k.gguf"
    if arch == "lfm2":
        cfg = Lfm2Config(n_embd=256, n_head=8, n_head_kv=2, n_ff=512, seed=10)
        write_lfm2_gguf(cfg, path, weight_type="Q4_K", quantize=quantize)
    elif arch in ("qwen35", "qwen3next"):
        moe = dict(qwen3next=True, n_expert=4) if arch == "qwen3next" else {}
        cfg = Qwen35Config(n_embd=256, n_ff=512, seed=11, **moe)
        write_qwen35_gguf(cfg, path, weight_type="Q8_0")
    elif arch == "falcon-h1":
        ssm = HybridConfig(n_layer=4, layer_types=("mamba",) * 4, n_embd=256, n_head=8, n_head_kv=2, n_ff=512,
                           key_length=32, n_group=2, tied_output=False, seed=15)
        write_falcon_gguf(FalconConfig(ssm=ssm), path, weight_type="Q8_0")
    else:
        moe = dict(n_expert=4, n_ff_shexp=256) if arch.endswith("moe") else {}
        cfg = HybridConfig(n_embd=256, n_head=8, n_head_kv=2, n_ff=256 if moe else 512, seed=11, **moe)
        write_hybrid_gguf(cfg, path, weight_type="Q4_K", quantize=quantize)
    check_moe_against_cpu(str(path), PROMPT)
