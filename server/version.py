"""lokal's version, as installed (the health route, Ollama's /api/version and the metrics)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def lokal_version() -> str:
    try:
        return version("lokal")
    except PackageNotFoundError:
        return "0+unknown"
