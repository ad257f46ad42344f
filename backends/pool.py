"""ModelPool: model ids and aliases to started backends."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from backends.base import Backend, BackendStats, ModelInfo
from backends.errors import ModelNotFound, NotReady
from backends.hardware import Hardware
from backends.registry import create_backend
from backends.spec import ModelSpec

logger = logging.getLogger(__name__)


class ModelPool:
    def __init__(
        self, specs: Sequence[ModelSpec], hardware: Hardware, forced_backend: str | None = None
    ) -> None:
        names: dict[str, ModelSpec] = {}
        for spec in specs:
            for name in spec.names:
                if name in names:
                    raise ValueError(f"model name {name!r} is used twice")
                names[name] = spec
        self._specs = tuple(specs)
        self._names = names
        self._hardware = hardware
        self._forced = forced_backend
        self._pending: dict[str, Backend] = {}
        self._backends: dict[str, Backend] = {}
        self.ready = False
        self.load_seconds: dict[str, float] = {}

    def prepare(self) -> None:
        """Choose an engine for every model and check its files; fast, raises on a bad setup."""
        for spec in self._specs:
            if spec.gguf is not None and spec.backend != "vllm":
                spec.gguf_path()
            self._pending[spec.id] = create_backend(spec, self._hardware, self._forced)

    async def start(self) -> None:
        """Load every model (slow). The pool is ready once all are loaded."""
        if not self._pending:
            self.prepare()
        for model_id, backend in list(self._pending.items()):
            started = time.perf_counter()
            await backend.start()
            self.load_seconds[model_id] = time.perf_counter() - started
            self._backends[model_id] = self._pending.pop(model_id)
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        for backend in self._backends.values():
            await backend.stop()
        self._backends.clear()

    def get(self, name: str) -> Backend:
        spec = self._names.get(name)
        if spec is None:
            known = ", ".join(s.id for s in self._specs)
            raise ModelNotFound(
                f"The model `{name}` does not exist. This server serves: {known}.", param="model"
            )
        backend = self._backends.get(spec.id)
        if backend is None:
            raise NotReady(f"model {spec.id} is still loading")
        return backend

    def models(self) -> list[ModelInfo]:
        return [b.info for b in self._backends.values()]

    def stats(self) -> dict[str, BackendStats]:
        """A snapshot per loaded model whose engine reports one (`stats()` is optional)."""
        found: dict[str, BackendStats] = {}
        for model_id, backend in self._backends.items():
            stats = getattr(backend, "stats", None)
            if callable(stats):
                found[model_id] = stats()
        return found

    def engine_errors(self) -> dict[str, str]:
        """Models whose engine died, and why (see BackendStats.engine_error)."""
        return {model_id: stats.engine_error for model_id, stats in self.stats().items()
                if stats.engine_error is not None}
