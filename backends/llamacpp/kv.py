"""The llama.cpp scheduler's KV side: which slot a prompt lands in (prefix reuse, stream copies,
the RAM prompt cache), n > 1 choices sharing the prompt's cells, and freeing a sequence's slot."""

from __future__ import annotations

import ctypes
from typing import Any

import llama_cpp

from lokal.backends.llamacpp.cache import Placement, PromptCache, Saved, Slot, SlotTable
from lokal.backends.llamacpp.jobs import Seq

# A slot about to lose at least this many cached tokens has them saved to the RAM prompt cache
# first (saving 300 tokens of SmolLM2's KV takes ~5 ms; recomputing them ~1.4 s here).
SAVE_MIN_TOKENS = 64
# Restore from RAM when that reuses at least this many more tokens than the slots offer.
RESTORE_MIN_GAIN = 8


class SlotKeeper:
    """The first layer of the Scheduler (kv.py < output.py < step.py < scheduler.py): one
    object, split by concern into a chain of classes so that the decode loop's calls stay
    plain method calls on that object. Owns the running sequences and their KV slots."""

    def __init__(self, ctx: Any, *, n_slots: int, prompt_budget: int, copy_min_gain: int,
                 prompt_cache_bytes: int) -> None:
        self._ctx = ctx
        self._mem = llama_cpp.llama_get_memory(ctx)
        self._budget = prompt_budget
        self._slots = SlotTable(n_slots, prompt_budget, copy_min_gain)
        self._ram = PromptCache(prompt_cache_bytes, prompt_budget)
        # Slots whose stream another slot copies at the next decode: llama.cpp copies the
        # tensor data then, so nothing may write into them before (a RAM restore would).
        self._copy_sources: set[int] = set()
        self._active: list[Seq] = []
        self.cached_tokens_total = 0
        self.ram_hit_tokens_total = 0

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

    def _place(self, prompt: list[int]) -> Placement:
        """Where `prompt` runs: the slot whose cells share the longest prefix with it, or a
        spare slot restored from the RAM prompt cache when that reuses enough more."""
        placement = self._slots.place(prompt)
        saved, from_ram = self._ram.best(prompt)
        if saved is not None and from_ram >= placement.reuse + RESTORE_MIN_GAIN:
            spare = self._slots.spare()
            if spare.seq_id not in self._copy_sources:
                self._ram.touch(saved)
                placement = Placement(spare, from_ram, None, restore=saved)
                self.ram_hit_tokens_total += from_ram
        return placement

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

    def _group(self, leader: Seq) -> list[Seq]:
        return [s for s in self._active if s.job is leader.job]

    def _fork(self, leader: Seq) -> None:
        """n > 1: the other choices share the prompt's KV cells instead of recomputing them."""
        for seq in self._group(leader):
            if seq is leader:
                continue
            llama_cpp.llama_memory_seq_cp(self._mem, leader.slot.seq_id, seq.slot.seq_id,
                                          -1, -1)
            seq.slot.tokens = list(leader.slot.tokens)
            seq.n_past = leader.n_past

    def _release(self, seq: Seq) -> None:
        seq.sampler.close()
        self._active.remove(seq)
        self._slots.release(seq.slot)
        if seq.prefilling and not seq.leader:
            # A sibling that never got the prompt's cells holds nothing reusable.
            seq.slot.tokens.clear()
            llama_cpp.llama_memory_seq_rm(self._mem, seq.slot.seq_id, 0, -1)
