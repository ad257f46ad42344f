"""The llama.cpp scheduler's output side: a sampled token handed to its request (end of
generation, the constraint, UTF-8 text, stop strings, logprobs, max_tokens) and a finished
choice's last event."""

from __future__ import annotations

import logging
from typing import Any

import llama_cpp
import numpy as np

from lokal.backends.base import FinishReason, TokenLogprob, TopLogprob
from lokal.backends.llamacpp.jobs import Event, Seq
from lokal.backends.llamacpp.kv import SlotKeeper
from lokal.backends.llamacpp.sampling import logits_row

logger = logging.getLogger(__name__)


class TokenOutput(SlotKeeper):
    """The Scheduler's second layer (see SlotKeeper)."""

    def __init__(self, model: Any, ctx: Any, **slots: int) -> None:
        super().__init__(ctx, **slots)
        self._model = model
        self._vocab = model.vocab
        self._n_vocab = int(llama_cpp.llama_vocab_n_tokens(model.vocab))
        # Token id -> its bytes: detokenizing one token is a call into llama.cpp per token.
        self._pieces: dict[int, bytes] = {}

    def _accept(self, seq: Seq, token: int, logp: np.ndarray[Any, Any] | None) -> bool:
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
    def _take(seq: Seq, *tokens: int) -> tuple[int, ...]:
        """The held tokens followed by `tokens`: what the event being sent now carries."""
        if not seq.held:
            return tokens
        ids = (*seq.held, *tokens)
        seq.held.clear()
        return ids

    def _finish(self, seq: Seq, reason: FinishReason) -> None:
        if not seq.stops.stopped:
            tail = seq.stops.feed(seq.decoder.decode(b"", final=True)) + seq.stops.flush()
            if tail:
                seq.job.emit(Event(seq.index, tail, self._take(seq)))
        seq.job.emit(Event(seq.index, token_ids=self._take(seq), finish_reason=reason,
                           prompt_tokens=len(seq.job.prompt),
                           completion_tokens=seq.generated, cached_tokens=seq.reuse,
                           stop_sequence=seq.stops.matched))
        self._release(seq)

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
