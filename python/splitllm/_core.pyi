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
    def metadata(self) -> dict[str, Any]:
        """All key/value pairs as Python values (arrays as lists, strings with surrogateescape)."""
    def tensor_infos(self) -> list[tuple[str, str, tuple[int, ...], int, int]]:
        """(name, type name, numpy element shape, absolute byte offset, nbytes), in file order."""
    def tensor(self, name: str | bytes) -> np.ndarray:
        """Read-only numpy view of a tensor's bytes; it keeps the mapping alive."""
    def advise_dontneed(self, name: str | bytes) -> None:
        """Drops the tensor's whole pages from the resident set; the view stays valid."""
    def get_int(self, key: str) -> int: ...
    def get_float(self, key: str) -> float: ...
    def get_bool(self, key: str, fallback: bool) -> bool: ...
    def get_str(self, key: str) -> str: ...

# --- bind_cuda.cpp -----------------------------------------------------------------------------
# GPU information, and single backend operations on device "cpu" or "gpu" (CUDA0, or FAKEGPU0
# with SPLITLLM_FAKE_GPU=1) for the op-by-op tests in tests/gpu. Weights and caches are uint8
# arrays of raw GGUF blocks.

def gpu_info() -> dict[str, Any]:
    """available, name, description, free_bytes, total_bytes, reason (why none)."""
def gpu_op_matmul(device: str, qtype: int, w: np.ndarray, x: np.ndarray, *, bias: np.ndarray | None = None,
                  y0: np.ndarray | None = None, vec_tokens: int = 8) -> np.ndarray: ...
def gpu_op_swiglu(device: str, type_gate: int, gate: np.ndarray, type_up: int, up: np.ndarray, x: np.ndarray,
                  *, vec_tokens: int = 8) -> np.ndarray: ...
def gpu_op_rms_norm(device: str, x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray: ...
def gpu_op_rope(device: str, q: np.ndarray, k: np.ndarray, pos: np.ndarray, *, n_head: int, n_head_kv: int,
                head_dim: int, n_rot: int, base: float, freq_scale: float = 1.0, neox: bool = False,
                freq_factors: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]: ...
def gpu_op_attention(device: str, q: np.ndarray, k: np.ndarray, v: np.ndarray, pos: np.ndarray,
                     slot: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, *, n_head: int,
                     n_head_kv: int, head_dim: int, n_slots: int, slot_ctx: int, type_k: str = "f16",
                     type_v: str = "f16", attn_vec_tokens: int = 8,
                     graphs: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...
def gpu_op_get_rows(device: str, qtype: int, table: np.ndarray, tokens: np.ndarray) -> np.ndarray: ...
def gpu_blocks_dequantize(qtype: int, rows: np.ndarray) -> np.ndarray:
    """Rows decoded by the CUDA block readers compiled for the host: (n_rows, K)."""
def gpu_blocks_matvec(qtype: int, w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The CUDA mat-vec arithmetic (int8 activations, dp4a groups) on the host: (n_tok, n_rows)."""
