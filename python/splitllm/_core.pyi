"""Type stubs for the native module splitllm._core (one section per cpp/python/bind_*.cpp)."""

from typing import Any

import numpy as np

# --- bind_errors.cpp ---------------------------------------------------------------------------

class Error(RuntimeError): ...
class CudaError(Error): ...
class GGUFError(ValueError): ...

# --- bind_system.cpp ---------------------------------------------------------------------------

commit: str
cuda_built: bool

def hardware_threads() -> int: ...

# --- bind_gguf.cpp -----------------------------------------------------------------------------

class GGUFFile:
    """Memory-mapped GGUF file (versions 2 and 3). Raises GGUFError naming the file and field."""

    def __init__(self, path: str | bytes) -> None: ...
    @property
    def path(self) -> bytes: ...
    @property
    def version(self) -> int: ...
    @property
    def alignment(self) -> int: ...
    @property
    def data_offset(self) -> int: ...
    @property
    def file_size(self) -> int: ...
    @property
    def part_paths(self) -> list[bytes]:
        """The files of a split (its first part first; one path for a whole file)."""
    def metadata(self) -> dict[str, Any]:
        """All key/value pairs as Python values (arrays as lists, strings with surrogateescape)."""
    def tensor_infos(self) -> list[tuple[str, str, tuple[int, ...], int, int, int]]:
        """(name, type name, numpy element shape, absolute byte offset in its part, nbytes, part),
        in file order (a split's parts one after the other)."""
    def tensor(self, name: str | bytes) -> np.ndarray:
        """Read-only numpy view of a tensor's bytes; it keeps the mapping alive."""
    def advise_dontneed(self, name: str | bytes) -> None:
        """Drops the tensor's whole pages from the resident set; the view stays valid."""
    def get_int(self, key: str) -> int: ...
    def get_float(self, key: str) -> float: ...
    def get_bool(self, key: str, fallback: bool) -> bool: ...
    def get_str(self, key: str) -> str: ...

# --- bind_quant.cpp ----------------------------------------------------------------------------
# Block formats: the type table and the row-parallel quantizers. splitllm.quants wraps these with
# gguf-py's shape conventions.

def quant_type_info(type_id: int) -> tuple[str, int, int, bool, bool, bool, bool] | None:
    """(name, block_size, type_size, is_quantized, can_quantize, can_dequantize, takes_imatrix) of a
    ggml type id, or None. can_quantize: without an importance matrix; takes_imatrix: ggml's
    quantizer uses one."""
def quant_type_from_name(name: str) -> int | None:
    """ggml type id of a type name in any case ('q4_k', 'BF16'), or None."""
def quantize_rows(
    src: np.ndarray, type_id: int, n_threads: int = 0, imatrix: np.ndarray | None = None
) -> np.ndarray:
    """Quantizes a (rows, n) float32 array to a (rows, row bytes) uint8 array; n_threads 0 = all.
    imatrix: n importance weights (one per column) for the types whose ggml quantizer takes them,
    ignored by the others."""
def dequantize_rows(src: np.ndarray, type_id: int, n_threads: int = 0) -> np.ndarray:
    """Dequantizes a (rows, row bytes) uint8 array to a (rows, n) float32 array; n_threads 0 = all."""

# --- bind_model.cpp ----------------------------------------------------------------------------
# type_k / type_v name a KV cache type ("f16", "q8_0", ...); memory dicts are {name, weights, kv,
# buffers, overhead} per device, placement dicts {name, device, weight_bytes, kv_bytes, kv_device}.

def plan_memory(path: str | bytes, *, n_ctx: int = 4096, n_batch: int = 512, n_threads: int = 0,
                n_seq_max: int = 1, n_gpu_layers: int = 0, type_k: str = "f16", type_v: str = "f16",
                offload_kqv: bool = True, op_offload: bool = True, swa_full: bool = False,
                loras: list[tuple[str, float]] = []) -> dict[str, Any]:
    """What a Model with these settings would hold per device, from the GGUF header alone."""

class Model:
    def __init__(self, path: str | bytes, *, n_ctx: int = 4096, n_batch: int = 512, n_threads: int = 0,
                 n_seq_max: int = 1, n_gpu_layers: int = 0, type_k: str = "f16", type_v: str = "f16",
                 offload_kqv: bool = True, op_offload: bool = True, kv_rotate: bool = True,
                 swa_full: bool = False, loras: list[tuple[str, float]] = [], rope_scaling_type: int = -1,
                 rope_freq_base: float = 0.0, rope_freq_scale: float = 0.0, yarn_ext_factor: float = -1.0,
                 yarn_attn_factor: float = -1.0, yarn_beta_fast: float = -1.0, yarn_beta_slow: float = -1.0,
                 yarn_orig_ctx: int = 0,
                 kv_overrides: list[tuple[str, bool | int | float | str]] = []) -> None: ...
    def decode(self, tokens: np.ndarray, pos: np.ndarray, slot: np.ndarray,
               want_logits: np.ndarray | None = None, out: np.ndarray | None = None,
               embeddings: bool = False, classify: bool = False) -> np.ndarray:
        """Evaluates tokens at positions pos of sequence slots slot; returns float32 logits
        (n_wanted, n_vocab) for the tokens flagged in want_logits (all when None), or with
        embeddings the final hidden states after the output norm (n_wanted, n_embd). An encoder
        (config["encoder"]: bert, nomic-bert, gemma-embedding) gives embeddings only (gemma-embedding:
        before its dense projections, which Model applies after pooling), each slot's tokens of one call
        being one whole text at positions 0, 1, ... (slots < max(n_batch, n_seq_max)); with classify
        (a reranker: an encoder's first token, a causal reranker's last) each flagged token's
        classification scores (n_wanted, n_cls_out; qwen3: their softmax)."""
    @property
    def memory(self) -> list[dict[str, Any]]:
        """Bytes held per device: weights, kv, buffers, overhead."""
    @property
    def n_vocab(self) -> int: ...
    @property
    def n_embd(self) -> int: ...
    def kv_read(self, slot: int, n: int) -> bytes:
        """The K/V of cells [0, n) of a slot, every layer, as bytes."""
    def kv_write(self, slot: int, n: int, data: bytes) -> None:
        """Puts back what kv_read gave (cells [0, n))."""
    def kv_reusable(self, slot: int, n: int) -> int:
        """The longest prefix of a slot's n cached positions evaluation may continue from: n, or 0
        when the sliding-window cache no longer holds what the next token attends to."""
    @property
    def swa_cells(self) -> int:
        """Cells of the sliding-window layers' ring caches (0: none)."""
    @property
    def slot_ctx(self) -> int: ...
    @property
    def n_eval(self) -> int: ...
    @property
    def n_forward(self) -> int: ...
    @property
    def n_op_offload(self) -> int: ...
    def imatrix_start(self, process_output: bool = False) -> None:
        """Starts importance-matrix collection (llama-imatrix's): every decode adds the squared
        matmul inputs per weight; process_output: output.weight's too."""
    def imatrix_stop(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """Stops collection: [(weight name, sums (n_mat, n_per_row), counts (n_mat,))]."""
    @property
    def imatrix_active(self) -> bool: ...
    @property
    def warnings(self) -> list[str]: ...
    @property
    def lora_scales(self) -> list[float]:
        """The LoRA adapters' scales, one per entry of loras, as set last."""
    def set_lora_scales(self, scales: list[float]) -> None:
        """Sets every LoRA adapter's scale (one per entry of loras) for the decodes that follow;
        0 skips an adapter. The K/V already cached are left as they are."""
    @property
    def placement(self) -> list[dict[str, Any]]: ...
    @property
    def config(self) -> dict[str, Any]:
        """arch, n_layer, n_embd, n_head, n_head_kv, head_dim, n_ff, n_vocab, n_ctx_train, rms_eps,
        n_rot, rope_base, rope_freq_scale, rope_neox, n_swa, swa_layers, conv_layers and conv_l_cache
        (lfm2's short-convolution layers; granitehybrid's and nemotron_h's Mamba-2 layers, whose
        sizes ssm gives as [d_conv, d_inner, d_state, n_head, n_group], zeros without), recurrent (a
        per-sequence state beside the KV cache, which continues only where it stopped:
        kv_reusable(slot, n) is n or 0), encoder (an embedding
        model: bert, nomic-bert, gemma-embedding), learned_pos (position embeddings for n_ctx_train
        positions), n_cls_out (a reranker's classification outputs; 0: none), has_cls_out (the file holds a
        classification head, cls.output.weight)."""

# --- bind_cpu.cpp ------------------------------------------------------------------------------
# CPU kernels on numpy arrays, for tests and benchmarks: weight and cache rows are uint8 arrays
# of raw GGUF blocks, activations float32. `isa` is "scalar", "avx2", "avx512", "amx" or None (the
# active set); it is clamped to what the CPU supports.

def cpu_features() -> str:
    """CPU features the kernels can use, as a space-separated list."""
def cpu_isa() -> str:
    """Instruction set the CPU kernels use now."""
def cpu_detect_isa() -> str:
    """Best instruction set this CPU supports."""
def cpu_set_isa(isa: str) -> str:
    """Selects the kernels' instruction set (clamped to the CPU's); returns the one in effect."""
def cpu_usable_isa(isa: str) -> str:
    """The instruction set a call with this isa would run."""
def cpu_supports_weight_type(qtype: int) -> bool: ...
def cpu_act_type(qtype: int) -> int:
    """Type id of the activation format used with weights of this type."""
def cpu_act_row_bytes(qtype: int, K: int) -> int: ...
def cpu_quantize_acts(qtype: int, x: np.ndarray, *, isa: str | None = None) -> np.ndarray:
    """Float activations (n_tok, K) to the kernel format: uint8 (n_tok, row bytes)."""
def cpu_gemm(qtype: int, w: np.ndarray, acts: np.ndarray, *, isa: str | None = None, r0: int = 0,
             r1: int | None = None) -> np.ndarray:
    """Weight rows (uint8 blocks) times converted activations: (n_tok, n_rows); rows outside [r0, r1)
    are 0."""
def cpu_matmul(qtype: int, w: np.ndarray, x: np.ndarray, *, isa: str | None = None) -> np.ndarray:
    """x (n_tok, K) float32 times the weight rows: (n_tok, n_rows)."""
def cpu_attn_scores(qtype: int, q: np.ndarray, k_cache: np.ndarray, head_dim: int, *, scale: float = 1.0,
                    isa: str | None = None) -> np.ndarray:
    """scale * q (n_q, head_dim) . cache rows: (n_q, n_kv)."""
def cpu_attn_values(qtype: int, w: np.ndarray, v_cache: np.ndarray, head_dim: int, out: np.ndarray, *,
                    isa: str | None = None) -> np.ndarray:
    """out + w (n_q, n_kv) @ cache rows: (n_q, head_dim)."""
def cpu_store_kv(qtype: int, x: np.ndarray, *, isa: str | None = None) -> np.ndarray:
    """Float rows (n, head_dim) to KV-cache rows: uint8 (n, row bytes)."""
def cpu_time_gemm(qtype: int, w: np.ndarray, n_tok: int, *, isa: str | None = None, threads: int = 1,
                  copies: int = 1, min_seconds: float = 0.1, reps: int = 3) -> tuple[float, float]:
    """Best (gemm seconds, activation conversion seconds) for the weight rows and n_tok random tokens."""
def cpu_time_attention(qtype: int, n_q: int, n_kv: int, head_dim: int, *, isa: str | None = None,
                       min_seconds: float = 0.1, reps: int = 3) -> float:
    """Best seconds of attn_scores + attn_values over one KV head."""

# --- bind_cuda.cpp -----------------------------------------------------------------------------
# GPU information, and single backend operations on device "cpu" or "gpu" (CUDA0, or FAKEGPU0
# with SPLITLLM_FAKE_GPU=1) for the op-by-op tests in tests/gpu. Weights and caches are uint8
# arrays of raw GGUF blocks.

def gpu_info() -> dict[str, Any]:
    """available, name, description, free_bytes, total_bytes, reason (why none)."""
def gpu_op_matmul(device: str, qtype: int, w: np.ndarray, x: np.ndarray, *, bias: np.ndarray | None = None,
                  y0: np.ndarray | None = None, vec_tokens: int = 8) -> np.ndarray: ...
def gpu_op_glu(device: str, type_gate: int, gate: np.ndarray, type_up: int, up: np.ndarray, x: np.ndarray,
               *, vec_tokens: int = 8, gelu: bool = False) -> np.ndarray: ...
def gpu_op_add(device: str, y: np.ndarray, x: np.ndarray, scale: float = 1.0) -> np.ndarray: ...
def gpu_op_rms_norm(device: str, x: np.ndarray, w: np.ndarray, eps: float,
                    layer: bool = False) -> np.ndarray: ...
def gpu_op_rope(device: str, q: np.ndarray, k: np.ndarray, pos: np.ndarray, *, n_head: int, n_head_kv: int,
                head_dim: int, n_rot: int, base: float, freq_scale: float = 1.0, neox: bool = False,
                freq_factors: np.ndarray | None = None, swa: bool = False, base_swa: float = 10000.0,
                freq_scale_swa: float = 1.0) -> tuple[np.ndarray, np.ndarray]: ...
def gpu_op_attention(device: str, q: np.ndarray, k: np.ndarray, v: np.ndarray, pos: np.ndarray,
                     slot: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, *, n_head: int,
                     n_head_kv: int, head_dim: int, n_slots: int, slot_ctx: int, type_k: str = "f16",
                     type_v: str = "f16", attn_vec_tokens: int = 8, graphs: bool = False,
                     scale: float = 0.0, softcap: float = 0.0, window: int = 0, ring: bool = False,
                     sinks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...
def gpu_op_hadamard(device: str, x: np.ndarray) -> np.ndarray:
    """Each row rotated block by block by the orthonormal Hadamard matrix (KV cache rotation)."""
def gpu_op_get_rows(device: str, qtype: int, table: np.ndarray, tokens: np.ndarray) -> np.ndarray: ...
def gpu_blocks_dequantize(qtype: int, rows: np.ndarray) -> np.ndarray:
    """Rows decoded by the CUDA block readers compiled for the host: (n_rows, K)."""
def gpu_blocks_matvec(qtype: int, w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The CUDA mat-vec arithmetic (int8 activations, dp4a groups) on the host: (n_tok, n_rows)."""

# --- bind_sample.cpp ---------------------------------------------------------------------------

class SamplerParams:
    """Sampler settings (see cpp/sample/sampler.h)."""

    temperature: float
    top_k: int
    top_p: float
    min_p: float
    repeat_penalty: float
    repeat_last_n: int
    frequency_penalty: float
    presence_penalty: float
    logit_bias: list[tuple[int, float]]
    typical_p: float
    mirostat: int
    mirostat_tau: float
    mirostat_eta: float
    xtc_probability: float
    xtc_threshold: float
    top_n_sigma: float
    dynatemp_range: float
    dynatemp_exponent: float
    dry_multiplier: float
    dry_base: float
    dry_allowed_length: int
    dry_penalty_last_n: int
    dry_breakers: list[tuple[int, list[int]]]
    server_chain: bool
    def __init__(self) -> None: ...

class Sampler:
    """Token sampler: penalty history and random state."""

    def __init__(self, params: SamplerParams, n_vocab: int, seed: int) -> None: ...
    def reset(self, seed: int) -> None:
        """Clears the penalty history, reseeds the generators and sets mirostat's mu to 2 * tau."""
    def accept(self, token: int) -> None:
        """Adds a token to the penalty history (the window keeps the last repeat_last_n) and DRY's."""
    def accept_prompt(self, tokens: list[int]) -> None:
        """The prompt's tokens: DRY's history takes them (the penalty window does not)."""
    def sample(self, logits: np.ndarray) -> int:
        """Picks the next token from logits (n_vocab float32, left untouched). Does not accept it."""
    def probs(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(int32 ids, float32 probabilities) the draw would use, most probable first."""
    def adjusted(self, logits: np.ndarray) -> np.ndarray:
        """The logits after logit_bias, the penalties and DRY (float32, NaN as -inf)."""
    @property
    def n_vocab(self) -> int: ...
    @property
    def general(self) -> bool:
        """True when the general path (llama.cpp's array operations replayed) picks the tokens."""
    @property
    def mirostat_mu(self) -> float:
        """Mirostat's current mu (2 * tau while mirostat is off)."""
    @property
    def dry(self) -> bool:
        """True when DRY runs (its settings turn it on and mirostat is off)."""

class GrammarRules:
    """A parsed GBNF grammar (see cpp/sample/grammar.h); sl.Error on a bad one."""

    def __init__(self, text: str, root: str = "root") -> None: ...
    @property
    def n_rules(self) -> int: ...

class GrammarVocab:
    """Each token's text as the grammar sees it, and the end-of-generation tokens."""

    def __init__(self, pieces: list[bytes], eog: list[int]) -> None: ...
    @property
    def n_vocab(self) -> int: ...

class Grammar:
    """The matching state of one generation."""

    def __init__(self, rules: GrammarRules) -> None: ...
    def copy(self) -> Grammar: ...
    def allows(self, vocab: GrammarVocab, token: int) -> bool: ...
    def accept(self, vocab: GrammarVocab, token: int) -> None: ...
    def allowed(self, vocab: GrammarVocab) -> np.ndarray:
        """Boolean mask over the vocabulary: the tokens that may come next."""
    @property
    def complete(self) -> bool: ...
    @property
    def finished(self) -> bool: ...
