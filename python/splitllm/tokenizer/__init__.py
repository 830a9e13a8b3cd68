"""Tokenizers built from GGUF metadata, with llama.cpp's semantics.

``tokenizer.ggml.model`` ``llama`` is SentencePiece BPE (run by ``sentencepiece``), ``gpt2`` is
byte-level BPE with the pre-tokenizer named by ``tokenizer.ggml.pre`` (run by ``tokenizers``),
``bert`` is WordPiece (llama.cpp's WPM, in ``wpm.py``), ``t5`` is SentencePiece unigram (llama.cpp's
UGM, in ``ugm.py``: T5 and the XLM-RoBERTa embedding models), ``gemma4`` is SentencePiece-style BPE
over raw UTF-8 (spaces as U+2581, <0xXX> byte tokens; ``bpe.SpmBpeEncoder``).
"""

from splitllm.tokenizer.core import StreamDecoder, Tokenizer
from splitllm.tokenizer.errors import TokenizerError
from splitllm.tokenizer.pretok import PRE_TOKENIZERS, PreTokenizer
from splitllm.tokenizer.vocab import TokenAttr, Vocab, load_vocab

__all__ = ["PRE_TOKENIZERS", "PreTokenizer", "StreamDecoder", "TokenAttr", "Tokenizer", "TokenizerError",
           "Vocab", "load_vocab"]
