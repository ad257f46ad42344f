"""Per-sequence llama.cpp sampler chains built from engine-neutral SamplingParams."""

from __future__ import annotations

from typing import Any

import llama_cpp
import numpy as np

from lokal.backends.base import SamplingParams

# OpenAI's penalties count every generated token; llama.cpp's penalty sampler looks back a
# fixed window. This window covers any completion a small CPU model produces in practice.
PENALTY_WINDOW = 4096


def logits_row(ctx: Any, batch_index: int, n_vocab: int) -> np.ndarray[Any, Any]:
    """A writable view of one batch row's logits inside the llama.cpp context."""
    return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, batch_index),
                                 shape=(n_vocab,))


RANDOM_SEED = 0xFFFFFFFF
"""llama.cpp's LLAMA_DEFAULT_SEED: given to a sampler it means "pick a random seed"."""


def fixed_seed(seed: int) -> int:
    """`seed` as the 32-bit seed llama.cpp takes, never the value it reads as "random": a
    request's seed must give the same tokens every time (4294967295 samples as 4294967294)."""
    seed %= 2**32
    return seed - 1 if seed == RANDOM_SEED else seed


class SamplerChain:
    """Owns one `llama_sampler` chain. `sample` applies it and accepts the chosen token."""

    def __init__(self, n_vocab: int, params: SamplingParams, seed: int) -> None:
        self._n_vocab = n_vocab
        self._chain: Any = None
        # Plain greedy is an argmax over the row: numpy's takes ~6 us where llama.cpp's sampler
        # copies the 49k logits into a candidate array first (~43 us), every token. Both pick
        # the first of equal maxima.
        self._argmax = params.temperature == 0.0 and not params.logit_bias and not (
            params.frequency_penalty or params.presence_penalty
            or params.repetition_penalty != 1.0)
        if self._argmax:
            return
        chain = llama_cpp.llama_sampler_chain_init(
            llama_cpp.llama_sampler_chain_default_params()
        )
        self._chain = chain

        def add(sampler: Any) -> None:
            llama_cpp.llama_sampler_chain_add(chain, sampler)

        if params.logit_bias:
            biases = (llama_cpp.llama_logit_bias * len(params.logit_bias))()
            for i, (token, bias) in enumerate(params.logit_bias.items()):
                biases[i].token = token  # type: ignore[assignment]
                biases[i].bias = bias
            add(llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(params.logit_bias), biases))
        if params.frequency_penalty or params.presence_penalty or \
                params.repetition_penalty != 1.0:
            add(llama_cpp.llama_sampler_init_penalties(
                n_vocab, PENALTY_WINDOW, params.repetition_penalty, params.frequency_penalty,
                params.presence_penalty))
        if params.temperature == 0.0:
            add(llama_cpp.llama_sampler_init_greedy())
        else:
            # Temperature first, then min-p, top-k and nucleus, as vLLM does: one contract on
            # both engines.
            add(llama_cpp.llama_sampler_init_temp(params.temperature))
            if params.min_p > 0.0:
                add(llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
            if params.top_k > 0:
                add(llama_cpp.llama_sampler_init_top_k(params.top_k))
            if params.top_p < 1.0:
                add(llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
            add(llama_cpp.llama_sampler_init_dist(fixed_seed(seed)))

    def sample(self, ctx: Any, batch_index: int) -> int:
        if self._argmax:
            return int(np.argmax(logits_row(ctx, batch_index, self._n_vocab)))
        return int(llama_cpp.llama_sampler_sample(self._chain, ctx, batch_index))

    def close(self) -> None:
        if self._chain is not None:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None

    def __del__(self) -> None:
        self.close()
