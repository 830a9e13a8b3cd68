"""What :class:`~splitllm.engine.BatchEngine` hands out: a :class:`Job` (the handle of one
generation, and the state the scheduler keeps for it), the events it reports, the engine's counters
(:class:`EngineStats`) and :class:`ChunkStream`, which delivers a job's chunks on an asyncio event
loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from splitllm.completions import CompletionChunk, TokenText
from splitllm.engine_draft import SpecParams
from splitllm.logprobs import PromptLogprobs
from splitllm.reasoning_budget import ReasoningBudget
from splitllm.sampling import Sampler

if TYPE_CHECKING:
    from splitllm.engine import BatchEngine

Event = CompletionChunk | BaseException
"""What a job reports: text chunks (the last one has a finish reason), or the error that ended it."""


class EngineClosed(RuntimeError):
    """The engine was closed before the job finished."""


@dataclass(frozen=True, slots=True)
class EngineStats:
    """Counters since the engine started."""

    submitted: int = 0  # jobs submitted
    finished: int = 0  # jobs that ended (finished, cancelled or failed)
    cancelled: int = 0  # of those, cancelled
    steps: int = 0  # forward passes (decode calls)
    prompt_tokens: int = 0  # prompt tokens of the jobs admitted to a slot
    prompt_evaluated: int = 0  # of those, evaluated (the rest came from a slot's cache)
    prompt_cached: int = 0  # of those, taken from a slot's cache (counted at admission)
    generated_evaluated: int = 0  # generated tokens evaluated (fed back for the next one)
    max_batch_seqs: int = 0  # most sequences decoding together in one step
    draft_tokens: int = 0  # guesses put in passes (speculative decoding)
    draft_accepted: int = 0  # of those, accepted
    draft_checks: int = 0  # a job's token and guesses checked in a pass (llama-server's drafts)
    decode_seconds: float = 0.0  # time spent in forward passes (the rest of a step is Python)
    busy_seconds: float = 0.0  # time spent in steps


@dataclass(eq=False)
class Job:
    """One generation submitted to the engine; a handle to cancel it and read its counters."""

    prompt: list[int]
    sampler: Sampler
    text: TokenText
    on_event: Callable[[Event], None]
    slot: int = -1  # sequence slot while active
    n_cached: int = 0  # prompt tokens reused from the slot's cache
    n_prompt_evaluated: int = 0  # prompt tokens evaluated for this job
    cancelled: bool = False
    finished: bool = False
    next_token: int | None = None  # sampled, to be evaluated in the next step
    first_logits: np.ndarray | None = None  # logits after the prompt, when the slot had them
    prompt_logprobs: PromptLogprobs | None = None  # the prompt's entries, when asked for (echo)
    embeddings: list[np.ndarray] | None = None  # an embedding job's hidden states, pass by pass
    classify: bool = False  # a reranker's job: embeddings holds the scores of the text's first token
    grammar: Any = None  # the grammar's matching state (_core.Grammar) when the text must follow one
    lora: tuple[float, ...] | None = None  # the adapters' scales it runs under (None: the engine's)
    want_slot: int = -1  # the slot it must run in (llama-server's id_slot), -1: any
    budget: ReasoningBudget | None = None  # a thinking budget's state, when the answer has one
    spec: SpecParams | None = None  # its speculative settings (None: the engine's)
    n_draft: int = 0  # guesses checked for it (llama-server's timings.draft_n)
    n_draft_accepted: int = 0  # of those, accepted (timings.draft_n_accepted)
    tokens: list[int] = field(default_factory=list)  # evaluated: K/V at positions 0..len-1 of the slot
    t_start: float = 0.0  # perf_counter() when the job got its slot
    t_prompt: float = 0.0  # ... when the prompt was read (its first token sampled)
    t_last: float = 0.0  # ... when its last token was sampled

    @property
    def n_past(self) -> int:
        return len(self.tokens)


class ChunkStream:
    """The chunks of one job, delivered on an asyncio event loop.

    Iterate it with ``async for`` (or ``await next_chunk(timeout)``); ``close()`` cancels the job if
    it is still running, so a client that goes away frees its sequence.
    """

    def __init__(self, engine: BatchEngine, job: Job, events: asyncio.Queue[Event]) -> None:
        self.engine = engine
        self.job = job
        self._events = events
        self._done = False

    def __aiter__(self) -> ChunkStream:
        return self

    async def __anext__(self) -> CompletionChunk:
        if self._done:
            raise StopAsyncIteration
        return await self.next_chunk()

    async def next_chunk(self, timeout: float | None = None) -> CompletionChunk:
        """The next chunk; asyncio.TimeoutError after ``timeout`` seconds without one (the job
        goes on)."""
        if timeout is None:
            ev = await self._events.get()
        else:
            ev = await asyncio.wait_for(self._events.get(), timeout)
        if isinstance(ev, BaseException):
            self._done = True
            raise ev
        if ev.finish_reason is not None:
            self._done = True
        return ev

    @property
    def done(self) -> bool:
        return self._done

    def close(self) -> None:
        self.engine.cancel(self.job)
