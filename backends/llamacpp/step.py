"""The llama.cpp scheduler's step: one llama_batch from every active sequence (newcomers'
prompt chunks, one token and its prompt-lookup draft per decoding one), one llama_decode, then
sampling each sequence's rows and verifying its draft."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import llama_cpp

from lokal.backends.llamacpp.cache import last_token_alone
from lokal.backends.llamacpp.guidance import apply_mask
from lokal.backends.llamacpp.jobs import Seq
from lokal.backends.llamacpp.lookup import Drafter
from lokal.backends.llamacpp.output import TokenOutput
from lokal.backends.spec import Speculation


def put_row(batch: Any, n: int, token: int, pos: int, seq_id: int, logits: bool) -> None:
    """Row `n` of a llama_batch: `token` at `pos` of sequence `seq_id`, with its logits kept
    or not."""
    batch.token[n] = token
    batch.pos[n] = pos
    batch.n_seq_id[n] = 1
    batch.seq_id[n][0] = seq_id
    batch.logits[n] = logits


class Stepper(TokenOutput):
    """The Scheduler's third layer (see SlotKeeper): builds and runs each step."""

    def __init__(self, model: Any, ctx: Any, *, speculation: Speculation | None,
                 deliver: Callable[[], None] | None, **slots: int) -> None:
        super().__init__(model, ctx, **slots)
        # Called before each llama_decode and before the engine thread waits or ends: jobs'
        # `emit` may only queue events until then (the backend's mailbox does).
        self._deliver = deliver or (lambda: None)
        self._batch = llama_cpp.llama_batch_init(self._budget + len(self._slots.slots), 0, 1)
        self._speculation = speculation if speculation is not None \
            else Speculation(enabled=False)
        self.drafts_total = 0
        self.draft_tokens_total = 0
        self.accepted_tokens_total = 0

    def _step(self) -> None:
        batch = self._batch
        n = 0
        samples: list[tuple[Seq, int]] = []
        fed: list[tuple[Seq, list[int]]] = []

        def add(token: int, pos: int, seq_id: int, logits: bool) -> None:
            nonlocal n
            put_row(batch, n, token, pos, seq_id, logits)
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

    def _verify(self, seq: Seq, index: int, draft: list[int]) -> None:
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
