"""convert-hf: Hugging Face safetensors models to GGUF files that llama.cpp and splitllm load.

Command line::

    convert-hf MODEL_DIR -o OUT.gguf --type q4_k_m [--force] [--dry-run] [--quiet] [--pre NAME]
               [--sentence-transformers-dense-modules]

Python::

    from splitllm_convert import convert
    plan = convert("path/to/hf-model", "model.gguf", type="q4_k_m")
    print(plan.format())

Input: ``config.json`` (BertModel and BertForMaskedLM (BERT embedding models, the masked-LM head
left out; see ``bert``), DeciLMForCausalLM (Llama-3.1-Nemotron NAS models; see ``deci``),
GemmaForCausalLM (Gemma 1; its tokenizer.model only, see ``gemma``),
Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3ForConditionalGeneration (its
text model; the vision tower is left out), Gemma3TextModel (EmbeddingGemma; its
sentence-transformers Dense modules with ``sentence_transformers_dense_modules``, see ``gemma``),
FalconH1ForCausalLM (Falcon-H1; see ``falcon_h1``), GraniteForCausalLM (Granite 3.x dense),
GraniteMoeHybridForCausalLM (Granite 4.0 H; see
``granite_hybrid``), LlamaForCausalLM, MistralForCausalLM, MixtralForCausalLM,
NemotronHForCausalLM (Nemotron-H, Nemotron Nano 2, Nemotron 3 Nano; see ``nemotron_h``), NomicBertModel
(nomic-embed-text; see ``nomic``), Olmo2ForCausalLM, Phi3ForCausalLM,
Qwen2ForCausalLM, Qwen3ForCausalLM, Qwen3MoeForCausalLM, SmolLM3ForCausalLM (Granite, OLMo 2 and
SmolLM3: see ``llama_variants``), XLMRobertaModel (bge-m3, multilingual-e5; see ``xlmr``); see
``registry``), weights in ``model.safetensors`` or shards with ``model.safetensors.index.json``
(F32, F16 or BF16), and the tokenizer: ``tokenizer.model`` (SentencePiece, preferred when present,
as llama.cpp does; OLMo 2: tokenizer.json only) or a byte-level BPE ``tokenizer.json``; for BERT and
Nomic BERT a WordPiece ``tokenizer.json`` (BERT: or ``vocab.txt``), for XLM-R its unigram
``sentencepiece.bpe.model``, and sentence-transformers' modules.json with its Pooling config (the
pooling type); tokenizer_config.json, generation_config.json (sampling defaults) and README.md
(model card) are read when present. special_tokens_map.json is not read: llama.cpp's converter
ignores it, and the special token ids must be the ones llama.cpp writes.

Output: GGUF v3 with llama.cpp's tensor names, metadata keys and q/k row order (its
convert_hf_to_gguf.py), Llama 3 rope scaling as the ``rope_freqs.weight`` tensor, and the
per-tensor types of llama.cpp's quantizer for the chosen ``--type`` (see ``mix``); the quantized
bytes come from splitllm's C++ quantizers, which match ggml's reference quantizers byte for byte.

``tokenizer.ggml.pre`` for BPE tokenizers is detected as described in ``pretok`` (llama.cpp's
hash of a fixed text for well-known models, else the tokenizer.json pre-tokenizer structure);
``--pre NAME`` overrides it.

The file is written tensor by tensor to a temporary file beside ``OUT`` and renamed at the end;
errors and Ctrl-C leave nothing behind. Bad input raises ``ConvertError`` naming the file,
tensor or key.

``quantize(src, dst, type)`` (``requantize``) is llama-quantize's job: a GGUF file (F32, F16, BF16,
or already quantized with ``allow_requantize``) to another file type, byte-identical to
llama.cpp's output; ``splitllm quantize`` is its command line.
"""

from splitllm_convert.errors import ConvertError
from splitllm_convert.mix import FILE_TYPES
from splitllm_convert.pipeline import ConvertPlan, TensorPlan, convert
from splitllm_convert.registry import ARCHITECTURES
from splitllm_convert.requantize import QuantizeError, QuantizePlan, quantize

__all__ = ["ARCHITECTURES", "FILE_TYPES", "ConvertError", "ConvertPlan", "QuantizeError", "QuantizePlan",
           "TensorPlan", "convert", "quantize"]
