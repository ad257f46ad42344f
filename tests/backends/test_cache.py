"""Prefix reuse on the llama.cpp backend: how much of a cached prefix a prompt may keep."""

from __future__ import annotations

import pytest

from lokal.backends.llamacpp.cache import (
    FA_TILE_ROWS,
    RUN_COST_TOKENS,
    PromptCache,
    Saved,
    SlotTable,
    common_prefix,
    copy_min_gain,
    last_token_alone,
    stable_reuse,
)

CHUNK = 128


def fresh_chunks(n_prompt: int, chunk: int = CHUNK) -> list[range]:
    """How the scheduler feeds a fresh prompt (see cached_chunks)."""
    return cached_chunks(0, n_prompt, chunk)


def cached_chunks(reuse: int, n_prompt: int, chunk: int = CHUNK) -> list[range]:
    """How the scheduler feeds [reuse, n_prompt): chunks ending on multiples of `chunk`, the
    last token alone where the prompt's last chunk is tiled (last_token_alone)."""
    chunked = n_prompt - 1 if last_token_alone(n_prompt, chunk) else n_prompt
    out, start = [], reuse
    while start < chunked:
        end = min(chunked, (start // chunk + 1) * chunk)
        out.append(range(start, end))
        start = end
    return out if chunked == n_prompt else [*out, range(chunked, n_prompt)]


def kind(rows: int) -> str:
    """The attention path ggml-cpu takes for a sequence with `rows` query tokens."""
    return "one" if rows == 1 else "tiled" if rows >= FA_TILE_ROWS else "rows"


def kinds(chunks: list[range]) -> dict[int, str]:
    return {t: kind(len(c)) for c in chunks for t in c}


@pytest.mark.parametrize("n_prompt", [2, 5, 38, 63, 64, 65, 127, 128, 129, 150, 191, 192, 193,
                                      249, 256, 257, 267, 1500])
def test_every_recomputed_token_takes_the_path_a_fresh_evaluation_gives_it(n_prompt: int) -> None:
    fresh = kinds(fresh_chunks(n_prompt))
    for common in range(n_prompt + 3):
        reuse = stable_reuse(common, n_prompt, CHUNK)
        assert 0 <= reuse <= min(common, n_prompt - 1)
        assert reuse >= min(common, n_prompt - 1) - FA_TILE_ROWS  # never much short
        recomputed = kinds(cached_chunks(reuse, n_prompt))
        assert recomputed == {t: fresh[t] for t in recomputed}, (common, reuse)


def test_reuse_keeps_more_than_whole_chunks() -> None:
    # A 38-token chat prompt sharing 31 tokens (template and system prompt) with a cached one.
    assert stable_reuse(31, 38, CHUNK) == 31
    # Turn 2 of a conversation: 1,408 shared of 1,490; the last fresh chunk is tiled (81 rows,
    # then the last token alone).
    assert stable_reuse(1480, 1490, CHUNK) == 1489 - FA_TILE_ROWS
    # Reuse that would leave one token of a 22-row chunk alone recomputes two instead.
    assert not last_token_alone(150, CHUNK)
    assert stable_reuse(149, 150, CHUNK) == stable_reuse(150, 150, CHUNK) == 148
    # A repeated prompt whose last chunk is tiled keeps everything but its last token, which
    # is computed alone either way.
    assert last_token_alone(1490, CHUNK) and last_token_alone(192, CHUNK)
    assert stable_reuse(1490, 1490, CHUNK) == 1489
    # Reuse landing early in a full chunk is widened back so that the rest stays tiled.
    assert stable_reuse(250, 400, CHUNK) == 256 - FA_TILE_ROWS
    assert stable_reuse(130, 400, CHUNK) == 130


def test_slot_table_prefers_the_slot_with_the_longest_usable_prefix() -> None:
    table = SlotTable(3, CHUNK, copy_min_gain(8192))
    prompt = list(range(200))
    table.slots[0].tokens = list(range(50))
    table.slots[1].tokens = [*range(190), 9999]
    placement = table.place(prompt)
    assert placement.slot is table.slots[1] and placement.copy_from is None
    assert placement.reuse == stable_reuse(common_prefix(table.slots[1].tokens, prompt), 200,
                                           CHUNK) == 199 - FA_TILE_ROWS


def test_a_busy_slot_holding_the_prefix_is_copied_when_that_saves_enough() -> None:
    table = SlotTable(3, CHUNK, copy_min_gain(8192))
    prompt = list(range(50))
    table.slots[0].tokens = list(range(40))  # the shared template and system prompt
    table.claim(table.slots[0])  # busy: its request is still running
    placement = table.place(prompt)
    assert placement.copy_from is table.slots[0] and placement.reuse == 40
    assert placement.slot is not table.slots[0]
    table.slots[0].tokens = list(range(10))  # too little to pay for copying a whole stream
    assert table.place(prompt).copy_from is None
    assert copy_min_gain(8192) == 16 and copy_min_gain(65536) == 128


def test_a_short_shared_prefix_does_not_evict_a_long_conversation() -> None:
    table = SlotTable(3, CHUNK, copy_min_gain(8192))
    system = list(range(30))  # the chat template's default system prompt, shared by all
    conversation = [*system, *range(1000, 2400)]
    table.slots[0].tokens = list(conversation)
    table.release(table.slots[0])
    unrelated = [*system, *range(5000, 5900)]
    placement = table.place(unrelated)
    assert placement.slot is not table.slots[0]  # an empty slot, its prefix copied
    assert placement.copy_from is table.slots[0] and placement.reuse == 30
    # The conversation's next turn still finds all of it.
    table.slots[1].tokens, table.slots[2].tokens = list(unrelated), [*system, 7, 8]
    nxt = table.place([*conversation, *range(3000, 3050)])
    assert nxt.slot is table.slots[0] and nxt.copy_from is None
    assert nxt.reuse >= len(conversation) - FA_TILE_ROWS


def test_a_slot_next_to_the_busy_ones_is_preferred() -> None:
    # Busy slots 2 and 3 decode in one micro-batch; slot 6 would add another to every step.
    table = SlotTable(8, CHUNK, copy_min_gain(8192))
    for i in (2, 3):
        table.claim(table.slots[i])
    assert [table.new_runs(s) for s in table.slots] == [1, 0, 0, 0, 0, 1, 1, 1]
    table.slots[6].last_used = -1.0  # least recently used: the choice without the run cost
    assert table.place(list(range(40))).slot.seq_id in (1, 4)
    assert table.spare().seq_id in (1, 4)
    # A slot that closes a gap between busy runs is best of all.
    table.claim(table.slots[5])
    assert table.new_runs(table.slots[4]) == -1
    assert table.place(list(range(40))).slot is table.slots[4] is table.spare()


def test_a_long_cached_prefix_outweighs_the_run_it_adds() -> None:
    table = SlotTable(8, CHUNK, copy_min_gain(8192))
    table.claim(table.slots[0])
    conversation = list(range(1000))
    table.slots[6].tokens = list(conversation)
    nxt = table.place([*conversation, *range(5000, 5040)])
    assert nxt.slot is table.slots[6] and nxt.copy_from is None  # kept in place
    # A short one is not worth a micro-batch per step: an adjacent slot gets it copied.
    table.slots[6].tokens = list(range(40))
    short = table.place([*range(40), *range(5000, 5010)])
    assert short.slot is table.slots[1] and short.copy_from is table.slots[6]
    assert short.reuse == 40 < RUN_COST_TOKENS


def saved(tokens: list[int], size: int = 100) -> Saved:
    return Saved(tokens, data=bytes(size), size=size)


def test_ram_prompt_cache_finds_the_longest_usable_prefix() -> None:
    cache = PromptCache(1000, CHUNK)
    cache.put(saved(list(range(100))))
    cache.put(saved([*range(50), *range(500, 600)]))
    entry, reuse = cache.best([*range(100), *range(1000, 1200)])
    assert entry is not None and entry.tokens == list(range(100))
    assert reuse == stable_reuse(100, 300, CHUNK) > stable_reuse(50, 300, CHUNK)
    assert cache.best([9, 9, 9]) == (None, 0)


def test_ram_prompt_cache_evicts_least_recently_used_and_supersedes_prefixes() -> None:
    cache = PromptCache(250, CHUNK)
    a, b = saved(list(range(10))), saved(list(range(100, 110)))
    cache.put(a)
    cache.put(b)
    cache.touch(a)  # used: b is now the oldest
    cache.put(saved(list(range(200, 210))))
    assert len(cache) == 2 and cache.bytes == 200
    assert cache.best(list(range(100, 110)))[0] is None and cache.best(list(range(10)))[0] is a
    assert not cache.wants(list(range(5)))  # already held, as a prefix of an entry
    assert cache.wants(list(range(12)))
    cache.put(saved(list(range(12))))  # holds more than `a`: `a` goes
    assert len(cache) == 2 and cache.best(list(range(10)))[0] is not a
    cache.put(saved(list(range(300, 310)), size=251))  # larger than the whole cache: ignored
    assert len(cache) == 2 and not PromptCache(0, CHUNK).wants([1, 2])
