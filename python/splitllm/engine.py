"""Continuous batching: concurrent generations share forward passes.

:class:`BatchEngine` owns a :class:`~splitllm.model.Model` loaded with ``n_seq_max`` sequence
slots and runs a scheduler in a background thread. Each step evaluates the next token of every
decoding sequence together (one ``decode`` call: the weights are read once for all of them) and
then prompt chunks of sequences still reading their prompt (at most ``n_batch`` prompt tokens a
step, so one long prompt does not stall the others); it samples each sequence with its own
:class:`~splitllm.sampling.Sampler` and pushes the text through the same
:class:`~splitllm.completions.TokenText` as ``Model.stream``. New requests join between steps and
finished ones leave.

A request's tokens do not depend on what else runs. The CPU kernels take another path (with
other rounding) for passes of many tokens, so the engine never lets other requests change the
pass a row is computed in: decode rows go together only up to the widest batch whose rows equal
single-token passes (:attr:`BatchEngine.decode_width`), and each prompt chunk is a pass of its
own, cut where reading the prompt from scratch cuts it (every ``n_batch`` tokens, as ``Model``
does). Both sizes are measured when the engine starts.

Every slot remembers the tokens whose K/V it holds, and the logits after its last prompt. A new
request takes the free slot whose cache shares the longest prefix with its prompt and evaluates
only the rest (the next turn of a chat reuses the previous turn's cache; a repeated prompt
evaluates nothing); a request pinned to a slot (llama-server's ``id_slot``) waits for that one,
and the requests queued after it go ahead meanwhile. Where the rest would be a pass too short
for the path reading from scratch takes, a few cached tokens are read again
(:attr:`BatchEngine.prefill_threshold`), so a prompt gives the same logits whether or not part of
it came from another request's prompt.

LoRA adapters: each job runs under one set of adapter scales (its own, or the engine's
:attr:`BatchEngine.lora_scales` when it was admitted). The model holds one set at a time, so
jobs run together only with equal scales (llama-server batches only requests with equal LoRA
configs): a queued job whose scales differ from the running jobs' waits until they end. A slot
remembers the scales its cache was computed under and offers its prefix only to a job with the
same scales.

Speculative decoding (llama-server's ``-md`` / ``--spec-type``): with a drafter, each step guesses the
next tokens of every decoding job and checks them in the same pass (see :mod:`splitllm.engine_draft`);
a pass holding guesses is never longer than the longest whose rows equal single-token passes, so a
job's tokens are the same with and without guesses.

While an engine runs, it is the only user of the model: do not call the Model's own generation
methods at the same time.

A job's handle and events, the counters and the asyncio stream of a job's chunks are in
:mod:`splitllm.engine_jobs` (and importable from here).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from splitllm import _core
from splitllm.cache import common_prefix
from splitllm.completions import CompletionChunk, TokenText, check_max_tokens, completion_limit, stop_list
from splitllm.engine_draft import DraftRequest, SlotDrafter, SpecParams, pass_groups
from splitllm.engine_jobs import ChunkStream, EngineClosed, EngineStats, Event, Job
from splitllm.grammar import Grammar, sample_with_grammar
from splitllm.logprobs import PromptLogprobs, check_n_top, token_logprob
from splitllm.model import MAX_SPECULATIVE_PASS, Model
from splitllm.reasoning_budget import ReasoningBudget
from splitllm.sampling import Sampler, SamplingParams
from splitllm.speculative import single_pass_limit


@dataclass(eq=False)
class _Slot:
    index: int
    cached: list[int] = field(default_factory=list)  # tokens whose K/V the slot holds
    logits: np.ndarray | None = None  # (n_vocab) after cached[:n_logits], the last prompt read here
    n_logits: int = 0
    last_used: int = 0
    job: Job | None = None
    lora: tuple[float, ...] = ()  # the LoRA scales its cache was computed under


class BatchEngine:
    """Runs many generations on one model at once. ``submit`` is thread-safe; chunks are reported
    through each job's ``on_event`` from the engine thread (``stream`` / ``astream`` wrap that).
    The engine owns the model's KV cache while it runs: the model's own generation calls
    (``eval_prompt``, ``create_completion``, ...) would find their cache overwritten."""

    def __init__(self, model: Model, *, drafter: SlotDrafter | None = None,
                 speculative: SpecParams | None = None) -> None:
        """``drafter``: guesses for speculative decoding (the engine closes it), with ``speculative``
        the settings of a job without its own."""
        self.model = model
        self._core = model._engine()
        self.n_parallel = int(model._n_seq_max)
        self.slot_ctx = int(self._core.slot_ctx)
        self._n_batch = int(model._n_batch)
        self._n_vocab = model.n_vocab()
        self._n_embd = model.n_embd()
        self._slots = [_Slot(i) for i in range(self.n_parallel)]
        self._pending: deque[Job] = deque()
        self._active: list[Job] = []
        self._controls: list[tuple[int, Callable[[_Slot], Any], concurrent.futures.Future[Any]]] = []
        self._cv = threading.Condition()
        self._closed = False
        self._clock = 0
        self._stats: dict[str, float] = dict.fromkeys(EngineStats.__dataclass_fields__, 0)
        if drafter is not None and (model.config["encoder"] or model.config["recurrent"]):
            # (rejected guesses would have to be taken back out of a recurrent state)
            raise ValueError(f"{model.model_path}: speculative decoding needs a decoder without a recurrent "
                             f"state ({model.config['arch']} is not)")
        self.drafter = drafter
        self.spec = speculative or SpecParams()
        model.reset()  # the engine overwrites slot 0, which the Model's own cache tracking uses
        self._lora = tuple(model._lora_scales)  # for jobs without their own
        for s in self._slots:
            s.lora = self._lora
        if model.config["encoder"]:  # an embedding model: no decoding, nothing to probe
            self.decode_width, self.prefill_threshold = self.n_parallel, None
        else:
            self.decode_width = self._probe_decode_width()
            # (a recurrent state, lfm2's, continues only where it stopped: no cached token is read again)
            self.prefill_threshold = None if model.config["recurrent"] else self._probe_prefill_threshold()
        # The most rows of a pass holding guesses: rows of fewer tokens equal single-token passes.
        cap = min(MAX_SPECULATIVE_PASS, self.slot_ctx - 1, self._n_batch)
        rows = cap if self.prefill_threshold is None else min(cap, self.prefill_threshold - 1)
        self.pass_rows = rows if self.decode_width == self.n_parallel else min(rows, self.decode_width)
        self._logits = np.empty((max(self.n_parallel, self.pass_rows), self._n_vocab), dtype=np.float32)
        self._thread = threading.Thread(target=self._run, name="splitllm-engine", daemon=True)
        self._thread.start()

    # ---- public ----

    @property
    def stats(self) -> EngineStats:
        with self._cv:
            return EngineStats(**self._stats)

    @property
    def lora_scales(self) -> list[float]:
        """The LoRA scales a job without its own runs under (llama-server's global ones)."""
        with self._cv:
            return list(self._lora)

    def set_lora_scales(self, scales: Sequence[float]) -> None:
        """Sets :attr:`lora_scales` (every adapter's, as ``Model.lora_scales_from`` gives them) for
        the jobs admitted from now on; running jobs keep theirs."""
        scales = self._check_lora(scales)
        with self._cv:
            self._lora = scales
            self._cv.notify()

    def _check_lora(self, scales: Sequence[float]) -> tuple[float, ...]:
        """Every adapter's scale, checked here (a bad one would fail the engine thread's admission)."""
        out = tuple(float(x) for x in scales)
        if len(out) != len(self._lora) or not all(math.isfinite(x) for x in out):
            raise ValueError(f"expected {len(self._lora)} finite LoRA scales (got {list(scales)!r})")
        return out

    def spec_summary(self) -> str:
        """How it drafts, for the server's start-up line ("" without a drafter)."""
        if self.drafter is None:
            return ""
        s = self.spec
        return (f", speculative {self.drafter.name} (n_max {s.n_max}, n_min {s.n_min}, p_min {s.p_min}; "
                f"at most {self.pass_rows} rows a pass)")

    @property
    def n_active(self) -> int:
        return len(self._active)

    @property
    def n_pending(self) -> int:
        return len(self._pending)

    def submit(
        self,
        prompt_tokens: Sequence[int],
        *,
        on_event: Callable[[Event], None],
        params: SamplingParams | None = None,
        seed: int | None = None,
        max_tokens: int | None = 16,
        stop: str | Sequence[str] | None = None,
        logprobs: int | None = None,
        prompt_logprobs: bool = False,
        generate: bool = True,
        grammar: Grammar | None = None,
        lora: Sequence[float] | None = None,
        slot: int = -1,
        reasoning_budget: ReasoningBudget | None = None,
        speculative: SpecParams | None = None,
    ) -> Job:
        """Queues a generation after ``prompt_tokens``; same checks and meaning as ``Model.stream``
        (``max_tokens`` None or <= 0: until the sequence's context is full). With
        ``prompt_logprobs`` (and ``logprobs``), the prompt is read from scratch with the logits of
        every position and its tokens' entries are in ``job.prompt_logprobs`` before the first
        event, as ``Model.prompt_logprobs`` gives them. ``generate=False``: the prompt is only read
        (and scored); the job ends with it, finish reason "length". ``lora``: every adapter's scale
        for this job (``Model.lora_scales_from``); None: :attr:`lora_scales`. ``slot``: the slot
        it must run in, as llama-server's ``id_slot`` (taken modulo the number of slots; negative:
        any); while that slot is busy the job waits and later ones go ahead. ``reasoning_budget``:
        forces the end of a thinking block that runs over it (see :mod:`splitllm.reasoning_budget`).
        ``speculative``: this job's draft settings (None: the engine's; no effect without a drafter).
        Raises ValueError on bad input."""
        prompt = self.model.check_prompt(prompt_tokens)
        check_max_tokens(max_tokens)
        n_top = check_n_top(logprobs)
        if prompt_logprobs and n_top is None:
            raise ValueError("prompt log-probabilities need logprobs")
        tok = self.model.tokenizer
        sampler = Sampler(params or SamplingParams(), self._n_vocab, self.model._seed_for(seed),
                          tokenizer=tok)
        sampler.accept_prompt(prompt)  # (DRY's history starts with the prompt, as llama-server's)
        text = TokenText(tok, n_prompt=len(prompt), stop=stop_list(stop),
                         limit=completion_limit(max_tokens, len(prompt), self.slot_ctx) if generate else 0,
                         logprobs=n_top)
        job = Job(prompt=prompt, sampler=sampler, text=text, on_event=on_event,
                  want_slot=int(slot) % self.n_parallel if slot >= 0 else -1, budget=reasoning_budget,
                  spec=speculative)
        if lora is not None:
            job.lora = self._check_lora(lora)
        if grammar is not None:
            job.grammar = grammar.state()
        if prompt_logprobs:
            job.prompt_logprobs = PromptLogprobs.of_prompt(prompt, n_top, tok)  # type: ignore[arg-type]
        self._queue(job)
        return job

    def submit_embedding(self, tokens: Sequence[int], *, on_event: Callable[[Event], None],
                         classify: bool = False) -> Job:
        """Queues the reading of ``tokens`` for their embeddings (the final hidden states after the
        output norm, every position, read from scratch): in ``job.embeddings`` when the job's one
        chunk (finish reason "length") is reported; with classify (a reranker: an encoder with a
        classification head, the text read in one pass), the scores (1, n_cls_out) instead. Raises
        ValueError on bad input."""
        prompt = self.model.check_prompt(tokens)
        if classify and not self.model.config["n_cls_out"]:
            raise ValueError("the model has no classification head: it is not a reranker")
        text = TokenText(self.model.tokenizer, n_prompt=len(prompt), limit=0)
        job = Job(prompt=prompt, sampler=Sampler(SamplingParams(), self._n_vocab, 0), text=text,
                  on_event=on_event, embeddings=[], classify=classify)
        self._queue(job)
        return job

    def aembedding(self, tokens: Sequence[int], classify: bool = False) -> ChunkStream:
        """``submit_embedding`` with the result on the running event loop (see :class:`ChunkStream`)."""
        return self._astream(lambda put: self.submit_embedding(tokens, on_event=put, classify=classify))

    def _queue(self, job: Job) -> None:
        with self._cv:
            if self._closed:
                raise EngineClosed("the engine is closed")
            self._pending.append(job)
            self._stats["submitted"] += 1
            self._cv.notify()

    def cancel(self, job: Job) -> None:
        """Stops a job (queued or running) and frees its slot; no more events are reported."""
        with self._cv:
            if not job.finished:
                job.cancelled = True
                self._cv.notify()

    def stream(self, prompt_tokens: Sequence[int], **kwargs: Any) -> Iterator[CompletionChunk]:
        """Blocking iterator over a job's chunks (like ``Model.stream``); closing it cancels the job."""
        events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        job = self.submit(prompt_tokens, on_event=events.put, **kwargs)
        try:
            while True:
                ev = events.get()
                if isinstance(ev, BaseException):
                    raise ev
                yield ev
                if ev.finish_reason is not None:
                    return
        finally:
            self.cancel(job)

    def astream(self, prompt_tokens: Sequence[int], **kwargs: Any) -> ChunkStream:
        """Submits a job whose chunks arrive on the running event loop (see :class:`ChunkStream`)."""
        return self._astream(lambda put: self.submit(prompt_tokens, on_event=put, **kwargs))

    def _astream(self, submit: Callable[[Callable[[Event], None]], Job]) -> ChunkStream:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()

        def put(ev: Event) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, ev)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                pass

        return ChunkStream(self, submit(put), events)

    def close(self) -> None:
        """Stops the scheduler; queued and running jobs end with :class:`EngineClosed`."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()
        if self.drafter is not None and not self._thread.is_alive():
            self.drafter.close()
            self.drafter = None

    def __enter__(self) -> BatchEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- slot state (llama-server's /slots) ----

    def slots(self) -> list[dict[str, Any]]:
        """Each slot: its index, whether a job runs in it (and that job's prompt and tokens so
        far), and the tokens whose K/V it holds."""
        with self._cv:
            out = []
            for s in self._slots:
                job = s.job
                out.append({"id": s.index, "job": job, "cached": list(job.tokens if job else s.cached)})
            return out

    def slot_save(self, index: int) -> concurrent.futures.Future[tuple[list[int], bytes]]:
        """The tokens a slot holds and their K/V (``kv_read``), once no job runs in it."""
        return self._control(index, lambda s: (list(s.cached), self._core.kv_read(s.index, len(s.cached))))

    def slot_restore(self, index: int, tokens: Sequence[int], data: bytes) -> concurrent.futures.Future[int]:
        """Puts back what ``slot_save`` gave (of any slot) into a slot, once no job runs in it: a
        prompt starting with those tokens then reuses them."""
        toks = [int(t) for t in tokens]

        def restore(s: _Slot) -> int:
            if len(toks) >= self.slot_ctx:
                raise ValueError(f"the state holds {len(toks)} tokens: more than a slot's context, "
                                 f"{self.slot_ctx}")
            s.cached, s.logits, s.n_logits = [], None, 0  # (unknown if the write fails half way)
            self._core.kv_write(s.index, len(toks), data)
            s.cached, s.lora = toks, self._lora  # (a saved state does not say its scales)
            return len(toks)

        return self._control(index, restore)

    def slot_erase(self, index: int) -> concurrent.futures.Future[int]:
        """Forgets a slot's cached tokens (once no job runs in it); the number forgotten."""

        def erase(s: _Slot) -> int:
            n = len(s.cached)
            s.cached, s.logits, s.n_logits = [], None, 0
            return n

        return self._control(index, erase)

    def _control(self, index: int, fn: Callable[[_Slot], Any]) -> concurrent.futures.Future[Any]:
        if not 0 <= index < self.n_parallel:
            raise ValueError(f"slot id {index} is out of range [0, {self.n_parallel})")
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._cv:
            if self._closed:
                raise EngineClosed("the engine is closed")
            self._controls.append((index, fn, fut))
            self._cv.notify()
        return fut

    def _run_controls(self) -> None:
        """Under the lock, between passes: the slot operations whose slot is idle (the others wait
        for their slot's job to end)."""
        waiting = []
        for index, fn, fut in self._controls:
            slot = self._slots[index]
            if slot.job is not None:
                waiting.append((index, fn, fut))
                continue
            try:
                fut.set_result(fn(slot))
            except Exception as e:
                fut.set_exception(e)
        self._controls = waiting

    # ---- scheduler (engine thread) ----

    def _run(self) -> None:
        while True:
            with self._cv:
                self._drop_cancelled()
                while not self._closed and not self._pending and not self._active and not self._controls:
                    self._cv.wait()
                    self._drop_cancelled()
                if self._closed:
                    break
                self._run_controls()
                self._admit()
            try:
                self._step()
            except Exception as e:  # a failed pass fails its jobs, not the server
                for job in list(self._active):
                    self._finish(job, e, keep_cache=False)  # the cache contents are unknown now
        with self._cv:
            jobs = list(self._pending) + list(self._active)
            self._pending.clear()
            for _, _, fut in self._controls:
                fut.set_exception(EngineClosed("the engine is closed"))
            self._controls.clear()
        for job in jobs:
            if job.slot >= 0:
                self._finish(job, EngineClosed("the engine is closed"))
            else:
                job.finished = True
                self._emit(job, EngineClosed("the engine is closed"))

    def _drop_cancelled(self) -> None:
        """Under the lock: forgets cancelled jobs, freeing their slots."""
        if any(j.cancelled for j in self._pending):
            for job in [j for j in self._pending if j.cancelled]:
                self._pending.remove(job)
                job.finished = True
                self._stats["finished"] += 1
                self._stats["cancelled"] += 1
        for job in [j for j in self._active if j.cancelled]:
            self._release(job)
            job.finished = True
            self._stats["cancelled"] += 1

    def _admit(self) -> None:
        """Under the lock: moves queued jobs (first come, first served) into free slots, each into the
        free slot whose cache shares the longest prefix with its prompt (then the least recently used),
        or the slot it asked for; a job whose slot is busy waits there while the next ones go ahead
        (llama-server defers it)."""
        free = [s for s in self._slots if s.job is None]
        i = 0
        while i < len(self._pending) and free:
            job = self._pending[i]
            lora = self._lora if job.lora is None else job.lora
            if lora != self._applied_lora():
                if self._active:
                    break  # it waits (first come, first served) for the jobs under other scales
                self.model._apply_lora_scales(list(lora))
            if job.want_slot >= 0 and all(s.index != job.want_slot for s in free):
                i += 1
                continue
            del self._pending[i]
            job.lora = lora

            def reusable(s: _Slot, job: Job = job) -> int:  # (a cache of other scales is not)
                return common_prefix(s.cached, job.prompt) if s.lora == job.lora else 0

            slot = next(s for s in free if s.index == job.want_slot) if job.want_slot >= 0 else \
                max(free, key=lambda s: (reusable(s), -s.last_used))
            free.remove(slot)
            if slot.lora != lora:
                slot.cached, slot.logits, slot.n_logits, slot.lora = [], None, 0, lora
            keep = min(reusable(slot), len(job.prompt))
            if job.prompt_logprobs is not None or job.embeddings is not None:
                keep = 0  # every position's rows are wanted: read the prompt from scratch
            elif (keep == len(job.prompt) and slot.logits is not None and slot.n_logits == keep
                  and self._core.kv_reusable(slot.index, keep) == keep):
                job.first_logits = slot.logits  # the same prompt again: nothing to evaluate
            else:  # (a sliding-window cache may no longer hold what continuing from there attends to)
                keep = self._read_from(min(keep, len(job.prompt) - 1), len(job.prompt))
                keep = self._core.kv_reusable(slot.index, keep)
            if keep < slot.n_logits:
                slot.logits, slot.n_logits = None, 0  # its cells are about to be overwritten
            slot.job = job
            job.slot = slot.index
            job.t_start = time.perf_counter()
            job.tokens = job.prompt[:keep]
            job.n_cached = keep
            self._stats["prompt_cached"] += keep
            self._active.append(job)
            self._stats["prompt_tokens"] += len(job.prompt)

    def _applied_lora(self) -> tuple[float, ...]:
        return tuple(self.model._lora_scales)

    def _step(self) -> None:
        """Evaluates the next token of every decoding job, then prompt chunks of the others."""
        start = time.perf_counter()
        jobs = list(self._active)
        for job in [j for j in jobs if j.first_logits is not None]:
            logits, job.first_logits = job.first_logits, None
            self._sample(job, logits)
        decoders = [j for j in jobs if j.next_token is not None and not j.finished]
        if decoders:
            self._note_batch(len(decoders))
        drafts = self._drafts(decoders)
        sizes = [1 + len(drafts.get(j, ())) for j in decoders]
        for idx in pass_groups(sizes, self.decode_width, self.pass_rows):
            group = [decoders[i] for i in idx]
            tokens: list[int] = []
            pos: list[int] = []
            slots: list[int] = []
            for j in group:  # each job's token, then its guesses
                n = 1 + len(drafts.get(j, ()))
                tokens += [j.next_token, *drafts.get(j, ())]  # type: ignore[list-item]
                pos += range(j.n_past, j.n_past + n)
                slots += [j.slot] * n
            rows = self._forward(tokens, pos, slots, [1] * len(tokens))
            at = 0
            for job in group:
                draft = drafts.get(job, [])
                self._verify(job, draft, rows[at: at + 1 + len(draft)])
                at += 1 + len(draft)
        budget = self._n_batch
        for job in [j for j in jobs if j.next_token is None and j.first_logits is None and not j.finished]:
            cut = min((job.n_past // self._n_batch + 1) * self._n_batch, len(job.prompt))
            n = cut - job.n_past  # cut where reading from scratch cuts: every n_batch tokens
            if n > budget:
                break
            budget -= n
            chunk = job.prompt[job.n_past: job.n_past + n]
            last = job.n_past + n == len(job.prompt)
            pos = list(range(job.n_past, job.n_past + n))
            if job.prompt_logprobs is not None:  # every row, as Model.prompt_logprobs reads them
                rows = self._forward(chunk, pos, [job.slot] * n, [1] * n,
                                     np.empty((n, self._n_vocab), dtype=np.float32))
                job.prompt_logprobs.feed(rows)
            elif job.classify:  # an encoder's first token (its text is one chunk), a decoder's last
                want = [1] + [0] * (n - 1) if self.model.config["encoder"] else [0] * (n - 1) + [int(last)]
                if any(want):
                    rows = self._forward(chunk, pos, [job.slot] * n, want,
                                         np.empty((1, self.model.config["n_cls_out"]), dtype=np.float32),
                                         embeddings=True, classify=True)
                    job.embeddings.append(rows)  # type: ignore[union-attr]
                else:  # (a decoder's earlier chunks fill the cache)
                    rows = self._forward(chunk, pos, [job.slot] * n, want)
            elif job.embeddings is not None:
                rows = self._forward(chunk, pos, [job.slot] * n, [1] * n,
                                     np.empty((n, self._n_embd), dtype=np.float32), embeddings=True)
                job.embeddings.append(rows)
            else:
                rows = self._forward(chunk, pos, [job.slot] * n, [0] * (n - 1) + [int(last)])
            job.tokens += chunk
            job.n_prompt_evaluated += n
            self._count("prompt_evaluated", n)
            if last:
                slot = self._slots[job.slot]
                if job.prompt_logprobs is None and job.embeddings is None:
                    slot.logits, slot.n_logits = rows[-1].copy(), len(job.prompt)
                else:  # a pass with every row's logits may round its last row differently
                    slot.logits, slot.n_logits = None, 0
                self._sample(job, rows[-1])
        self._count("busy_seconds", time.perf_counter() - start)

    def _drafts(self, decoders: list[Job]) -> dict[Job, list[int]]:
        """The drafter's guesses after each decoding job's next token, as many as its settings, its
        room in the slot, its tokens left and a pass allow (llama-server's get_n_draft_max)."""
        if self.drafter is None or self.pass_rows < 2:
            return {}
        reqs = []
        for j in decoders:
            spec = j.spec or self.spec
            room = min(spec.n_max, self.pass_rows - 1, self.slot_ctx - 1 - j.n_past,
                       j.text.limit - j.text.n_done - 1)
            if room > 0 and room >= spec.n_min:
                reqs.append((j, DraftRequest(j.slot, [*j.tokens, j.next_token], room, spec)))  # type: ignore[list-item]
        if not reqs:
            return {}
        try:
            self.drafter.draft([r for _, r in reqs])
        except Exception:
            self.drafter.reset()  # (its caches' contents are unknown now)
            raise
        out = {}
        for j, r in reqs:
            guesses = [t for t in r.result[: r.n_max] if 0 <= t < self._n_vocab]
            if guesses:
                out[j] = guesses
        return out

    def _verify(self, job: Job, draft: list[int], rows: np.ndarray) -> None:
        """Samples the job's next tokens from its rows of a pass: after its token, then after each
        guess as long as the token sampled equals that guess (its K/V is then already cached)."""
        job.tokens.append(job.next_token)  # type: ignore[arg-type]
        job.n_draft += len(draft)  # (counted before the job's last event, which reports them)
        self._sample(job, rows[0])
        accepted = 0
        for guess, row in zip(draft, rows[1:], strict=True):
            if job.finished or job.next_token != guess:
                break
            job.tokens.append(guess)
            accepted += 1
            job.n_draft_accepted += 1
            self._sample(job, row)
        self._count("generated_evaluated", 1 + accepted)
        if draft:
            self._count("draft_tokens", len(draft))
            self._count("draft_accepted", accepted)
            self._count("draft_checks", 1)

    def _forward(self, tokens: list[int], pos: list[int], slots: list[int], want: list[int],
                 out: np.ndarray | None = None, embeddings: bool = False,
                 classify: bool = False) -> np.ndarray:
        """One decode call; the logits rows (or with ``embeddings``, the hidden states; with
        ``classify``, a reranker's scores) of the flagged tokens (in ``out``, or a view valid until
        the next call)."""
        n_out = sum(want)
        t0 = time.perf_counter()
        out = self._core.decode(np.asarray(tokens, dtype=np.int32), np.asarray(pos, dtype=np.int32),
                                np.asarray(slots, dtype=np.int32), np.asarray(want, dtype=np.uint8),
                                self._logits[:n_out] if out is None else out, embeddings, classify)
        with self._cv:
            self._stats["steps"] += 1
            self._stats["decode_seconds"] += time.perf_counter() - t0
        return out

    def _note_batch(self, n: int) -> None:
        with self._cv:
            self._stats["max_batch_seqs"] = max(self._stats["max_batch_seqs"], n)

    def _read_from(self, keep: int, n: int) -> int:
        """Where to start reading a prompt of ``n`` tokens whose first ``keep`` are cached: at most
        ``keep``, and early enough that the first pass is in the same size class as the pass that
        holds these positions when the prompt is read from scratch."""
        t = self.prefill_threshold
        if t is None or keep == 0:
            return keep
        start = keep // self._n_batch * self._n_batch  # the from-scratch pass holding position keep
        end = min(start + self._n_batch, n)
        return min(keep, max(start, end - t)) if end - start >= t else keep

    def _probe_prefill_threshold(self, cap: int = 32) -> int | None:
        """The fewest tokens of one prompt pass whose rows differ from single-token passes (the
        kernels' other path), or None if none up to ``cap`` (measured on slot 0)."""
        return single_pass_limit(self._core, self._n_vocab, min(cap, self.slot_ctx - 1, self._n_batch))

    def _probe_decode_width(self) -> int:
        """The most decode rows one pass may hold with each row equal to a single-token pass (the
        kernels switch to another path, with other rounding, for wider batches). Measured on
        position 0 of the slots, before any request: one pass per slot, then a binary search."""
        n = self.n_parallel
        if n == 1:
            return 1
        toks = [(1000 + 7919 * i) % self._n_vocab for i in range(n)]

        def rows(idx: list[int]) -> np.ndarray:
            return self._core.decode(np.asarray([toks[i] for i in idx], dtype=np.int32),
                                     np.zeros(len(idx), dtype=np.int32), np.asarray(idx, dtype=np.int32))

        solo = np.concatenate([rows([i]) for i in range(n)])
        if not np.array_equal(rows([0])[0], solo[0]):
            return n  # the backend does not repeat itself exactly: nothing to keep equal
        lo, hi = 1, n  # rows of a batch of lo are equal to single passes; find the largest such
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if np.array_equal(rows(list(range(mid))), solo[:mid]):
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _sample(self, job: Job, logits: np.ndarray) -> None:
        job.t_last = time.perf_counter()
        job.t_prompt = job.t_prompt or job.t_last
        if job.text.done:  # nothing to generate: the prompt was all
            self._finish(job, job.text.finish())
            return
        drawn = logits if job.budget is None else job.budget.apply(logits)
        if job.grammar is None:
            token = job.sampler.sample(drawn)
        else:
            try:
                token = sample_with_grammar(job.sampler, drawn, job.grammar, self.model.grammar_vocab())
            except (ValueError, _core.Error) as e:  # this job's grammar failed: it alone ends
                self._finish(job, e if isinstance(e, ValueError) else ValueError(str(e)))
                return
        job.sampler.accept(token)
        if job.budget is not None:
            job.budget.accept(token)
        n_top = job.text.n_logprobs
        piece = self.model.tokenizer.token_to_piece
        entry = None if n_top is None else token_logprob(logits, token, n_top, piece)
        chunk = job.text.push(token, entry)
        if chunk is not None:
            self._emit(job, chunk)
        if job.text.done:
            self._finish(job, job.text.finish())
        else:
            job.next_token = token

    def _count(self, name: str, n: float) -> None:
        with self._cv:
            self._stats[name] += n

    def _release(self, job: Job, *, keep_cache: bool = True) -> None:
        """Under the lock: frees the job's slot, which keeps the tokens the job evaluated for
        prefix reuse."""
        slot = self._slots[job.slot]
        slot.cached = job.tokens if keep_cache else []
        slot.job = None
        self._clock += 1
        slot.last_used = self._clock
        self._active.remove(job)
        self._stats["finished"] += 1

    def _finish(self, job: Job, last: Event, *, keep_cache: bool = True) -> None:
        with self._cv:
            self._release(job, keep_cache=keep_cache)
        self._emit(job, last)
        job.finished = True  # after the last event, so that a caller seeing it has seen all

    def _emit(self, job: Job, ev: Event) -> None:
        if job.cancelled:
            return
        try:
            job.on_event(ev)
        except Exception:  # a broken consumer cancels its own job only
            job.cancelled = True
