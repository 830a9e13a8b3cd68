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
