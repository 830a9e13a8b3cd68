"""Fill-in-the-middle (FIM): prompts that ask a code model for the text between a prefix and a
suffix, with the vocabulary's FIM tokens (``fim_pre`` / ``fim_suf`` / ``fim_mid``, and for
repository-level context ``fim_rep`` / ``fim_sep``, found as llama.cpp finds them).

Two layouts:

* :func:`completion_prompt` — ``create_completion(prompt, suffix=...)`` (llama-cpp-python's
  intent): ``[BOS] [FIM_PRE] prompt [FIM_SUF] suffix [FIM_MID]``, or with ``spm_infill``
  ``[BOS] [FIM_SUF] suffix [FIM_PRE] prompt [FIM_MID]``. The suffix is tokenized as text that
  continues other text (no SentencePiece space in front of it, as Meta's CodeLlama tokenizer does).
  A model without FIM tokens reads the prompt alone and the suffix is appended to the completion.
* :func:`infill_prompt` — llama-server's ``/infill``: Qwen2.5-Coder's repository-level format
  (arXiv 2409.12186)::

      [FIM_REP]myproject\\n [FIM_SEP]filename0\\n extra chunk 0 ... [FIM_SEP]filename\\n
      [BOS] [FIM_PRE] prefix prompt [FIM_SUF] suffix [FIM_MID]

  (SPM order: ``[BOS] [FIM_SUF] suffix [FIM_PRE] prefix prompt [FIM_MID]``). Without
  ``fim_rep`` the first line is left out; without ``fim_sep`` each chunk is introduced by a
  ``--- snippet ---`` line and no file name is written. The prefix keeps its last
  ``3 * (n_batch // 4)`` tokens, the suffix its first ``n_batch // 4 - 2 - len(prompt)``, the
  extra context its last ``n_ctx - n_batch - 2 * n_predict``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from splitllm.completions import CompletionChunk
from splitllm.tokenizer import Tokenizer

CHUNK_SEPARATOR = "\n\n--- snippet ---\n\n"  # before each extra chunk when there is no fim_sep token
PROJECT_LINE = "myproject\n"                # after fim_rep (llama-server's placeholder name)
FILE_LINE = "filename\n"                    # the file being edited (llama-server's placeholder)
DEFAULT_FILENAME = "tmp"                    # an extra chunk without a filename

Mixed = str | Sequence[int | str]  # text, token ids, or both (llama-server's tokenize_mixed)


@dataclasses.dataclass(frozen=True, slots=True)
class FimTokens:
    pre: int
    suf: int
    mid: int
    rep: int | None = None  # repository name
    sep: int | None = None  # file separator


def fim_tokens(tok: Tokenizer) -> FimTokens | None:
    """The vocabulary's FIM tokens; None without all three of prefix, suffix and middle."""
    sp = tok.vocab.special
    pre, suf, mid = sp.get("fim_pre"), sp.get("fim_suf"), sp.get("fim_mid")
    if pre is None or suf is None or mid is None:
        return None
    return FimTokens(pre, suf, mid, sp.get("fim_rep"), sp.get("fim_sep"))


def missing_fim(tok: Tokenizer) -> str:
    """Why the model cannot infill, in llama-server's words ("" when it can)."""
    sp = tok.vocab.special
    names = (("fim_pre", "prefix"), ("fim_suf", "suffix"), ("fim_mid", "middle"))
    missing = "".join(f"{word} token is missing. " for key, word in names if sp.get(key) is None)
    return f"Infill is not supported by this model: {missing}" if missing else ""


def _bos(tok: Tokenizer) -> list[int]:
    return [tok.bos_id] if tok.add_bos and tok.bos_id is not None else []


def tokenize_mixed(tok: Tokenizer, value: Mixed, *, add_special: bool, special: bool) -> list[int]:
    """llama-server's tokenize_mixed: a string, or a list of token ids and strings (BOS, with
    ``add_special``, only where the first item is a string)."""
    if isinstance(value, str):
        return tok.tokenize(value, add_bos=add_special, special=special)
    out: list[int] = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            out += tok.tokenize(item, add_bos=add_special and i == 0, special=special)
        else:
            out.append(int(item))
    return out


def infill_prompt(tok: Tokenizer, prefix: Mixed, suffix: Mixed,
                  extra: Sequence[tuple[str | None, str]] = (), *, prompt: Sequence[int] = (),
                  n_batch: int, n_ctx: int, n_predict: int = -1, spm: bool = False) -> list[int]:
    """llama-server's ``/infill`` prompt (see the module's docstring). ``extra``: (filename or
    None, text) chunks of other files; ``prompt``: tokens that continue the prefix; ``n_ctx``: the
    context of one sequence. ValueError when the model has no FIM tokens."""
    fim = fim_tokens(tok)
    if fim is None:
        raise ValueError(missing_fim(tok))

    def text(s: str) -> list[int]:
        return tok.tokenize(s, add_bos=False, special=False)

    context: list[int] = [fim.rep, *text(PROJECT_LINE)] if fim.rep is not None else []
    for filename, body in extra:
        if fim.sep is not None:
            context += [fim.sep, *text((DEFAULT_FILENAME if filename is None else filename) + "\n")]
        else:
            context += text(CHUNK_SEPARATOR)
        context += text(body)
    if fim.sep is not None:
        context += [fim.sep, *text(FILE_LINE)]

    pre = tokenize_mixed(tok, prefix, add_special=False, special=False)
    suf = tokenize_mixed(tok, suffix, add_special=False, special=False)
    n_pre = min(len(pre), 3 * (n_batch // 4))  # a batch's worth, prefix to suffix 3:1
    n_suf = min(len(suf), max(0, n_batch // 4 - (2 + len(prompt))))
    n_extra = min(max(0, n_ctx - n_batch - 2 * n_predict), len(context))  # the rest of the context
    head = [fim.pre, *pre[len(pre) - n_pre:], *prompt]
    tail = [fim.suf, *suf[:n_suf]]
    first, second = (tail, head) if spm else (head, tail)
    return [*context[len(context) - n_extra:], *_bos(tok), *first, *second, fim.mid]


def completion_prompt(model: Any, prompt: Any, suffix: str | None) -> tuple[list[int], str]:
    """The prompt tokens of ``create_completion(prompt, suffix=...)`` and the text to append to the
    completion (the suffix, for a model without FIM tokens; else "")."""
    if not isinstance(prompt, (str, list, tuple)):
        raise ValueError("prompt must be a str or a list of token ids")
    if suffix is None:
        return model._prompt_tokens(prompt), ""
    if not isinstance(suffix, str):
        raise ValueError(f"suffix must be a str or None (got {type(suffix).__name__})")
    tok: Tokenizer = model.tokenizer
    fim = fim_tokens(tok)
    if fim is None:
        return model._prompt_tokens(prompt), suffix
    head = tok.tokenize(prompt, add_bos=False) if isinstance(prompt, str) else [int(t) for t in prompt]
    tail = tok.tokenize(suffix, add_bos=False, space_prefix=False)
    pre, suf = [fim.pre, *head], [fim.suf, *tail]
    return [*_bos(tok), *(suf + pre if model.spm_infill else pre + suf), fim.mid], ""


def check_echo(suffix: str | None, echo: bool, logprobs: int | None) -> None:
    if suffix is not None and echo and logprobs is not None:
        raise ValueError("echo with logprobs cannot be used with suffix (the model reads a fill-in-the-"
                         "middle prompt, not the prompt text)")


def with_tail(c: CompletionChunk, tail: str) -> CompletionChunk:
    """The chunk with ``tail`` after its text when it is the last one."""
    if not tail or c.finish_reason is None:
        return c
    return dataclasses.replace(c, text=c.text + tail)


def append_tail(chunks: Iterable[CompletionChunk], tail: str) -> Iterator[CompletionChunk]:
    for c in chunks:
        yield with_tail(c, tail)
