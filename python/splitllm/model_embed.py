"""Embeddings of a :class:`~splitllm.model.Model` (``embedding=True``): the final hidden states,
pooled as llama.cpp pools them (then, for EmbeddingGemma, through its dense projections), in
llama-cpp-python's ``embed`` / ``create_embedding`` shapes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from splitllm.gguf_file import GGUFFile
from splitllm.quants import dequantize

# Pooling of embeddings, with llama.cpp's values (llama_pooling_type).
LLAMA_POOLING_TYPE_UNSPECIFIED = -1  # the model's own (GGUF ``{arch}.pooling_type``; none without it)
LLAMA_POOLING_TYPE_NONE = 0  # one embedding per token
LLAMA_POOLING_TYPE_MEAN = 1
LLAMA_POOLING_TYPE_CLS = 2  # the first token's
LLAMA_POOLING_TYPE_LAST = 3
LLAMA_POOLING_TYPE_RANK = 4  # a reranker's scores: its classification head on each text's first token
POOLING_NAMES = {"none": 0, "mean": 1, "cls": 2, "last": 3, "rank": 4}


def pooling_type_of(value: int | str | None, metadata: Mapping[str, Any]) -> int:
    """A pooling type (a llama.cpp value or its name); unspecified: the model's, none without one."""
    if isinstance(value, str):
        if value.lower() not in POOLING_NAMES:
            raise ValueError(f"pooling_type must be one of {sorted(POOLING_NAMES)} or -1..4 (got {value!r})")
        value = POOLING_NAMES[value.lower()]
    if value is None or value == LLAMA_POOLING_TYPE_UNSPECIFIED:
        arch = metadata.get("general.architecture", "")
        value = int(metadata.get(f"{arch}.pooling_type", LLAMA_POOLING_TYPE_NONE))
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 4:
        raise ValueError(f"pooling_type must be -1..4 or a name (got {value!r})")
    return value


def check_reranker(config: Mapping[str, Any]) -> None:
    """ValueError unless the engine's model (its config) is a reranker: it has a classification head
    (an encoder's on its first token, a decoder's on its last)."""
    if config["n_cls_out"]:
        return
    raise ValueError("pooling_type rank needs a reranker: this model has no classification head "
                     "(cls.output.weight)")


# A dense projection: weight (n_out, n_in) and bias (n_out) or None, float64.
Dense = tuple[np.ndarray, np.ndarray | None]
DENSE_TENSORS = ("dense_2.weight", "dense_2.bias", "dense_3.weight")  # gemma-embedding's, in order


def dense_views(gf: GGUFFile) -> dict[str, tuple[np.ndarray, str, tuple[int, ...]]]:
    """The file's dense projection tensors (views of the mapping, valid after ``gf`` closes), with
    their type and shape."""
    return {n: (gf.tensor(n), gf.tensors[n].type, gf.tensors[n].shape)
            for n in DENSE_TENSORS if n in gf.tensors}  # fmt: skip


def read_dense(views: dict[str, tuple[np.ndarray, str, tuple[int, ...]]]) -> list[Dense]:
    """gemma-embedding's sentence-transformers projections (``dense_2`` with its bias if any, then
    ``dense_3``), those of ``views`` (see dense_views), dequantized to float64: what llama.cpp
    applies after pooling. (The engine checks their shapes when it loads the file.)"""

    def values(name: str) -> np.ndarray:
        data, qtype, shape = views[name]
        return dequantize(data, qtype).astype(np.float64).reshape(shape)

    out: list[Dense] = []
    for name in ("dense_2", "dense_3"):
        if f"{name}.weight" in views:
            bias = f"{name}.bias"
            out.append((values(f"{name}.weight"), values(bias) if bias in views else None))
    return out


def pool_embeddings(rows: np.ndarray, pooling: int, normalize: bool,
                    dense: Sequence[Dense] = ()) -> np.ndarray:
    """A text's token embeddings (n, n_embd) pooled (float64): all of them (none), their mean, the
    first or the last; then each vector through the ``dense`` projections in turn (x W^T + b, as
    llama.cpp applies gemma-embedding's to the pooled vector, and with pooling none to every
    token's); ``normalize``: each vector to unit length."""
    x = np.asarray(rows, dtype=np.float64)
    if pooling == LLAMA_POOLING_TYPE_MEAN:
        x = x.mean(axis=0, keepdims=True)
    elif pooling == LLAMA_POOLING_TYPE_CLS:
        x = x[:1]
    elif pooling == LLAMA_POOLING_TYPE_LAST:
        x = x[-1:]
    for w, b in dense:
        x = x @ w.T if b is None else x @ w.T + b
    if normalize:
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(norms == 0.0, 1.0, norms)
    return x


class EmbeddingMethods:
    """The embedding calls of :class:`~splitllm.model.Model` (which holds the state they use)."""

    _dense: list[Dense]  # the file's dense projections (read_dense), applied after pooling

    def n_embd(self) -> int:
        return int(self._engine().n_embd)

    def pool(self, rows: np.ndarray, pooling: int, normalize: bool) -> np.ndarray:
        """``pool_embeddings`` with this model's dense projections (gemma-embedding's, if any): a
        text's vectors as ``embed`` returns them, (1, n_embd), or with pooling none (n, n_embd)."""
        self._engine()
        return pool_embeddings(rows, pooling, normalize, self._dense)

    def pooling_type(self) -> int:
        """How ``embed`` pools a text's token embeddings (``LLAMA_POOLING_TYPE_*``): the argument, or
        the model's own. Rank (a reranker's scores) needs a classification head: ValueError without."""
        pooling = pooling_type_of(self._pooling_arg, self._metadata)
        if pooling == LLAMA_POOLING_TYPE_RANK:
            check_reranker(self._engine().config)
        return pooling

    def embed_limit(self) -> int:
        """The most tokens of one text ``embed`` reads: a sequence slot's context; an encoder (no
        cache, so n_ctx whole) reads a text in one batch, and bert has position embeddings for
        n_ctx_train positions only."""
        return self._embed_limit_why()[0]

    def _embed_limit_why(self) -> tuple[int, str]:
        """embed_limit and what sets it, for errors."""
        cfg = self._engine().config
        if not cfg["encoder"]:
            return self._seq_ctx, "context window"
        limits = [(self._n_ctx, "context window"), (self._n_batch, "batch size")]
        if cfg["learned_pos"]:
            limits.append((int(cfg["n_ctx_train"]), "model's position embeddings"))
        return min(limits)

    def _encoder_tokens(self, tokens: Sequence[int]) -> list[int]:
        """One text's ids for an encoder: in the vocabulary, not empty, within embed_limit."""
        toks = self._check_tokens(tokens, self._embed_limit_why())
        if not toks:
            raise ValueError("cannot embed an empty text")
        return toks

    def _encode_texts(self, token_lists: list[list[int]], classify: bool = False) -> list[np.ndarray]:
        """An encoder's token embeddings of each text, the texts packed into batches of up to n_batch
        tokens (each its own sequence, as llama-cpp-python's ``embed`` packs them); with classify, a
        reranker's scores of each text instead, (1, n_cls_out)."""
        out: list[np.ndarray] = []
        i = 0
        while i < len(token_lists):
            group = [self._encoder_tokens(token_lists[i])]
            while i + len(group) < len(token_lists) and \
                    sum(map(len, group)) + len(token_lists[i + len(group)]) <= self._n_batch:
                group.append(self._encoder_tokens(token_lists[i + len(group)]))
            toks = np.concatenate([np.asarray(t, dtype=np.int32) for t in group])
            pos = np.concatenate([np.arange(len(t), dtype=np.int32) for t in group])
            slot = np.concatenate([np.full(len(t), j, dtype=np.int32) for j, t in enumerate(group)])
            if classify:  # each text's first token
                want = (pos == 0).astype(np.uint8)
                rows = self._engine().decode(toks, pos, slot, want, None, True, True)
                out += [rows[j: j + 1] for j in range(len(group))]
            else:
                rows = self._engine().decode(toks, pos, slot, None, None, True)
                out += np.split(rows, np.cumsum([len(t) for t in group])[:-1])
            i += len(group)
        return out

    def rank_scores(self, token_lists: Sequence[Sequence[int]]) -> list[list[float]]:
        """A reranker's scores (n_cls_out each) of token lists, each read as one text: an encoder's
        first token, or a causal reranker's (Qwen3-Reranker) last token, through the head."""
        check_reranker(self._engine().config)
        if self._engine().config["encoder"]:
            return [r[0].tolist() for r in self._encode_texts([list(t) for t in token_lists], classify=True)]
        out = []
        for tokens in token_lists:  # each from scratch in the cache
            toks = self._check_tokens(tokens)
            if not toks:
                raise ValueError("cannot embed an empty text")
            n = len(toks)
            want = np.zeros(n, dtype=np.uint8)
            want[-1] = 1
            self._history = []
            rows = self._engine().decode(np.asarray(toks, dtype=np.int32), np.arange(n, dtype=np.int32),
                                         np.zeros(n, dtype=np.int32), want, None, True, True)
            self._history = toks
            out.append(rows[0].tolist())
        return out

    def rerank_tokens(self, query: str, document: str) -> list[int]:
        """A (query, document) pair's tokens as llama-server's format_prompt_rerank builds them: the
        model's "rerank" chat template with {query} and {document} put in, else [BOS] query [EOS]
        [SEP] document [EOS], each special token where the vocabulary adds it (EOS: SEP without)."""
        template = self._metadata.get("tokenizer.chat_template.rerank")
        tok = self.tokenizer
        if isinstance(template, str):
            prompt = template.replace("{query}", query).replace("{document}", document)
            return tok.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        q = tok.tokenize(query.encode("utf-8"), add_bos=False)
        d = tok.tokenize(document.encode("utf-8"), add_bos=False)
        eos = tok.eos_id if tok.eos_id is not None else tok.sep_id
        bos = [tok.bos_id] if tok.add_bos and tok.bos_id is not None else []
        end = [eos] if tok.add_eos and eos is not None else []
        sep = [tok.sep_id] if tok.add_sep and tok.sep_id is not None else []
        return bos + q + end + sep + d + end

    def rerank(self, query: str, documents: Sequence[str]) -> list[float]:
        """A reranker's relevance score of each document for the query (the first output of its
        classification head, as llama-server's /rerank reports it), in the documents' order."""
        if not self._embedding:
            raise RuntimeError("Model must be created with embedding=True to call rerank()")
        if isinstance(documents, (str, bytes)) or not all(isinstance(d, str) for d in documents):
            raise ValueError("documents must be a list of strings")
        if self.pooling_type() != LLAMA_POOLING_TYPE_RANK:
            raise ValueError("rerank needs pooling_type rank (a reranker's default)")
        return [s[0] for s in self.rank_scores([self.rerank_tokens(query, d) for d in documents])]

    def token_embeddings(self, tokens: Sequence[int]) -> np.ndarray:
        """The final hidden state (after the output norm) at every position of ``tokens`` read from
        scratch: (len, n_embd) float32, what llama.cpp returns as embeddings."""
        if self._engine().config["encoder"]:
            return self._encode_texts([list(tokens)])[0]
        toks = self._check_tokens(tokens)
        if not toks:
            raise ValueError("cannot embed an empty text")
        self._history = []
        rows = self._decode(toks, 0, all_logits=True, embeddings=True)
        self._history = toks
        return rows

    def embed(self, input: str | Sequence[str], normalize: bool = False, truncate: bool = True,
              return_count: bool = False) -> Any:
        """Embeddings of a text or a list of texts, as llama-cpp-python's ``Llama.embed``: with pooling
        none, a list of per-token vectors per text; otherwise one vector per text (mean, first or last
        token). ``normalize``: unit length (L2). ``truncate``: texts longer than the context are cut
        (else ValueError). ``return_count``: also the number of tokens read."""
        if not self._embedding:
            raise RuntimeError("Model must be created with embedding=True to call embed()")
        texts = [input] if isinstance(input, str) else list(input)
        if not all(isinstance(t, str) for t in texts):
            raise ValueError("input must be a string or a list of strings")
        pooling = self.pooling_type()
        limit, why = self._embed_limit_why()
        token_lists = []
        for text in texts:
            toks = self.tokenize(text.encode("utf-8"))
            if len(toks) > limit:
                if not truncate:
                    raise ValueError(f"Requested tokens ({len(toks)}) exceed {why} of {limit}")
                toks = toks[:limit]
            token_lists.append(toks)
        total = sum(len(t) for t in token_lists)
        if pooling == LLAMA_POOLING_TYPE_RANK:  # each text's scores, not normalized (as llama.cpp)
            scores = self.rank_scores(token_lists)
            result = scores[0] if isinstance(input, str) else scores
            return (result, total) if return_count else result
        if self._engine().config["encoder"]:
            rows = self._encode_texts(token_lists)
        else:
            rows = [self.token_embeddings(toks) for toks in token_lists]
        data: list[Any] = []
        for r in rows:
            out = self.pool(r, pooling, normalize).tolist()
            data.append(out if pooling == LLAMA_POOLING_TYPE_NONE else out[0])
        result = data[0] if isinstance(input, str) else data
        return (result, total) if return_count else result

    def create_embedding(self, input: str | Sequence[str], model: str | None = None) -> dict[str, Any]:
        """OpenAI's (and llama-cpp-python's) embeddings response for a text or a list of texts."""
        data, total = self.embed(input, return_count=True)
        if isinstance(input, str):
            data = [data]
        return {"object": "list", "model": model if model is not None else self.model_path,
                "data": [{"object": "embedding", "embedding": e, "index": i} for i, e in enumerate(data)],
                "usage": {"prompt_tokens": total, "total_tokens": total}}
