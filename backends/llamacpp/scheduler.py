"""Continuous batching over llama.cpp: one thread owns the context and, each step, decodes one
batch holding every active sequence (newcomers' prompt chunks, one token per decoding one)."""

from __future__ import annotations

import codecs
import ctypes
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import llama_cpp
import numpy as np

from lokal.backends.base import FinishReason, SamplingParams, TokenLogprob, TopLogprob
from lokal.backends.errors import Busy, EngineDown
from lokal.backends.llamacpp.cache import (
    Placement,
    PromptCache,
    Saved,
    Slot,
    SlotTable,
    last_token_alone,
)
from lokal.backends.llamacpp.guidance import LazyCall, apply_mask
from lokal.backends.llamacpp.lookup import Drafter
from lokal.backends.llamacpp.sampling import SamplerChain, logits_row
from lokal.backends.spec import Speculation
from lokal.backends.stops import StopMatcher

logger = logging.getLogger(__name__)

# A slot about to lose at least this many cached tokens has them saved to the RAM prompt cache
# first (saving 300 tokens of SmolLM2's KV takes ~5 ms; recomputing them ~1.4 s here).
SAVE_MIN_TOKENS = 64
# Restore from RAM when that reuses at least this many more tokens than the slots offer.
RESTORE_MIN_GAIN = 8


@dataclass(frozen=True, slots=True)
class Event:
    """What the engine thread hands to a request's stream (through `Job.emit`)."""

    index: int
    text: str = ""
    token_ids: tuple[int, ...] = ()
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    queue_seconds: float | None = None
    error: str | None = None
    logprobs: tuple[TokenLogprob, ...] = ()
    stop_sequence: str | None = None


@dataclass(slots=True)
class Job:
    """One request: n choices over one prompt. `emit` must be thread-safe."""

    request_id: str
    prompt: list[int]
    sampling: SamplingParams
    max_tokens: int
    seed: int
    n: int
    emit: Callable[[Event], None]
    matchers: list[Any] = field(default_factory=list)
    """One llguidance matcher per choice when the output is constrained."""
    lazy: list[LazyCall] = field(default_factory=list)
    """One per choice when only the tool calls the model begins are constrained."""
    top_logprobs: int | None = None
    """None: no logprobs; k >= 0: the chosen token's logprob and the k most likely."""
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued_at: float = field(default_factory=time.monotonic)


@dataclass(slots=True, eq=False)
class _Seq:
    job: Job
    index: int
    slot: Slot
    sampler: SamplerChain
    matcher: Any
    """The constraint's llguidance matcher, or None (with `lazy`: while no call is open)."""
    lazy: LazyCall | None
    reuse: int
    n_past: int
    prefilling: bool
    leader: bool
    next_token: int = -1
    generated: int = 0
    held: list[int] = field(default_factory=list)
    """Generated tokens not handed over yet: their text is held back (an incomplete UTF-8
    character, a possible stop sequence). They go with the next event, so that every token
    reaches the stream (and the inter-token-latency metric)."""
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace"))
    stops: StopMatcher = field(default_factory=lambda: StopMatcher(()))
    drafter: Drafter | None = None
    """Prompt-lookup drafts for this sequence (speculation on, once its prompt is in)."""


class Scheduler:
    """Owns a llama.cpp context with `n_slots` sequences, each in its own KV stream."""

    def __init__(self, model: Any, ctx: Any, *, n_slots: int, prompt_budget: int,
                 max_waiting: int, copy_min_gain: int, prompt_cache_bytes: int = 0,
                 speculation: Speculation | None = None,
                 deliver: Callable[[], None] | None = None) -> None:
        self._model = model
        # Called before each llama_decode and before the engine thread waits or ends: jobs'
        # `emit` may only queue events until then (the backend's mailbox does).
        self._deliver = deliver or (lambda: None)
        self._ctx = ctx
        self._vocab = model.vocab
        self._n_vocab = int(llama_cpp.llama_vocab_n_tokens(model.vocab))
        self._mem = llama_cpp.llama_get_memory(ctx)
        self._budget = prompt_budget
        self._slots = SlotTable(n_slots, prompt_budget, copy_min_gain)
        self._ram = PromptCache(prompt_cache_bytes, prompt_budget)
        # Slots whose stream another slot copies at the next decode: llama.cpp copies the
        # tensor data then, so nothing may write into them before (a RAM restore would).
        self._copy_sources: set[int] = set()
        self._batch = llama_cpp.llama_batch_init(prompt_budget + n_slots, 0, 1)
        self._max_waiting = max_waiting
        self._waiting: deque[Job] = deque()
        self._cond = threading.Condition()
        self._active: list[_Seq] = []
        self._stopping = False
        self._dead: str | None = None
        self._thread = threading.Thread(target=self._run, name="lokal-llamacpp", daemon=True)
        self._speculation = speculation if speculation is not None \
            else Speculation(enabled=False)
        # Token id -> its bytes: detokenizing one token is a call into llama.cpp per token.
        self._pieces: dict[int, bytes] = {}
        self.cached_tokens_total = 0
        self.drafts_total = 0
        self.draft_tokens_total = 0
        self.accepted_tokens_total = 0
        self.ram_hit_tokens_total = 0
        self.cancelled_total = 0

    # -- called from the event loop -------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> bool:
        """Stop the engine thread after its current step; the requests it still holds are
        answered with an error. False if the thread did not end within `timeout` (then
        nothing it uses may be freed)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)
        if self._thread.is_alive():
            return False
        llama_cpp.llama_batch_free(self._batch)
        return True

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def error(self) -> str | None:
        """Why this engine can no longer serve: its thread ended without being stopped."""
        if self._dead is None and self._thread.ident is not None \
                and not self._thread.is_alive() and not self._stopping:
            return "the llama.cpp engine thread stopped"
        return self._dead

    def submit(self, job: Job) -> None:
        with self._cond:
            error = self.error
            if error is not None:
                raise EngineDown(error)
            live = sum(1 for j in self._waiting if not j.cancelled.is_set())
            if live >= self._max_waiting:
                raise Busy(f"{live} requests are already waiting for this model", retry_after=1)
            self._waiting.append(job)
            self._cond.notify()

    @property
    def running(self) -> int:
        return len(self._active)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def n_slots(self) -> int:
        return len(self._slots.slots)

    @property
    def ram_cache_bytes(self) -> int:
        return self._ram.bytes

    def kv_tokens(self) -> int:
        return sum(len(s.tokens) for s in self._slots.slots)

    def kv_tokens_busy(self) -> int:
        """Cells held by running sequences; a finished one's cells are kept only for prefix
        reuse and are free to overwrite (vLLM counts its cached blocks as free the same way)."""
        return sum(len(s.tokens) for s in self._slots.slots if s.busy)

    # -- the engine thread ----------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._stopping and not self._active and not self._waiting:
                        self._deliver()
                        self._cond.wait()
                    if self._stopping:
                        self._die_stopped()
                        break
                try:
                    with self._cond:
                        self._admit()
                    self._drop_cancelled()
                    if self._active:
                        self._step()
                except Exception:
                    # A fault fails the requests it touched; the engine goes on serving.
                    logger.exception("llama.cpp engine fault; failing the running requests")
                    self._fail_all("llama.cpp engine fault")
        except BaseException:
            # Not re-raised: logged here, and reported by `error` (health, metrics, 503s).
            logger.critical("the llama.cpp engine thread died", exc_info=True)
            self._die("the llama.cpp engine thread died")
        finally:
            for seq in self._active:
                seq.sampler.close()
            self._deliver()

    def _admit(self) -> None:
        """Move waiting jobs into free slots, in arrival order (called with the lock held)."""
        while self._waiting:
            job = self._waiting[0]
            if job.cancelled.is_set():
                self._waiting.popleft()
                continue
            free = len(self._slots.free())
            if free < job.n:
                return
            self._waiting.popleft()
            try:
                self._start(job)
            except Exception:
                logger.exception("request %s: could not be started", job.request_id)
                job.emit(Event(0, error="the request could not be started"))
                for seq in [s for s in self._active if s.job is job]:
                    self._release(seq)

    def _start(self, job: Job) -> None:
        try:
            samplers = [SamplerChain(self._n_vocab, job.sampling, (job.seed + i) % 2**32)
                        for i in range(job.n)]
        except Exception as exc:
            logger.error("request %s: sampler set-up failed: %s", job.request_id, exc)
            job.emit(Event(0, error="the sampler could not be set up"))
            return
        placement = self._slots.place(job.prompt)
        saved, from_ram = self._ram.best(job.prompt)
        if saved is not None and from_ram >= placement.reuse + RESTORE_MIN_GAIN:
            spare = self._slots.spare()
            if spare.seq_id not in self._copy_sources:
                self._ram.touch(saved)
                placement = Placement(spare, from_ram, None, restore=saved)
                self.ram_hit_tokens_total += from_ram
        leader_slot = placement.slot
        self._prepare_slot(placement)
        self._slots.claim(leader_slot)
        self.cached_tokens_total += placement.reuse
        waited = time.monotonic() - job.enqueued_at
        for index in range(job.n):
            if index == 0:
                slot = leader_slot
            else:
                slot = self._slots.spare()
                self._slots.claim(slot)
            seq = _Seq(
                job=job, index=index, slot=slot,
                sampler=samplers[index],
                matcher=job.matchers[index] if job.matchers else None,
                lazy=job.lazy[index] if job.lazy else None,
                reuse=placement.reuse, n_past=placement.reuse, prefilling=True,
                leader=index == 0,
            )
            seq.stops = StopMatcher(job.sampling.stop)
            self._active.append(seq)
            # An empty first event: the request left the queue (its wait is measured).
            job.emit(Event(index, queue_seconds=waited))

    def _prepare_slot(self, placement: Placement) -> None:
        slot, reuse = placement.slot, placement.reuse
        replaced = placement.copy_from is not None or placement.restore is not None
        self._save(slot, kept=0 if replaced else reuse)
        if placement.restore is not None:
            saved = placement.restore
            llama_cpp.llama_memory_seq_rm(self._mem, slot.seq_id, -1, -1)
            read = llama_cpp.llama_state_seq_set_data(self._ctx, saved.data, saved.size,
                                                      slot.seq_id)
            if read != saved.size:
                slot.tokens.clear()
                raise RuntimeError(f"restoring {len(saved.tokens)} cached tokens failed")
            slot.tokens = list(saved.tokens)
        elif placement.copy_from is not None:
            self._copy_sources.add(placement.copy_from.seq_id)
            # Streams copy whole (llama.cpp copies the buffer at the next decode); then trim.
            llama_cpp.llama_memory_seq_cp(self._mem, placement.copy_from.seq_id, slot.seq_id,
                                          -1, -1)
            slot.tokens = list(placement.copy_from.tokens)
        llama_cpp.llama_memory_seq_rm(self._mem, slot.seq_id, reuse, -1)
        del slot.tokens[reuse:]

    def _save(self, slot: Slot, kept: int) -> None:
        """Keep what `slot` is about to lose in the RAM prompt cache, if it is worth it."""
        if len(slot.tokens) - kept < SAVE_MIN_TOKENS or not self._ram.wants(slot.tokens):
            return
        size = llama_cpp.llama_state_seq_get_size(self._ctx, slot.seq_id)
        if size > self._ram.capacity:
            return
        data = (ctypes.c_uint8 * size)()
        if llama_cpp.llama_state_seq_get_data(self._ctx, data, size, slot.seq_id) == size:
            self._ram.put(Saved(list(slot.tokens), data, size))

    def _drop_cancelled(self) -> None:
        for seq in [s for s in self._active if s.job.cancelled.is_set()]:
            self.cancelled_total += 1
            logger.info("request %s choice %d: cancelled after %d tokens",
                        seq.job.request_id, seq.index, seq.generated)
            self._release(seq)

    def _step(self) -> None:
        batch = self._batch
        n = 0
        samples: list[tuple[_Seq, int]] = []
        fed: list[tuple[_Seq, list[int]]] = []

        def add(token: int, pos: int, seq_id: int, logits: bool) -> None:
            nonlocal n
            batch.token[n] = token
            batch.pos[n] = pos
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = seq_id
            batch.logits[n] = logits
            n += 1

        # Prompt tokens go to newcomers in arrival order, up to the step's budget.
        chunks: dict[int, tuple[int, int]] = {}
        budget = self._budget
        for seq in self._active:
            if budget <= 0:
                break
            if not (seq.prefilling and seq.leader):
                continue
            start = seq.n_past
            n_prompt = len(seq.job.prompt)
            # Chunks end on multiples of the budget, and a tiled last chunk leaves the last
            # token to a step of its own: the same chunks as a fresh evaluation, so that a
            # repeated prompt keeps all its cached cells but the last token's (cache.py).
            chunked = n_prompt - 1 if last_token_alone(n_prompt, self._budget) else n_prompt
            end = n_prompt if start >= chunked else min(
                chunked, (start // self._budget + 1) * self._budget, start + budget)
            chunks[id(seq)] = (start, end)
            budget -= end - start
        # The batch lists sequences in slot order: with one KV stream per slot llama.cpp splits
        # a batch into micro-batches of consecutive sequence ids, so arrival order would make
        # one step of 8 streams several passes over the weights.
        drafts: dict[int, list[int]] = {}
        decoding = sum(1 for s in self._active if not s.prefilling)
        for seq in sorted(self._active, key=lambda s: s.slot.seq_id):
            if not seq.prefilling:
                draft: list[int] = []
                if seq.drafter is not None and budget > 0:
                    # Never past max_tokens: the last token allowed needs no draft after it.
                    draft = seq.drafter.draft(
                        min(budget, seq.job.max_tokens - seq.generated - 1), decoding)
                    budget -= len(draft)
                add(seq.next_token, seq.n_past, seq.slot.seq_id, True)
                samples.append((seq, n - 1))
                for offset, token in enumerate(draft, 1):
                    add(token, seq.n_past + offset, seq.slot.seq_id, True)
                if draft:
                    drafts[id(seq)] = draft
                fed.append((seq, [seq.next_token, *draft]))
            elif id(seq) in chunks:
                start, end = chunks[id(seq)]
                prompt = seq.job.prompt
                for pos in range(start, end):
                    add(prompt[pos], pos, seq.slot.seq_id, pos == len(prompt) - 1)
                fed.append((seq, prompt[start:end]))
                if end == len(prompt):
                    samples.append((seq, n - 1))
        batch.n_tokens = n
        self._deliver()  # the last step's events go out while this one computes
        status = llama_cpp.llama_decode(self._ctx, batch)
        self._copy_sources.clear()  # pending stream copies are done by now
        if status != 0:
            raise RuntimeError(f"llama_decode returned {status}")
        for seq, tokens in fed:
            seq.slot.tokens.extend(tokens)
            seq.n_past += len(tokens)
        for seq, index in samples:
            if not seq.prefilling:
                self._verify(seq, index, drafts.get(id(seq), []))
                continue
            self._fork(seq)
            group = self._group(seq)
            logp = None if seq.job.top_logprobs is None else self._log_softmax(index)
            for member in group:
                member.prefilling = False
                if self._speculation.enabled:
                    member.drafter = Drafter(member.slot.tokens, self._speculation)
                if member.matcher is not None:  # after the logprobs: they stay the model's
                    apply_mask(member.matcher, self._logits(index))
                self._accept(member, member.sampler.sample(self._ctx, index), logp)

    def _verify(self, seq: _Seq, index: int, draft: list[int]) -> None:
        """Sample `seq`'s next tokens from the rows of its fed token and its draft, in order,
        while the drafted token is the one sampled: the output is what decoding one token a
        step gives (the same rows, the same sampler calls), only in fewer steps. Then drop
        the KV cells of the rejected draft tokens."""
        accepted = 0
        alive = True
        for offset in range(len(draft) + 1):
            row = index + offset
            logp = None if seq.job.top_logprobs is None else self._log_softmax(row)
            if seq.matcher is not None:  # after the logprobs: they stay the model's
                apply_mask(seq.matcher, self._logits(row))
            token = seq.sampler.sample(self._ctx, row)
            if not self._accept(seq, token, logp):
                alive = False  # finished: its cells stay, and slot.tokens lists them all
                break
            if offset == len(draft) or token != draft[offset]:
                break
            accepted += 1
        if draft:
            self.drafts_total += 1
            self.draft_tokens_total += len(draft)
            self.accepted_tokens_total += accepted
            assert seq.drafter is not None
            seq.drafter.verified(len(draft), accepted)
        rejected = len(draft) - accepted
        if rejected and alive:
            keep = seq.n_past - rejected
            llama_cpp.llama_memory_seq_rm(self._mem, seq.slot.seq_id, keep, -1)
            del seq.slot.tokens[keep:]
            seq.n_past = keep

    def _logits(self, batch_index: int) -> np.ndarray[Any, Any]:
        """A writable view of one batch row's logits inside the llama.cpp context."""
        return logits_row(self._ctx, batch_index, self._n_vocab)

    def _log_softmax(self, batch_index: int) -> np.ndarray[Any, Any]:
        logits = self._logits(batch_index).astype(np.float64)
        shifted = logits - logits.max()
        result: np.ndarray[Any, Any] = shifted - np.log(np.exp(shifted).sum())
        return result

    def _token_logprob(self, token: int, logp: np.ndarray[Any, Any], top_n: int) -> TokenLogprob:
        def entry(t: int) -> tuple[str, tuple[int, ...], float]:
            raw = self._piece(t)
            return raw.decode("utf-8", "replace"), tuple(raw), float(logp[t])

        top: tuple[TopLogprob, ...] = ()
        if top_n:
            best = np.argpartition(-logp, top_n)[:top_n]
            best = best[np.argsort(-logp[best])]
            top = tuple(TopLogprob(*entry(int(t))) for t in best)
        return TokenLogprob(*entry(token), top=top)

    def _group(self, leader: _Seq) -> list[_Seq]:
        return [s for s in self._active if s.job is leader.job]

    def _fork(self, leader: _Seq) -> None:
        """n > 1: the other choices share the prompt's KV cells instead of recomputing them."""
        for seq in self._group(leader):
            if seq is leader:
                continue
            llama_cpp.llama_memory_seq_cp(self._mem, leader.slot.seq_id, seq.slot.seq_id,
                                          -1, -1)
            seq.slot.tokens = list(leader.slot.tokens)
            seq.n_past = leader.n_past

    def _accept(self, seq: _Seq, token: int, logp: np.ndarray[Any, Any] | None) -> bool:
        """Hand `token` to the request; False if that finished the sequence."""
        job = seq.job
        if llama_cpp.llama_vocab_is_eog(self._vocab, token):
            self._finish(seq, "stop")
            return False
        seq.generated += 1
        if seq.matcher is not None and not seq.matcher.consume_token(token):
            logger.error("request %s: the constraint refused token %d: %s", job.request_id,
                         token, seq.matcher.get_error()[:200])
            job.emit(Event(seq.index, error="the output constraint failed"))
            self._release(seq)
            return False
        piece = seq.decoder.decode(self._piece(token))
        if seq.lazy is not None:
            if seq.matcher is None:
                seq.matcher = seq.lazy.begun(piece)
            elif seq.matcher.is_accepting():  # the call closed: the text is free again
                seq.matcher = None
                seq.lazy.closed()
        text = seq.stops.feed(piece)
        if logp is not None and job.top_logprobs is not None:
            logprob = self._token_logprob(token, logp, job.top_logprobs)
            job.emit(Event(seq.index, text, self._take(seq, token), logprobs=(logprob,)))
        elif text:
            job.emit(Event(seq.index, text, self._take(seq, token)))
        else:
            seq.held.append(token)
        if seq.stops.stopped or (seq.lazy is None and seq.matcher is not None
                                 and seq.matcher.is_stopped()):
            self._finish(seq, "stop")
            return False
        if seq.generated >= job.max_tokens:
            self._finish(seq, "length")
            return False
        seq.next_token = token
        if seq.drafter is not None:
            seq.drafter.extend([token])
        return True

    def _piece(self, token: int) -> bytes:
        """The token's bytes, from llama.cpp once per token id (at most the vocabulary)."""
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = bytes(self._model.detokenize([token]))
        return piece

    @staticmethod
    def _take(seq: _Seq, *tokens: int) -> tuple[int, ...]:
        """The held tokens followed by `tokens`: what the event being sent now carries."""
        if not seq.held:
            return tokens
        ids = (*seq.held, *tokens)
        seq.held.clear()
        return ids

    def _finish(self, seq: _Seq, reason: FinishReason) -> None:
        if not seq.stops.stopped:
            tail = seq.stops.feed(seq.decoder.decode(b"", final=True)) + seq.stops.flush()
            if tail:
                seq.job.emit(Event(seq.index, tail, self._take(seq)))
        seq.job.emit(Event(seq.index, token_ids=self._take(seq), finish_reason=reason,
                           prompt_tokens=len(seq.job.prompt),
                           completion_tokens=seq.generated, cached_tokens=seq.reuse,
                           stop_sequence=seq.stops.matched))
        self._release(seq)

    def _release(self, seq: _Seq) -> None:
        seq.sampler.close()
        self._active.remove(seq)
        self._slots.release(seq.slot)
        if seq.prefilling and not seq.leader:
            # A sibling that never got the prompt's cells holds nothing reusable.
            seq.slot.tokens.clear()
            llama_cpp.llama_memory_seq_rm(self._mem, seq.slot.seq_id, 0, -1)

    def _die_stopped(self) -> None:
        """Answer everyone still waiting or running when the engine is stopped (lock held)."""
        waiting = list(self._waiting)
        self._waiting.clear()
        for job in waiting:
            job.emit(Event(0, error="the engine was stopped"))
        self._fail_all("the engine was stopped")

    def _die(self, message: str) -> None:
        """Answer everyone still waiting or running: nobody is left to serve them."""
        with self._cond:
            self._dead = message
            waiting = list(self._waiting)
            self._waiting.clear()
        for job in waiting:
            job.emit(Event(0, error=message))
        try:
            self._fail_all(message)
        except Exception:
            logger.exception("clean-up after the engine thread died failed")

    def _fail_all(self, message: str) -> None:
        for seq in list(self._active):
            seq.job.emit(Event(seq.index, error=message))
            seq.sampler.close()
            self._slots.release(seq.slot)
        self._active.clear()
        llama_cpp.llama_memory_clear(self._mem, True)
        self._copy_sources.clear()
        for slot in self._slots.slots:
            slot.tokens.clear()
