"""Cross-encoder rerankers: BertForSequenceClassification (cross-encoder/ms-marco-MiniLM-L-6-v2) and
XLMRobertaForSequenceClassification (BAAI/bge-reranker-base, bge-reranker-v2-m3), the encoders of
``bert`` and ``xlmr`` with their classification head, for llama.cpp's rank pooling.

llama.cpp scores a text (its rank pooling, build_pooling in src/llama-graph.cpp) from the first
token's hidden state x as ``cls.output(tanh(cls(x)))`` (each with its bias; without ``cls`` the
tanh layer is skipped), ``n_cls_out`` numbers, one per entry of ``{arch}.classifier.output_labels``
(1 without the key). transformers computes the same on the first token:

- XLM-R: ``out_proj(tanh(dense(x)))`` (RobertaClassificationHead): ``classifier.dense`` ->
  ``cls``, ``classifier.out_proj`` -> ``cls.output``, as llama.cpp's converter maps them.
- BERT: ``classifier(tanh(pooler.dense(x)))`` (BertPooler, then one Linear): ``pooler.dense`` ->
  ``cls``, ``classifier`` -> ``cls.output``. llama.cpp's converter drops the pooler (its BertModel
  filters ``pooler.dense.*`` away) and writes ``classifier(x)``, whose scores are not the model's;
  here the pooler is kept, so llama.cpp computes transformers' scores from the file.

Metadata: the encoder's, then ``{arch}.pooling_type`` RANK (llama.cpp's converter writes none for
these, leaving a loader to ask for rank pooling; a sentence-transformers Pooling module, if any,
is overridden, with a warning) and ``{arch}.classifier.output_labels``: config.json's id2label in
id order (transformers' LABEL_0 .. LABEL_{n-1} for num_labels, 2 by default, where it has none).
llama.cpp leaves out transformers' two placeholders LABEL_0 / LABEL_1, which for a classifier
makes ``n_cls_out`` 1 and a file its loader refuses for the two-row head; they are written here.

llama.cpp feeds token type 0 for every token (a BERT pair's second text is type 1 in transformers,
so its scores differ from transformers' on pairs by that much); llama-server builds a pair as
``[BOS] query [EOS] [SEP] doc [EOS]`` per the vocabulary's add_bos / add_eos / add_sep flags.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

from gguf import PoolingType

from splitllm_convert.arch import TensorRule, logger
from splitllm_convert.bert import Bert
from splitllm_convert.errors import ConvertError
from splitllm_convert.xlmr import XLMRoberta


def _dense(hf: str, gguf: str, rows: str) -> tuple[TensorRule, TensorRule]:
    return (TensorRule(hf + ".weight", gguf + ".weight", (rows, "embd")),
            TensorRule(hf + ".bias", gguf + ".bias", (rows,)))  # fmt: skip


def id2label(cfg: dict[str, Any], config_path: Path) -> list[str]:
    """The labels of a classifier as transformers' PretrainedConfig reads them: id2label in id order,
    else ``LABEL_i`` for i < num_labels (2 when config.json has neither)."""
    labels = cfg.get("id2label")
    if labels is None:
        n = cfg.get("num_labels", 2)
        if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
            raise ConvertError(f"{config_path}: 'num_labels' must be a positive integer, got {n!r}")
        return [f"LABEL_{i}" for i in range(n)]
    try:
        by_id = sorted((int(k), str(v)) for k, v in labels.items())
    except (AttributeError, TypeError, ValueError):
        raise ConvertError(f"{config_path}: 'id2label' must map ids to labels, got {labels!r:.200}") from None
    if [i for i, _ in by_id] != list(range(len(by_id))):
        raise ConvertError(
            f"{config_path}: 'id2label' has ids {[i for i, _ in by_id][:20]}; a classifier's outputs are "
            f"numbered 0 .. n-1 (llama.cpp writes the labels in id order, one per output)"
        )
    return [v for _, v in by_id]


class _Reranker(Bert):
    """What the classification head adds to an encoder (Bert's, or XLM-R's named after this in the
    bases): rank pooling and the labels, which Bert.add_hparams writes after the encoder's keys,
    and the labels' dimension."""

    def __init__(self, cfg: dict[str, Any], config_path: Path) -> None:
        super().__init__(cfg, config_path)
        if self.pooling is not None:
            logger.warning("%s: modules.json names a pooling (%s); a reranker's file says rank pooling",
                           config_path.parent, self.pooling.name.lower())
        self.pooling, self.labels = PoolingType.RANK, id2label(self.cfg, config_path)

    def dims(self) -> dict[str, int]:
        return {**super().dims(), "labels": len(self.labels)}


class BertReranker(_Reranker):
    """BertForSequenceClassification: BERT's encoder under ``bert.`` (or at the top level), its pooler
    as ``cls`` and the classifier as ``cls.output``."""

    hf_names = ("BertForSequenceClassification",)

    def table(self, available: Collection[str]) -> tuple[tuple[TensorRule, ...], tuple[str, ...]]:
        rules, ignored = super().table(available)
        prefix = "bert." if "bert.embeddings.word_embeddings.weight" in available else ""
        pooler = prefix + "pooler.dense"
        head = (*_dense(pooler, "cls", "embd"), *_dense("classifier", "cls.output", "labels"))
        return (*rules, *head), tuple(n for n in ignored if not n.startswith(pooler))


class XLMRobertaReranker(_Reranker, XLMRoberta):
    """XLMRobertaForSequenceClassification: XLM-R's encoder under ``roberta.`` (or at the top level;
    a pooler, which it does not use, left out), RobertaClassificationHead's ``classifier.dense`` as
    ``cls`` and ``classifier.out_proj`` as ``cls.output``."""

    hf_names = ("XLMRobertaForSequenceClassification",)

    def table(self, available: Collection[str]) -> tuple[tuple[TensorRule, ...], tuple[str, ...]]:
        rules, ignored = super().table(available)
        head = (*_dense("classifier.dense", "cls", "embd"),
                *_dense("classifier.out_proj", "cls.output", "labels"))  # fmt: skip
        return (*rules, *head), ignored
