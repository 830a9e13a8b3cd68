"""Which Architecture reads a config.json: the ``architectures`` it names, mapped to their classes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from splitllm_convert.arch import Architecture, Llama, Mistral, Mixtral, Phi3, Qwen2, Qwen3, Qwen3Moe
from splitllm_convert.bert import Bert
from splitllm_convert.bitnet import BitNet
from splitllm_convert.deci import Deci
from splitllm_convert.deepseek import DeepseekV2
from splitllm_convert.dense import (
    Cohere2,
    CommandR,
    Ernie4_5,
    Exaone,
    Exaone4,
    Glm4,
    Mistral3,
    Mistral3Multimodal,
    Qwen3VL,
)
from splitllm_convert.densevar import Apertus, Arcee, HunyuanDense, SeedOss, Starcoder2
from splitllm_convert.ernie_moe import Ernie4_5Moe
from splitllm_convert.errors import ConvertError
from splitllm_convert.falcon_h1 import FalconH1
from splitllm_convert.gemma import EmbeddingGemma, Gemma, Gemma2, Gemma3, Gemma3Multimodal
from splitllm_convert.gemma4 import Gemma4
from splitllm_convert.glm4moe import Glm4Moe
from splitllm_convert.gpt_oss import GptOss
from splitllm_convert.granite_hybrid import GraniteHybrid
from splitllm_convert.lfm2 import Lfm2, Lfm2Moe
from splitllm_convert.llama4 import Llama4
from splitllm_convert.llama_variants import Granite, Olmo2, SmolLM3
from splitllm_convert.minimax import MiniMaxM2, PhiMoe
from splitllm_convert.moe_archs import GraniteMoe, Olmoe, Qwen2Moe
from splitllm_convert.moe_variants import BailingMoeV2, Dots1, HunYuanMoE, SmallThinker
from splitllm_convert.nemotron_h import NemotronH
from splitllm_convert.nomic import NomicBert
from splitllm_convert.qwen3next import Qwen3Next
from splitllm_convert.qwen3vlmoe import Qwen3VLMoe
from splitllm_convert.qwen35 import Qwen35, Qwen35Moe
from splitllm_convert.rerank import BertReranker, XLMRobertaReranker
from splitllm_convert.xlmr import XLMRoberta

ARCHITECTURES: dict[str, type[Architecture]] = {
    n: cls
    for cls in (Bert, EmbeddingGemma, Gemma2, Gemma3, Gemma3Multimodal, Llama, Mistral, Mixtral, Phi3, Qwen2,
                Qwen3, Qwen3Moe, GptOss, Granite, Olmo2, SmolLM3, NomicBert, XLMRoberta, BertReranker,
                XLMRobertaReranker, Mistral3, Mistral3Multimodal, Glm4, Exaone4, Ernie4_5, Cohere2, Qwen3VL,
                CommandR, Exaone, Qwen2Moe, Olmoe, GraniteMoe, DeepseekV2, Lfm2, Gemma4, BitNet,
                SeedOss, Apertus, HunyuanDense, Arcee, Starcoder2, Glm4Moe, Ernie4_5Moe, Qwen3VLMoe,
                GraniteHybrid, NemotronH, Qwen35, FalconH1,
                Qwen35Moe, Llama4, Lfm2Moe, Dots1, BailingMoeV2, HunYuanMoE, SmallThinker, Qwen3Next,
                MiniMaxM2, PhiMoe, Gemma, Deci)
    for n in cls.hf_names
}


def architecture(cfg: dict[str, Any], config_path: Path) -> Architecture:
    """The Architecture for config.json's ``architectures[0]``; a clear error for anything else."""
    names = cfg.get("architectures")
    if not isinstance(names, list) or not names:
        raise ConvertError(f"{config_path}: no 'architectures' list; supported: {', '.join(ARCHITECTURES)}")
    cls = ARCHITECTURES.get(str(names[0]))
    if cls is None:
        raise ConvertError(
            f"{config_path}: architecture {names[0]!r} is not supported; "
            f"supported: {', '.join(ARCHITECTURES)}"
        )
    return cls(cfg, config_path)
