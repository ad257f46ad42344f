"""`lokal serve`: command-line flags -> ServerSettings -> uvicorn."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lokal", description="OpenAI-compatible LLM server")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve a model over the OpenAI API")
    serve.add_argument("--model", type=Path, help="a GGUF file to serve (instead of --config)")
    serve.add_argument("--config", type=Path, help="a model YAML (default: the bundled SmolLM2)")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1; LOKAL_HOST)")
    serve.add_argument("--port", type=int, help="port (default 8000; LOKAL_PORT)")
    serve.add_argument("--backend", choices=["auto", "llamacpp", "vllm"],
                       help="engine (default auto; LOKAL_BACKEND)")
    serve.add_argument("--context-length", type=int, dest="context_length",
                       help="context window per request (LOKAL_CONTEXT_LENGTH)")
    serve.add_argument("--log-level", dest="log_level",
                       choices=["debug", "info", "warning", "error"])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    overrides: dict[str, Any] = {
        k: v for k, v in vars(args).items() if k != "command" and v is not None
    }
    from server.settings import ServerSettings

    try:
        settings = ServerSettings(**overrides)
    except ValidationError as exc:
        print(f"lokal: invalid setting: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    import uvicorn

    from backends.errors import BackendUnavailable
    from backends.hardware import probe
    from backends.pool import ModelPool
    from server.app import create_app

    try:
        pool = ModelPool(settings.model_specs(), probe(), settings.backend)
        pool.prepare()
    except BackendUnavailable as exc:
        print(f"lokal: {exc.message}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:
        print(f"lokal: {exc}", file=sys.stderr)
        return 2
    app = create_app(settings, pool)
    config = uvicorn.Config(app, host=settings.host, port=settings.port,
                            log_level=settings.log_level, timeout_graceful_shutdown=30)
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
