"""BERT encoders (embedding models: sentence-transformers' MiniLM, BGE, E5): the table, metadata
and WordPiece vocabulary llama.cpp's BertModel (convert_hf_to_gguf.py) writes, on the
Architecture machinery of ``arch``.

- BertModel and BertForMaskedLM (its masked-LM head ``cls.*`` left out, as llama.cpp does), with
  the weights under ``bert.`` or at the top level (sentence-transformers saves them without the
  prefix); the pooler and the ``position_ids`` buffer are left out; TF-era LayerNorm ``gamma`` /
  ``beta`` are read as weight / bias.
- ``bert.attention.causal`` false, ``bert.pooling_type`` from sentence-transformers' modules.json
  and its Pooling module's config.json (mean, cls or last token), token_type_count.
- The vocabulary in llama.cpp's "phantom space" form: ``##x`` -> ``x``, any other token
  ``\u2581`` + token, control tokens ([CLS], [SEP], ...) as they are; special ids and add_* flags
  as gguf-py's SpecialVocab reads them; the normalizer's lowercase / strip_accents (without
  them llama.cpp neither lowercases nor strips accents).

config.json is read as llama.cpp reads it through transformers' AutoConfig: keys left out take
BertConfig's defaults. A directory with vocab.txt and no tokenizer.json is read as transformers
builds its fast tokenizer from it (tokenizer_config.json's do_lower_case, strip_accents,
tokenize_chinese_chars and special tokens); llama.cpp's converter would write no normalizer keys
and no special ids for it.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from hashlib import sha256
from pathlib import Path
from typing import Any

from gguf import GGUFWriter, PoolingType, TokenType

from splitllm_convert.arch import Architecture, TensorRule, _positive, _require, logger
from splitllm_convert.errors import ConvertError
from splitllm_convert.hfdir import read_json
from splitllm_convert.pretok import CHECK_TEXT, hf_tokenizer
from splitllm_convert.vocab import Vocab, _content, _optional_json, _special_tokens, looks_special

# transformers' BertConfig defaults, for keys config.json leaves out
BERT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "hidden_act": "gelu", "max_position_embeddings": 512, "type_vocab_size": 2,
    "layer_norm_eps": 1e-12, "position_embedding_type": "absolute", "is_decoder": False,
}  # fmt: skip
# llama.cpp computes the feed-forward with ggml_gelu (the tanh approximation) whatever config.json says
GELU_ACTS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu_python")
# sha256 of the ids of pretok.CHECK_TEXT -> tokenizer.ggml.pre (llama.cpp's table); llama.cpp's
# WordPiece tokenizer does not read the name, so another vocabulary is written as "default"
BERT_HASHES = {
    # bge-small-en-v1.5's (and nomic-embed's) vocabulary: llama.cpp's table names it "bert-bge", then
    # a later entry for the same hash "jina-v2-en", which is what its converter writes
    "0876d13b50744004aa9aeae05e7b0647eac9d801b5ba4668afc01e709c15e19f": "jina-v2-en",
    "8e62295832751ca1e8f92f2226f403dea30dc5165e448b5bfa05af5340c64ec7": "bert-bge-large",  # bge-large-zh-v1.5
}
POOLING_MODES = {"mean": PoolingType.MEAN, "cls": PoolingType.CLS, "lasttoken": PoolingType.LAST}


def _bert_rules(prefix: str, norm: tuple[str, str]) -> tuple[TensorRule, ...]:
    """BERT's table (gguf-py's tensor_mapping): ``prefix`` is "bert." or ""; ``norm`` the LayerNorm
    parameter names, ("weight", "bias") or the TF-era ("gamma", "beta")."""
    E, L, B = prefix + "embeddings.", prefix + "encoder.layer.{bid}.", "blk.{bid}."

    def dense(hf: str, gguf: str, rows: str, cols: str) -> list[TensorRule]:
        return [TensorRule(hf + ".weight", gguf + ".weight", (rows, cols)),
                TensorRule(hf + ".bias", gguf + ".bias", (rows,))]  # fmt: skip

    def layer_norm(hf: str, gguf: str) -> list[TensorRule]:
        return [TensorRule(f"{hf}.{norm[0]}", gguf + ".weight", ("embd",)),
                TensorRule(f"{hf}.{norm[1]}", gguf + ".bias", ("embd",))]  # fmt: skip

    return (
        TensorRule(E + "word_embeddings.weight", "token_embd.weight", ("vocab", "embd")),
        TensorRule(E + "token_type_embeddings.weight", "token_types.weight", ("types", "embd")),
        TensorRule(E + "position_embeddings.weight", "position_embd.weight", ("ctx", "embd")),
        *layer_norm(E + "LayerNorm", "token_embd_norm"),
        *dense(L + "attention.self.query", B + "attn_q", "q", "embd"),
        *dense(L + "attention.self.key", B + "attn_k", "kv", "embd"),
        *dense(L + "attention.self.value", B + "attn_v", "kv", "embd"),
        *dense(L + "attention.output.dense", B + "attn_output", "embd", "q"),
        *layer_norm(L + "attention.output.LayerNorm", B + "attn_output_norm"),
        *dense(L + "intermediate.dense", B + "ffn_up", "ff", "embd"),
        *dense(L + "output.dense", B + "ffn_down", "embd", "ff"),
        *layer_norm(L + "output.LayerNorm", B + "layer_output_norm"),
    )


class EncoderHparams:
    """add_hparams of the encoders, as llama.cpp's BertModel.set_gguf_parameters: TextModel's keys
    (no num_key_value_heads; rope.freq_base only where ``theta`` is set, as Nomic's config.json
    has it and BertConfig has not), then causal attention off, the pooling type and the
    classifier's labels. Before Architecture in the bases."""

    n_layer: int
    n_ctx: int
    n_embd: int
    n_ff: int
    n_head: int
    norm_eps: float
    pooling: PoolingType | None
    labels: list[str]
    theta: float | None = None

    def add_hparams(self, w: GGUFWriter) -> None:
        w.add_block_count(self.n_layer)
        w.add_context_length(self.n_ctx)
        w.add_embedding_length(self.n_embd)
        w.add_feed_forward_length(self.n_ff)
        w.add_head_count(self.n_head)
        if self.theta is not None:
            w.add_rope_freq_base(self.theta)
        w.add_layer_norm_eps(self.norm_eps)
        w.add_causal_attention(False)
        if self.pooling is not None:
            w.add_pooling_type(self.pooling)
        if self.labels:
            w.add_classifier_output_labels(self.labels)


class Bert(EncoderHparams, Architecture):
    """BertModel / BertForMaskedLM: post-norm encoder layers, absolute position and token type
    embeddings, biases everywhere, bidirectional attention, GELU feed-forward."""

    hf_names = ("BertModel", "BertForMaskedLM")
    gguf_arch = "bert"
    rules = _bert_rules("", ("weight", "bias"))
    skipped = ("cls.predictions.", "cls.seq_relationship.")  # the masked-LM and next-sentence heads

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        self.cfg = cfg = {**BERT_DEFAULTS, **cfg}
        self.n_embd = _require(cfg, "hidden_size", config_path)
        self.n_layer = _require(cfg, "num_hidden_layers", config_path)
        self.n_head = self.n_head_kv = _require(cfg, "num_attention_heads", config_path)
        self.n_ff = _require(cfg, "intermediate_size", config_path)
        self.n_vocab = _require(cfg, "vocab_size", config_path)
        self.n_ctx = _require(cfg, "max_position_embeddings", config_path)
        self.n_types = _require(cfg, "type_vocab_size", config_path)
        self.norm_eps = _positive(cfg, "layer_norm_eps", config_path)
        if self.n_embd % self.n_head:
            raise ConvertError(
                f"{config_path}: hidden_size {self.n_embd} is not a multiple of "
                f"num_attention_heads {self.n_head}"
            )
        self.head_dim = self.n_embd // self.n_head
        self.tied, self.rope = False, {"rope_type": "default"}
        self.n_expert = self.n_expert_used = self.n_ff_exp = 0
        if cfg["position_embedding_type"] != "absolute":
            raise ConvertError(
                f"{config_path}: 'position_embedding_type' is {cfg['position_embedding_type']!r}; "
                "llama.cpp's bert has absolute position embeddings only"
            )
        if cfg["hidden_act"] not in GELU_ACTS:
            raise ConvertError(
                f"{config_path}: 'hidden_act' is {cfg['hidden_act']!r}; llama.cpp's bert computes GELU "
                f"(supported: {', '.join(GELU_ACTS)})"
            )
        if cfg["hidden_act"] not in ("gelu", "gelu_python"):  # GGUF has no key for the GELU's form
            logger.warning("%s: 'hidden_act' is %r (tanh GELU); splitllm computes bert's GELU exactly (erf) "
                           "and llama.cpp from a float16 table: about 1e-3 from this model's own outputs",
                           config_path, cfg["hidden_act"])
        if cfg["is_decoder"]:
            raise ConvertError(f"{config_path}: 'is_decoder' is true; llama.cpp's bert attends both ways")
        self.pooling = pooling_type(config_path.parent)
        self.labels = _classifier_labels(cfg, config_path)

    def dims(self) -> dict[str, int]:
        return {**super().dims(), "ctx": self.n_ctx, "types": self.n_types}

    def table(self, available: Collection[str]) -> tuple[tuple[TensorRule, ...], tuple[str, ...]]:
        prefix = "bert." if "bert.embeddings.word_embeddings.weight" in available else ""
        norm = ("gamma", "beta") if prefix + "embeddings.LayerNorm.gamma" in available else ("weight", "bias")
        ignored = tuple(
            prefix + n for n in ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")
        )
        return _bert_rules(prefix, norm), ignored

    def read_vocab(self, model_dir: Path, pre: str | None) -> Vocab:
        return wordpiece_vocab(model_dir, self.n_vocab, self.n_types, pre)



def _classifier_labels(cfg: dict[str, Any], config_path: Path) -> list[str]:
    """config.json's id2label in id order, unless it is transformers' two placeholders (as llama.cpp)."""
    labels = cfg.get("id2label")
    if not labels:
        return []
    try:
        by_id = sorted((int(k), str(v)) for k, v in labels.items())
    except (AttributeError, TypeError, ValueError):
        raise ConvertError(f"{config_path}: 'id2label' must map ids to labels, got {labels!r:.200}") from None
    if len(by_id) == 2 and by_id[0] == (0, "LABEL_0"):
        return []
    return [v for _, v in by_id]


# -- sentence-transformers pooling ------------------------------------------------------------------


def pooling_type(model_dir: Path) -> PoolingType | None:
    """The pooling of a sentence-transformers directory, as llama.cpp's ``_try_set_pooling_type``
    reads it: the first module of modules.json whose type ends in "Pooling", then its config.json's
    pooling_mode_mean_tokens, pooling_mode_cls_token, pooling_mode_lasttoken or pooling_mode.
    None without modules.json or a Pooling module (llama.cpp then pools as the caller asks)."""
    path = model_dir / "modules.json"
    if not path.is_file():
        return None
    try:
        modules = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConvertError(f"{path}: cannot be read as JSON ({e})") from None
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise ConvertError(f"{path}: expected a list of modules")
    where = next((m.get("path") for m in modules if str(m.get("type", "")).endswith("Pooling")), None)
    if where is None:
        return None
    cfg_path = model_dir / str(where) / "config.json"
    cfg = read_json(cfg_path)
    for key, mode in (("pooling_mode_mean_tokens", "mean"), ("pooling_mode_cls_token", "cls"),
                      ("pooling_mode_lasttoken", "lasttoken")):  # fmt: skip
        if cfg.get(key):
            return POOLING_MODES[mode]
    if cfg.get("pooling_mode") in POOLING_MODES:
        return POOLING_MODES[cfg["pooling_mode"]]
    chosen = [k for k, v in cfg.items() if k.startswith("pooling_mode") and v]
    raise ConvertError(
        f"{cfg_path}: pooling {', '.join(f'{k}={cfg[k]!r}' for k in chosen) or 'not set'} is not supported; "
        "llama.cpp pools by mean, cls or last token"
    )


# -- the WordPiece vocabulary -----------------------------------------------------------------------


def _from_vocab_txt(path: Path, tc: dict[str, Any]) -> Any:
    """The fast tokenizer transformers builds from a BertTokenizer's vocab.txt (its BertConverter),
    with tokenizer_config.json's settings and BertTokenizer's defaults."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    try:
        with open(path, encoding="utf-8") as f:  # transformers' load_vocab: one token a line
            vocab = {line.rstrip("\n"): i for i, line in enumerate(f.readlines())}
    except (OSError, UnicodeDecodeError) as e:
        raise ConvertError(f"{path}: cannot be read ({e})") from None
    names = {"unk": "[UNK]", "sep": "[SEP]", "pad": "[PAD]", "cls": "[CLS]", "mask": "[MASK]"}
    special = {k: _content(tc.get(f"{k}_token")) or v for k, v in names.items()}
    tok = Tokenizer(models.WordPiece(vocab, unk_token=special["unk"]))
    lower = tc.get("do_lower_case", True)
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=bool(tc.get("tokenize_chinese_chars", True)),
        strip_accents=tc.get("strip_accents"), lowercase=bool(lower),
    )  # fmt: skip
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    listed = tc.get("added_tokens_decoder")  # more added tokens, by id
    extra = [d for d in listed.values() if isinstance(d, dict)] if isinstance(listed, dict) else []
    tok.add_special_tokens([AddedToken(special[k], special=True, normalized=False)
                            for k in ("unk", "sep", "pad", "cls", "mask")])  # fmt: skip
    for d in extra:
        if isinstance(d.get("content"), str):
            added = AddedToken(
                d["content"], special=bool(d.get("special")), normalized=bool(d.get("normalized"))
            )
            (tok.add_special_tokens if d.get("special") else tok.add_tokens)([added])
    cls, sep = special["cls"], special["sep"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))],
    )  # fmt: skip
    return tok


def _phantom(token: str, kind: int) -> str:
    """llama.cpp's WordPiece form: a word-initial piece gets the phantom space, a ``##`` piece loses
    its prefix, a control token stays as it is."""
    if kind == TokenType.CONTROL:
        return token
    return token[2:] if token.startswith("##") else "\u2581" + token


def wordpiece_vocab(model_dir: Path, n_vocab: int, n_types: int, pre: str | None) -> Vocab:
    """tokenizer.* of a BERT model as llama.cpp's BertModel.set_vocab writes it: the vocabulary of
    tokenizer.json (else vocab.txt) padded to ``n_vocab`` with ``[PADn]``, added tokens CONTROL when
    special (else USER_DEFINED), every token in phantom-space form; the special ids, add_* flags
    and normalizer flags of gguf-py's SpecialVocab."""
    tok_path, txt_path = model_dir / "tokenizer.json", model_dir / "vocab.txt"
    tc = _optional_json(model_dir / "tokenizer_config.json")
    if tok_path.is_file():
        data, tok, source = read_json(tok_path), None, tok_path
    elif txt_path.is_file():
        tok = _from_vocab_txt(txt_path, tc)
        data, source = json.loads(tok.to_str()), txt_path
    else:
        raise ConvertError(f"{model_dir}: no tokenizer.json or vocab.txt (a WordPiece vocabulary)")
    model = data.get("model") or {}
    if model.get("type") != "WordPiece" or model.get("continuing_subword_prefix", "##") != "##":
        raise ConvertError(
            f"{source}: a {model.get('type')} tokenizer (continuing_subword_prefix "
            f"{model.get('continuing_subword_prefix')!r}); llama.cpp's bert reads WordPiece with '##'"
        )
    tok = tok or hf_tokenizer(tok_path)
    vocab: dict[str, int] = dict(model.get("vocab") or {})
    added = {int(a["id"]): a for a in data.get("added_tokens") or [] if isinstance(a, dict)}
    vocab.update((str(a["content"]), i) for i, a in added.items())
    reverse = {i: text for text, i in vocab.items()}
    if reverse and max(reverse) >= n_vocab:
        raise ConvertError(f"{source}: token id {max(reverse)} is beyond config.json's vocab_size {n_vocab}")
    tokens, types = [], []
    for i in range(n_vocab):
        text, kind = reverse.get(i, f"[PAD{i}]"), TokenType.NORMAL if i in reverse else TokenType.UNUSED
        if i in added:
            if not added[i].get("normalized", True):  # llama.cpp: encoded and decoded again
                text = str(
                    tok.decode(tok.encode(text, add_special_tokens=False).ids, skip_special_tokens=False)
                )
            if added[i].get("special") or looks_special(text):
                kind = TokenType.CONTROL
            else:
                text, kind = text.replace("\u2581", " "), TokenType.USER_DEFINED
        tokens.append(_phantom(text, kind))
        types.append(int(kind))
    if pre is None:
        ids_hash = sha256(str(tok.encode(CHECK_TEXT).ids).encode()).hexdigest()
        pre = BERT_HASHES.get(ids_hash, "default")
    v = Vocab("bert", pre, tokens, types, token_type_count=n_types)
    _special_tokens(model_dir, v, n_vocab, tok_json=data, latest=True)
    _check_lowercase(tc, v.normalizer, model_dir)
    return v


def _check_lowercase(tc: dict[str, Any], flags: dict[str, bool], model_dir: Path) -> None:
    """transformers lets tokenizer_config.json's do_lower_case / strip_accents override the
    tokenizer.json normalizer; llama.cpp writes the normalizer's. Say so where they differ."""
    lower = flags.get("lowercase", False)
    for key, ours in (("do_lower_case", lower), ("strip_accents", flags.get("strip_accents", lower))):
        theirs = tc.get(key)
        if isinstance(theirs, bool) and theirs != ours:
            logger.warning(
                "%s: tokenizer_config.json's %s is %s, tokenizer.json's normalizer says %s; "
                "writing the normalizer's, as llama.cpp does", model_dir, key, theirs, ours,
            )  # fmt: skip
