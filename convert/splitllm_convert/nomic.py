"""Nomic BERT encoders (nomic-embed-text-v1 / v1.5): llama.cpp's NomicBertModel (convert_hf_to_gguf.py)
writes them as ``nomic-bert``.

- The weights of Nomic's NomicBertModel (trust_remote_code), at the top level or under ``bert.``:
  ``embeddings.word_embeddings`` / ``token_type_embeddings`` (no position embeddings: rotary),
  ``emb_ln``, and per layer the fused ``attn.Wqkv`` (q, k, v rows in that order, kept fused as
  ``attn_qkv``), ``attn.out_proj``, ``norm1``, ``mlp.fc11`` (``ffn_up``), ``mlp.fc12``
  (``ffn_gate``: Nomic computes ``fc2(fc11(x) * silu(fc12(x)))``), ``mlp.fc2`` and ``norm2``
  (post-LayerNorms, as BERT's). No biases besides the LayerNorms'.
- config.json is read as it is (AutoConfig cannot read a trust_remote_code model without running
  its code, so llama.cpp falls back to the file): llama.cpp's checks are kept and a model that
  fails one is refused, naming the key: SwiGLU, non-causal, no q/k/v or feed-forward biases,
  post-norm, rotary over the whole head (``rotary_emb_fraction`` 1.0), not interleaved (NEOX), no
  xPos (``rotary_emb_scale_base`` null); mixtures of experts (nomic-embed-text-v2-moe,
  ``moe_every_n_layers``) are refused.
- ``context_length`` as llama.cpp sets it: 2048 for n_positions 8192 trained on 2048
  (max_trained_positions), 512 for 2048 / 2048; any other pair is refused.
- ``rope.freq_base`` from ``rotary_emb_base``; the pooling type from sentence-transformers'
  modules; the WordPiece vocabulary of ``bert`` (tokenizer.json must exist: llama.cpp reads the
  tokenizer type from it), or for a Unigram tokenizer.json the XLM-R vocabulary of ``xlmr``.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

from splitllm_convert.arch import Architecture, TensorRule, _positive, _require, logger
from splitllm_convert.bert import EncoderHparams, _classifier_labels, pooling_type, wordpiece_vocab
from splitllm_convert.errors import ConvertError
from splitllm_convert.hfdir import read_json
from splitllm_convert.vocab import Vocab
from splitllm_convert.xlmr import SPM_FILE, xlmr_vocab

# llama.cpp's TextModel.find_hparam lists: the first key present wins
EMBD_KEYS = ("hidden_size", "n_embd", "dim")
LAYER_KEYS = ("n_layers", "num_hidden_layers", "n_layer", "num_layers")
HEAD_KEYS = ("num_attention_heads", "n_head", "n_heads")
FF_KEYS = ("prefix_dense_intermediate_size", "dense_intermediate_size", "intermediate_size", "n_inner",
           "hidden_dim")  # fmt: skip
CTX_KEYS = ("max_position_embeddings", "n_ctx", "n_positions", "max_length", "max_sequence_length",
            "model_max_length")  # fmt: skip
EPS_KEYS = ("layer_norm_eps", "layer_norm_epsilon", "norm_epsilon")
THETA_KEYS = ("global_rope_theta", "rope_global_theta", "rope_theta_global", "rope_theta", "rotary_emb_base")
# (n_positions, max_trained_positions) -> the context llama.cpp writes
CONTEXTS = {(8192, 2048): 2048, (2048, 2048): 512}  # nomic-embed-text v1 / v1.5; v2
# keys llama.cpp asserts on (a key left out fails there too), and the value it wants
REQUIRED = {"activation_function": "swiglu", "causal": False, "qkv_proj_bias": False, "mlp_fc1_bias": False,
            "mlp_fc2_bias": False, "prenorm": False, "rotary_emb_fraction": 1.0,
            "rotary_emb_interleaved": False, "rotary_emb_scale_base": None}  # fmt: skip
WHY = {"activation_function": "llama.cpp's nomic-bert computes a SwiGLU feed-forward",
       "causal": "nomic-bert attends both ways", "qkv_proj_bias": "nomic-bert has no biases",
       "mlp_fc1_bias": "nomic-bert has no biases", "mlp_fc2_bias": "nomic-bert has no biases",
       "prenorm": "nomic-bert normalizes after each block",
       "rotary_emb_fraction": "nomic-bert rotates whole heads",
       "rotary_emb_interleaved": "nomic-bert rotates the two halves of a head (NEOX)",
       "rotary_emb_scale_base": "nomic-bert has no xPos scaling"}  # fmt: skip
# llama.cpp asserts these with `is`, the others with ==
IDENTITY = ("causal", "prenorm", "rotary_emb_interleaved", "rotary_emb_scale_base")
# settings of Nomic's code that llama.cpp does not check, and the value it computes with
UNCHECKED = {"use_rms_norm": False, "parallel_block": False}


def _find(cfg: dict[str, Any], keys: tuple[str, ...], path: Path) -> int:
    """find_hparam: the value of the first key present, which must be a positive integer."""
    key = next((k for k in keys if k in cfg), None)
    if key is None:
        raise ConvertError(f"{path}: none of {', '.join(repr(k) for k in keys)} is set")
    return _require(cfg, key, path)


class NomicBert(EncoderHparams, Architecture):
    """NomicBertModel: a BERT encoder with rotary positions, a fused q/k/v projection and SwiGLU."""

    hf_names = ("NomicBertModel",)
    gguf_arch = "nomic-bert"
    rules = ()
    ignored = ()
    skipped = ("cls.predictions.", "cls.seq_relationship.")

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        self.cfg = cfg
        if cfg.get("moe_every_n_layers"):
            raise ConvertError(
                f"{config_path}: 'moe_every_n_layers' is {cfg['moe_every_n_layers']!r}: a mixture of experts "
                "(llama.cpp's nomic-bert-moe), which splitllm does not run"
            )
        for key, want in REQUIRED.items():
            if key not in cfg:
                raise ConvertError(
                    f"{config_path}: '{key}' is missing; llama.cpp requires {want!r} ({WHY[key]})"
                )
            if cfg[key] is not want if key in IDENTITY else cfg[key] != want:
                raise ConvertError(f"{config_path}: '{key}' is {cfg[key]!r}, not {want!r}: {WHY[key]}")
        for key, want in UNCHECKED.items():
            if cfg.get(key, want) != want:
                raise ConvertError(
                    f"{config_path}: '{key}' is {cfg[key]!r}; splitllm's nomic-bert needs {want!r}"
                )
        for key in ("rope_scaling", "rope_parameters"):
            if cfg.get(key):
                raise ConvertError(f"{config_path}: '{key}' is set; nomic-bert has no rope scaling")
        if cfg.get("rotary_scaling_factor") is not None:  # dynamic NTK, past max_trained_positions only
            logger.warning("%s: rotary_scaling_factor (dynamic NTK scaling past the trained context) is not "
                           "carried into GGUF, as llama.cpp", config_path)  # fmt: skip
        self.n_embd = _find(cfg, EMBD_KEYS, config_path)
        self.n_layer = _find(cfg, LAYER_KEYS, config_path)
        self.n_head = self.n_head_kv = _find(cfg, HEAD_KEYS, config_path)
        self.n_ff = _find(cfg, FF_KEYS, config_path)
        self.n_vocab = _require(cfg, "vocab_size", config_path)
        self.n_types = _require({"type_vocab_size": 1, **cfg}, "type_vocab_size", config_path)
        self.n_ctx = self._context(config_path)
        eps_key = next((k for k in EPS_KEYS if k in cfg), EPS_KEYS[1])
        self.norm_eps = _positive(cfg, eps_key, config_path)
        theta_key = next((k for k in THETA_KEYS if k in cfg), THETA_KEYS[-1])
        self.theta = _positive(cfg, theta_key, config_path)
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise ConvertError(
                f"{config_path}: hidden size {self.n_embd} is not {self.n_head} heads of an even width"
            )
        self.head_dim = self.n_embd // self.n_head
        self.tied, self.rope = False, {"rope_type": "default"}
        self.n_expert = self.n_expert_used = self.n_ff_exp = 0
        self.pooling = pooling_type(config_path.parent)
        self.labels = _classifier_labels(cfg, config_path)

    def _context(self, config_path: Path) -> int:
        """NomicBertModel.__init__ rewrites n_positions, then TextModel reads the first of CTX_KEYS."""
        npos = _require(self.cfg, "n_positions", config_path)
        mtp = self.cfg.get("max_trained_positions", 2048)
        if (npos, mtp) not in CONTEXTS:
            raise ConvertError(
                f"{config_path}: 'n_positions' {npos} with 'max_trained_positions' {mtp!r} is not a context "
                "llama.cpp knows (8192 / 2048: nomic-embed-text v1 and v1.5; 2048 / 2048)"
            )
        cfg = {**self.cfg, "n_positions": CONTEXTS[npos, mtp]}
        return _find(cfg, CTX_KEYS, config_path)

    def dims(self) -> dict[str, int]:
        return {**super().dims(), "qkv": 3 * self.n_embd, "types": self.n_types}

    def table(self, available: Collection[str]) -> tuple[tuple[TensorRule, ...], tuple[str, ...]]:
        p = "bert." if "bert.embeddings.word_embeddings.weight" in available else ""
        E, L, B = p + "embeddings.", p + "encoder.layers.{bid}.", "blk.{bid}."

        def layer_norm(hf: str, gguf: str) -> list[TensorRule]:
            return [TensorRule(hf + ".weight", gguf + ".weight", ("embd",)),
                    TensorRule(hf + ".bias", gguf + ".bias", ("embd",))]  # fmt: skip

        rules = (
            TensorRule(E + "word_embeddings.weight", "token_embd.weight", ("vocab", "embd")),
            TensorRule(E + "token_type_embeddings.weight", "token_types.weight", ("types", "embd")),
            *layer_norm(p + "emb_ln", "token_embd_norm"),
            TensorRule(L + "attn.Wqkv.weight", B + "attn_qkv.weight", ("qkv", "embd")),
            TensorRule(L + "attn.out_proj.weight", B + "attn_output.weight", ("embd", "embd")),
            *layer_norm(L + "norm1", B + "attn_output_norm"),
            TensorRule(L + "mlp.fc11.weight", B + "ffn_up.weight", ("ff", "embd")),
            TensorRule(L + "mlp.fc12.weight", B + "ffn_gate.weight", ("ff", "embd")),
            TensorRule(L + "mlp.fc2.weight", B + "ffn_down.weight", ("embd", "ff")),
            *layer_norm(L + "norm2", B + "layer_output_norm"),
        )
        return rules, ()

    def read_vocab(self, model_dir: Path, pre: str | None) -> Vocab:
        """NomicBertModel.set_vocab: tokenizer.json's model type picks the vocabulary."""
        path = model_dir / "tokenizer.json"
        if not path.is_file():
            raise ConvertError(
                f"{model_dir}: no tokenizer.json (llama.cpp reads NomicBert's tokenizer type from it)"
            )
        kind = (read_json(path).get("model") or {}).get("type")
        if kind == "WordPiece":
            return wordpiece_vocab(model_dir, self.n_vocab, self.n_types, pre)
        if kind == "Unigram":
            return xlmr_vocab(model_dir, self.n_vocab, self.n_types)
        raise ConvertError(
            f"{path}: a {kind} tokenizer; llama.cpp's NomicBert reads WordPiece or Unigram (with {SPM_FILE})"
        )
