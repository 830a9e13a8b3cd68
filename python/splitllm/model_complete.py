"""OpenAI-shaped text completions of a :class:`~splitllm.model.Model`: ``create_completion``
(and ``__call__``), with echo and prompt log-probabilities."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from splitllm.completions import Echo, completion_chunks, completion_head, completion_response
from splitllm.dry import DEFAULT_BREAKERS
from splitllm.grammar import Grammar
from splitllm.infill import append_tail, check_echo, completion_prompt
from splitllm.logprobs import PromptLogprobs, TokenLogprob, check_n_top
from splitllm.sampling import LogitsHook, StopHook, sampling_params


class CompletionMethods:
    """The completion calls of :class:`~splitllm.model.Model` (which holds the state they use)."""

    def _prompt_tokens(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            bos = self.tokenizer.bos_id
            body = self.tokenize(prompt.encode("utf-8"), add_bos=False, special=True) if prompt else []
            toks = ([bos] if self.tokenizer.add_bos and bos is not None else []) + body
            return toks if toks or bos is None else [bos]
        if isinstance(prompt, (bytes, bytearray)):
            raise ValueError("prompt must be a str or a list of token ids, not bytes")
        return [int(t) for t in prompt]

    def create_completion(
        self,
        prompt: str | Sequence[int],
        max_tokens: int | None = 16,
        temperature: float = 0.8,
        top_p: float = 0.95,
        min_p: float = 0.05,
        echo: bool = False,
        stop: str | Sequence[str] | None = None,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        repeat_penalty: float = 1.0,
        top_k: int = 40,
        stream: bool = False,
        seed: int | None = None,
        model: str | None = None,
        logit_bias: Mapping[Any, float] | None = None,
        logprobs: int | None = None,
        grammar: Grammar | str | None = None,
        logits_processor: LogitsHook | None = None,
        stopping_criteria: StopHook | None = None,
        suffix: str | None = None,
        *,
        typical_p: float = 1.0,
        tfs_z: float = 1.0,
        mirostat_mode: int = 0,
        mirostat_tau: float = 5.0,
        mirostat_eta: float = 0.1,
        xtc_probability: float = 0.0,
        xtc_threshold: float = 0.1,
        top_n_sigma: float = -1.0,
        dynatemp_range: float = 0.0,
        dynatemp_exponent: float = 1.0,
        dry_multiplier: float = 0.0,
        dry_base: float = 1.75,
        dry_allowed_length: int = 2,
        dry_penalty_last_n: int = 64,
        dry_sequence_breakers: Sequence[str] = DEFAULT_BREAKERS,
    ) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """Text completion, shaped like OpenAI's (and llama-cpp-python's) ``create_completion``.
        ``grammar``: the generated text follows it (:mod:`splitllm.grammar`). ``suffix``: the text
        comes between ``prompt`` and it (fill-in-the-middle, :mod:`splitllm.infill`). The sampler
        settings are llama-cpp-python's (``tfs_z``: only 1.0, see :func:`~splitllm.sampling.check_tfs_z`),
        and llama-server's ``xtc_*``, ``top_n_sigma``, ``dynatemp_*`` and ``dry_*`` (DRY; see
        :mod:`splitllm.sampling`).

        ``logprobs`` (0..20): each generated token's log-probability and that many most likely
        alternatives (from the model's logits, before sampling settings); with ``echo``, the
        prompt's tokens too (the prompt is then read from scratch with the logits of every position;
        the first token has none)."""
        params = sampling_params(
            temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p,
            repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
            presence_penalty=presence_penalty, tfs_z=tfs_z, mirostat_mode=mirostat_mode,
            mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta,
            logit_bias=logit_bias, xtc_probability=xtc_probability, xtc_threshold=xtc_threshold,
            top_n_sigma=top_n_sigma, dynatemp_range=dynatemp_range, dynatemp_exponent=dynatemp_exponent,
            dry_multiplier=dry_multiplier, dry_base=dry_base, dry_allowed_length=dry_allowed_length,
            dry_penalty_last_n=dry_penalty_last_n, dry_sequence_breakers=dry_sequence_breakers)
        tokens, tail = completion_prompt(self, prompt, suffix)
        n_top = check_n_top(logprobs)
        check_echo(suffix, echo, n_top)
        first = None
        echo_lps = None
        if echo and n_top is not None:
            first, echo_lps = self.prompt_logprobs(tokens, n_top)
        chunks = self._stream_from(tokens, first, params, max_tokens=max_tokens, stop=stop, seed=seed,
                                   logprobs=n_top, grammar=grammar, logits_processor=logits_processor,
                                   stopping_criteria=stopping_criteria)
        chunks = append_tail(chunks, tail)
        head = completion_head(model if model is not None else self.model_path)
        shown = tokens if suffix is None else prompt  # (not the fill-in-the-middle prompt)
        text = self.echo_text(prompt, shown) if echo or n_top is not None else ""
        echoed = Echo(text, echo, echo_lps)
        if stream:
            return completion_chunks(head, chunks, echoed, n_top is not None)
        return completion_response(head, chunks, echoed, n_top is not None)

    def prompt_logprobs(self, tokens: Sequence[int], n_top: int) -> tuple[np.ndarray, list[TokenLogprob]]:
        """Reads ``tokens`` from scratch with the logits of every position (``n_batch`` at a time)
        and returns the logits after the last one and the prompt tokens' entries (a leading BOS
        is left out; the first token has no log-probability)."""
        toks = self.check_prompt(tokens)
        tok = self.tokenizer
        lps = PromptLogprobs.of_prompt(toks, n_top, tok)
        self._history = []
        last = np.empty(0, dtype=np.float32)
        for i0 in range(0, len(toks), self._n_batch):
            part = toks[i0: i0 + self._n_batch]
            rows = self._decode(part, i0, all_logits=True)
            self._history = toks[: i0 + len(part)]
            lps.feed(rows)
            last = rows[-1].copy()
        return last, lps.entries

    def echo_text(self, prompt: str | Sequence[int], tokens: Sequence[int]) -> str:
        """The prompt as ``echo=True`` repeats it (control tokens of a token list as their text, as
        the log-probability entries show them)."""
        self._engine()
        if isinstance(prompt, str):
            return prompt
        return self.detokenize(tokens, special=True).decode("utf-8", "replace")

    def __call__(
        self, prompt: str | Sequence[int], **kwargs: Any
    ) -> dict[str, Any] | Iterator[dict[str, Any]]:
        return self.create_completion(prompt, **kwargs)
