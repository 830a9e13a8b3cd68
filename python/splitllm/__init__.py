"""splitllm: run quantized LLMs on whatever memory you have.

GGUF files with k-quant weights, a C++/CUDA core, and a Python API that follows
llama-cpp-python's ``Llama``.
"""

from splitllm import _core, quants
from splitllm._core import CudaError, Error, GGUFError
from splitllm.gguf_file import GGUFFile, GGUFTensorInfo
from splitllm.grammar import Grammar
from splitllm.model import LLAMA_DEFAULT_SEED, CompletionChunk, Model
from splitllm.sampling import SamplingParams

__version__ = "0.1.0"


def __getattr__(name: str):  # noqa: ANN202
    # splitllm.quantize (llama-quantize's job) lives with the converter, which imports gguf-py:
    # loaded on first use
    if name == "quantize":
        from splitllm_convert.requantize import quantize

        return quantize
    raise AttributeError(f"module 'splitllm' has no attribute {name!r}")


__all__ = [
    "LLAMA_DEFAULT_SEED",
    "CompletionChunk",
    "CudaError",
    "Error",
    "GGUFError",
    "GGUFFile",
    "GGUFTensorInfo",
    "Grammar",
    "Model",
    "SamplingParams",
    "__version__",
    "_core",
    "quantize",
    "quants",
]
