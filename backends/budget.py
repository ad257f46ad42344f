"""The memory budget: parsing it, and choosing which idle models to unload to make room
(a pure function, so every eviction rule is tested without engines)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
          "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "tib": 2**40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")


def parse_size(text: str, whole: int) -> int:
    """Bytes from `123456`, `6GiB`, `512 MB` or `75%` (a share of `whole`)."""
    text = text.strip()
    if text.endswith("%"):
        share = float(text[:-1])
        if not 0 < share <= 100:
            raise ValueError(f"a memory share must be in (0, 100]%, got {text!r}")
        return int(whole * share / 100)
    match = _SIZE.fullmatch(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise ValueError(f"not a memory size: {text!r} (try 6GiB, 8000000000 or 75%)")
    size = int(float(match.group(1)) * _UNITS[unit])
    if size <= 0:
        raise ValueError(f"a memory budget must be positive, got {text!r}")
    return size


def available_ram() -> int:
    """RAM available to new allocations now (MemAvailable), or all of it where /proc is absent."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def resident_bytes() -> int | None:
    """This process's resident memory (RSS), or None where /proc is absent."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


def human(size: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(size) >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


@dataclass(frozen=True, slots=True)
class Resident:
    """A model holding memory now (loading, loaded or unloading), as the planner sees it."""

    id: str
    bytes: int
    device: str
    last_used: float
    pinned: bool = False
    busy: bool = False
    """Requests hold it or wait for it: never unloaded."""
    leaving: bool = False
    """Already unloading: its memory frees soon, without any choice."""

    def why_kept(self) -> str:
        if self.leaving:
            return "unloading"
        if self.busy:
            return "in use"
        return "pinned" if self.pinned else "idle"


def choose_unloads(
    need: int, device: str, budgets: Mapping[str, int], residents: Sequence[Resident],
    max_loaded: int | None = None,
) -> list[str] | None:
    """The models to unload so that `need` more bytes on `device` (and one more model) fit:
    idle, unpinned ones, least recently used first, only those that help. [] when it fits
    now; None when it cannot fit until something in use finishes or unloads."""
    budget = budgets.get(device, 0)
    used = sum(r.bytes for r in residents if r.device == device)
    count = len(residents)
    victims: list[str] = []

    def fits() -> bool:
        return used + need <= budget and (max_loaded is None or count + 1 <= max_loaded)

    candidates = sorted((r for r in residents if not (r.pinned or r.busy or r.leaving)),
                        key=lambda r: r.last_used)
    for resident in candidates:
        if fits():
            break
        memory_short = used + need > budget and resident.device == device
        count_short = max_loaded is not None and count + 1 > max_loaded
        if memory_short or count_short:
            victims.append(resident.id)
            count -= 1
            if resident.device == device:
                used -= resident.bytes
    return victims if fits() else None
