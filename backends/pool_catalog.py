"""The pool's configured models: each name (id or alias) used once; per model id its entry
(engine, estimate, ttl); and the models configured since start, found by looking once more
when a request names one."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence

from lokal.backends.budget import Resident, human
from lokal.backends.errors import ModelLoadFailed, ModelNotFound
from lokal.backends.footprint import Footprint
from lokal.backends.pool_entry import HOLDS_MEMORY, Entry, Phase
from lokal.backends.spec import ModelSpec

logger = logging.getLogger(__name__)

DISCOVER_INTERVAL = 2.0

Chooser = Callable[[ModelSpec], tuple[str, str]]
"""A model's engine and why; raises OSError or ValueError when it cannot be served."""


class Catalog:
    def __init__(self, specs: Sequence[ModelSpec], choose: Chooser,
                 estimator: Callable[[ModelSpec], Footprint], budgets: Mapping[str, int], *,
                 idle_unload: float, preload_default: bool,
                 discover: Callable[[], Sequence[ModelSpec]] | None) -> None:
        """`budgets` only warns of a model larger than its device's; `discover` lists the
        models configured now."""
        names: dict[str, ModelSpec] = {}
        for spec in specs:
            for name in spec.names:
                if name in names:
                    raise ValueError(f"model name {name!r} is used twice: by "
                                     f"{_where(names[name])} and by {_where(spec)}")
                names[name] = spec
        self.specs = tuple(specs)
        self._names = names
        self._choose = choose
        self._estimator = estimator
        self._budgets = budgets
        self._idle_unload = idle_unload
        self._preload_default = preload_default
        self._discover = discover
        self.discovered_at = -math.inf
        self.entries: dict[str, Entry] = {}

    def prepare(self) -> None:
        """An entry for every configured model; raises on the first that cannot be served."""
        for spec in self.specs:
            self.entries[spec.id] = self._new_entry(spec)

    def _new_entry(self, spec: ModelSpec) -> Entry:
        engine, reason = self._choose(spec)
        preload = spec.preload if spec.preload is not None else self._preload_default
        ttl = spec.ttl if spec.ttl is not None else self._idle_unload
        if spec.pinned:
            ttl = 0.0
        entry = Entry(spec, engine, reason, ttl, preload)
        try:
            self.estimate(entry)
        except ModelLoadFailed:
            return entry
        budget = self._budgets.get(entry.device, 0)
        if entry.memory > budget:
            logger.warning("model %s needs %s, more than the whole %s budget of %s: it "
                           "cannot be loaded", spec.id, human(entry.memory), entry.device,
                           human(budget))
        return entry

    def estimate(self, entry: Entry) -> None:
        """Estimate the memory of `entry`; a file that is there but unreadable fails it
        (ModelLoadFailed), so that the others still serve."""
        try:
            entry.estimate = self._estimator(entry.spec)
        except (OSError, ValueError) as exc:
            entry.fail(f"cannot read the model: {exc}")
            raise ModelLoadFailed(entry.spec.id, entry.error or "") from exc

    def residents(self) -> list[Resident]:
        """The models holding memory, as the planner of unloads sees them."""
        # A load cannot be stopped midway, so a loading model is kept like a busy one even when
        # its requests gave up: once loaded, and idle, it may go.
        return [Resident(e.spec.id, e.memory, e.device, e.last_used, pinned=e.spec.pinned,
                         busy=bool(e.leases or e.waiting) or e.phase is Phase.LOADING,
                         leaving=e.phase in (Phase.EXPIRING, Phase.UNLOADING))
                for e in self.entries.values() if e.phase in HOLDS_MEMORY]

    def find(self, name: str) -> Entry:
        spec = self._names.get(name)
        if spec is None:
            self._discover_new()
            spec = self._names.get(name)
        if spec is None:
            known = ", ".join(s.id for s in self.specs)
            raise ModelNotFound(
                f"The model `{name}` does not exist. This server serves: {known}.", param="model"
            )
        return self.entries[spec.id]

    def _discover_new(self) -> None:
        """Adds the models configured since start (at most one look per 2 s: an unknown
        name in every request must not make each one read the models dir)."""
        now = time.monotonic()
        if self._discover is None or now - self.discovered_at < DISCOVER_INTERVAL:
            return
        self.discovered_at = now
        try:
            found = self._discover()
        except (OSError, ValueError) as exc:
            logger.warning("looking for new models failed: %s", exc)
            return
        for spec in found:
            if spec.id in self.entries or any(n in self._names for n in spec.names):
                continue
            try:
                self.entries[spec.id] = self._new_entry(spec)
            except (OSError, ValueError) as exc:  # a missing file, no engine for it
                logger.warning("new model %s cannot be served: %s", spec.id, exc)
                continue
            self.specs += (spec,)
            self._names.update(dict.fromkeys(spec.names, spec))
            logger.info("new model %s found (%s)", spec.id, spec.source or "configured")


def _where(spec: ModelSpec) -> str:
    return f"{spec.source}" if spec.source is not None else f"model {spec.id!r}"
