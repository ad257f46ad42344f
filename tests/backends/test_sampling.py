"""The llama.cpp sampler chain built from SamplingParams, on a real context of a tiny GGUF whose
logits row each test writes: greedy, logit bias, penalties, temperature, min-p, top-k, top-p."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
import pytest

from lokal.backends.base import SamplingParams
from lokal.backends.llamacpp.sampling import SamplerChain, fixed_seed, logits_row
from tests.tiny_gguf import BOS, write_tiny_gguf

FLOOR = -1000.0  # a logit no sampler ever picks


class Row:
    """One decoded batch row whose logits a test sets before sampling it."""

    def __init__(self, ctx: Any, n_vocab: int) -> None:
        self.ctx = ctx
        self.n_vocab = n_vocab

    def write(self, logits: Mapping[int, float], floor: float = FLOOR) -> None:
        row = logits_row(self.ctx, 0, self.n_vocab)
        row[:] = floor
        for token, logit in logits.items():
            row[token] = logit

    def draws(self, params: SamplingParams, count: int, seed: int = 0) -> list[int]:
        """`count` tokens from one chain: each sample is accepted, as the scheduler does."""
        chain = SamplerChain(self.n_vocab, params, seed)
        try:
            return [chain.sample(self.ctx, 0) for _ in range(count)]
        finally:
            chain.close()

    def firsts(self, params: SamplingParams, seeds: int) -> set[int]:
        """The first token of fresh chains seeded 0..seeds-1."""
        return {self.draws(params, 1, seed)[0] for seed in range(seeds)}


@pytest.fixture(scope="module")
def row(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Row]:
    from llama_cpp._internals import LlamaContext, LlamaModel
    from llama_cpp._logger import set_verbose

    set_verbose(False)
    path = write_tiny_gguf(Path(tmp_path_factory.mktemp("sampling")) / "tiny.gguf")
    model: Any = LlamaModel(path_model=str(path), params=llama_cpp.llama_model_default_params(),
                            verbose=False)
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = 64
    params.n_batch = params.n_ubatch = 8
    params.n_threads = params.n_threads_batch = 1
    params.no_perf = True
    owner: Any = LlamaContext(model=model, params=params, verbose=False)
    batch = llama_cpp.llama_batch_init(1, 0, 1)
    batch.token[0], batch.pos[0], batch.n_seq_id[0] = BOS, 0, 1
    batch.seq_id[0][0] = 0
    batch.logits[0] = True
    batch.n_tokens = 1
    assert llama_cpp.llama_decode(owner.ctx, batch) == 0
    yield Row(owner.ctx, model.n_vocab())
    llama_cpp.llama_batch_free(batch)
    owner.close()
    model.close()


def test_logits_row_is_a_writable_view_of_the_context(row: Row) -> None:
    view = logits_row(row.ctx, 0, row.n_vocab)
    assert view.shape == (row.n_vocab,)
    view[:] = np.arange(row.n_vocab, dtype=np.float32)
    native = llama_cpp.llama_get_logits_ith(row.ctx, 0)
    assert [native[i] for i in (0, 5, row.n_vocab - 1)] == [0.0, 5.0, row.n_vocab - 1]
    assert logits_row(row.ctx, 0, row.n_vocab)[7] == 7.0


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0.0),
    SamplingParams(temperature=0.0, logit_bias={3: 0.0}),  # the llama.cpp greedy sampler
], ids=["argmax", "chain"])
def test_greedy_takes_the_first_of_the_highest_logits(row: Row, params: SamplingParams) -> None:
    row.write({7: 2.0, 8: 1.9})
    assert row.draws(params, 3) == [7, 7, 7]
    row.write({200: 1.0, 20: 1.0, 300: 1.0})
    assert row.draws(params, 1) == [20]


def test_logit_bias_is_added_to_the_logits(row: Row) -> None:
    row.write({7: 2.0, 8: 1.0, 9: 0.5})
    assert row.draws(SamplingParams(temperature=0.0, logit_bias={8: 1.5}), 1) == [8]
    assert row.draws(SamplingParams(temperature=0.0, logit_bias={8: 0.5}), 1) == [7]
    assert row.draws(SamplingParams(temperature=0.0, logit_bias={7: -5.0, 9: 1.0}), 1) == [9]


def test_logit_bias_applies_when_sampling_too(row: Row) -> None:
    row.write({7: 0.0, 8: 0.0, 9: 0.0})
    assert row.firsts(SamplingParams(temperature=1.0), 40) == {7, 8, 9}
    banned = SamplingParams(temperature=1.0, logit_bias={8: -100.0})
    assert row.firsts(banned, 40) == {7, 9}


def test_frequency_penalty_grows_with_each_repeat(row: Row) -> None:
    row.write({7: 2.0, 8: 1.0, 9: 0.9})
    # 7 loses 0.6 per use: 2.0, 1.4, then 0.8 loses to 8; 8 at 0.4 then loses to 9.
    assert row.draws(SamplingParams(temperature=0.0, frequency_penalty=0.6), 4) == [7, 7, 8, 9]


def test_presence_penalty_counts_a_token_once(row: Row) -> None:
    row.write({7: 2.0, 8: 1.0, 9: 0.9})
    assert row.draws(SamplingParams(temperature=0.0, presence_penalty=0.6), 4) == [7, 7, 7, 7]
    assert row.draws(SamplingParams(temperature=0.0, presence_penalty=1.5), 3) == [7, 8, 9]


def test_repetition_penalty_divides_a_used_tokens_logit(row: Row) -> None:
    row.write({7: 2.0, 8: 1.9})
    # 7 drops to 2.0/1.5 after its use, 8 to 1.9/1.5 after its: then 7 leads again, for good.
    assert row.draws(SamplingParams(temperature=0.0, repetition_penalty=1.5), 4) == [7, 8, 7, 7]
    assert row.draws(SamplingParams(temperature=0.0, repetition_penalty=1.0), 4) == [7, 7, 7, 7]


def test_the_same_seed_draws_the_same_tokens(row: Row) -> None:
    row.write({}, floor=0.0)  # uniform over the whole vocabulary
    params = SamplingParams(temperature=1.0)
    first = row.draws(params, 16, seed=1234)
    assert row.draws(params, 16, seed=1234) == first
    assert len(set(first)) > 4
    assert row.draws(params, 16, seed=1235) != first


def test_temperature_flattens_the_distribution(row: Row) -> None:
    row.write({7: 0.0, 8: -2.0})  # p(8) is 0.12 at temperature 1, 0.40 at temperature 5
    cold = Counter(row.draws(SamplingParams(temperature=1.0), 400, seed=7))
    hot = Counter(row.draws(SamplingParams(temperature=5.0), 400, seed=7))
    assert set(cold) == set(hot) == {7, 8}
    assert 0.06 < cold[8] / 400 < 0.2
    assert 0.3 < hot[8] / 400 < 0.5


def test_min_p_drops_tokens_far_below_the_best(row: Row) -> None:
    row.write({7: 10.0, 8: 9.5})  # p(8) / p(7) = 0.61
    assert row.firsts(SamplingParams(temperature=1.0), 40) == {7, 8}
    assert row.firsts(SamplingParams(temperature=1.0, min_p=0.5), 40) == {7, 8}
    assert row.firsts(SamplingParams(temperature=1.0, min_p=0.9), 40) == {7}


def test_min_p_applies_after_temperature(row: Row) -> None:
    row.write({7: 10.0, 8: 9.5})
    # At temperature 10 the ratio is 0.95: min-p 0.9 keeps 8. Before temperature it would not.
    assert row.firsts(SamplingParams(temperature=10.0, min_p=0.9), 40) == {7, 8}


def test_top_k_keeps_the_k_best(row: Row) -> None:
    row.write({7: 1.0, 8: 0.9, 9: 0.8})
    assert row.firsts(SamplingParams(temperature=1.0), 60) == {7, 8, 9}
    assert row.firsts(SamplingParams(temperature=1.0, top_k=2), 60) == {7, 8}
    assert row.firsts(SamplingParams(temperature=1.0, top_k=1), 60) == {7}


def test_top_p_keeps_the_nucleus(row: Row) -> None:
    row.write({7: 0.0, 8: float(np.log(0.3 / 0.5)), 9: float(np.log(0.2 / 0.5))})  # 0.5/0.3/0.2
    assert row.firsts(SamplingParams(temperature=1.0, top_p=0.45), 60) == {7}
    assert row.firsts(SamplingParams(temperature=1.0, top_p=0.7), 60) == {7, 8}
    assert row.firsts(SamplingParams(temperature=1.0, top_p=0.9), 60) == {7, 8, 9}


def test_close_frees_the_chain_once(row: Row) -> None:
    row.write({7: 1.0})
    chain = SamplerChain(row.n_vocab, SamplingParams(temperature=0.5, top_k=3), 0)
    assert chain.sample(row.ctx, 0) == 7
    chain.close()
    chain.close()  # a second free of the native chain would crash the process


def test_the_seed_llama_cpp_reads_as_random_draws_the_same_tokens_too(row: Row) -> None:
    """llama.cpp takes 0xFFFFFFFF as "pick a random seed"; a request's seed is always fixed
    (the scheduler gives choice i the seed + i, so seed 4294967294 with n=2 reached it)."""
    row.write({}, floor=0.0)
    params = SamplingParams(temperature=1.0)
    first = row.draws(params, 16, seed=0xFFFFFFFF)
    assert row.draws(params, 16, seed=0xFFFFFFFF) == first
    assert row.draws(params, 16, seed=0xFFFFFFFE) == first  # the seed it stands in for
    assert fixed_seed(-1) == fixed_seed(0xFFFFFFFF) == 0xFFFFFFFE
    assert fixed_seed(2**32 + 5) == 5 and fixed_seed(0) == 0
