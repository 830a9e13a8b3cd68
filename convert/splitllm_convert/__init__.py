"""convert-hf: Hugging Face safetensors models to GGUF files that llama.cpp and splitllm load.

    from splitllm_convert import convert
    plan = convert("path/to/hf-model", "model.gguf", type="q4_k_m")

See ``pipeline.convert`` for the options and ``mix`` for which tensor gets which type.
"""

from splitllm_convert.arch import ARCHITECTURES
from splitllm_convert.errors import ConvertError
from splitllm_convert.mix import FILE_TYPES
from splitllm_convert.pipeline import ConvertPlan, TensorPlan, convert

__all__ = ["ARCHITECTURES", "FILE_TYPES", "ConvertError", "ConvertPlan", "TensorPlan", "convert"]
