"""`lokal serve|chat|pull|models|rm`: command-line flags -> ServerSettings -> uvicorn, or the
client commands, which live in lokal.client (imported only when one is run)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lokal", description="OpenAI-compatible LLM server")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve a model over the OpenAI API")
    serve.add_argument("--model", type=Path, action="append",
                       help="a GGUF file to serve; may be given several times (LOKAL_MODEL)")
    serve.add_argument("--config", type=Path, action="append",
                       help="a model YAML; may be given several times (default: the bundled "
                       "SmolLM2; LOKAL_CONFIG)")
    serve.add_argument("--models-dir", dest="models_dir", type=Path,
                       help="a folder of model YAMLs, loaded on demand (LOKAL_MODELS_DIR)")
    serve.add_argument("--memory-budget", dest="memory_budget",
                       help="memory loaded models may hold: bytes, 6GiB, or 75%% of the RAM "
                       "available at start (default 75%%; LOKAL_MEMORY_BUDGET)")
    serve.add_argument("--max-loaded", dest="max_loaded", type=int,
                       help="models loaded at once (default: no limit; LOKAL_MAX_LOADED)")
    serve.add_argument("--load-timeout", dest="load_timeout", type=float,
                       help="seconds a request waits for its model to load or for room "
                       "(default 300; LOKAL_LOAD_TIMEOUT)")
    serve.add_argument("--idle-unload", dest="idle_unload", type=float,
                       help="seconds idle before a model is unloaded, 0 = never (default 0; "
                       "a model's ttl overrides it; LOKAL_IDLE_UNLOAD)")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1; LOKAL_HOST)")
    serve.add_argument("--port", type=int, help="port (default 8000; LOKAL_PORT)")
    serve.add_argument("--backend", choices=["auto", "llamacpp", "vllm"],
                       help="engine (default auto; LOKAL_BACKEND)")
    serve.add_argument("--context-length", type=int, dest="context_length",
                       help="context window per request (LOKAL_CONTEXT_LENGTH)")
    serve.add_argument("--log-level", dest="log_level",
                       choices=["debug", "info", "warning", "error"])
    serve.add_argument("--log-format", dest="log_format", choices=["text", "json"],
                       help="log line format (default text; LOKAL_LOG_FORMAT)")
    serve.add_argument("--log-prompts", dest="log_prompts", action="store_true", default=None,
                       help="log prompt text (default off; LOKAL_LOG_PROMPTS)")
    # Keys themselves only through LOKAL_API_KEY or a file: a flag would show them in `ps`.
    serve.add_argument("--api-key-file", dest="api_key_file", type=Path,
                       help="file with accepted API keys, one a line (LOKAL_API_KEY_FILE)")
    serve.add_argument("--metrics-open", dest="metrics_open", action="store_true",
                       default=None, help="serve /metrics without a key (LOKAL_METRICS_OPEN)")
    serve.add_argument("--no-ui", dest="ui", action="store_false", default=None,
                       help="no chat page at / (LOKAL_UI=false)")
    serve.add_argument("--cors-origins", dest="cors_origins",
                       help="comma-separated origins allowed by CORS (LOKAL_CORS_ORIGINS)")
    serve.add_argument("--max-body-bytes", dest="max_body_bytes", type=int,
                       help="largest request body (default 8 MiB; LOKAL_MAX_BODY_BYTES)")
    serve.add_argument("--request-timeout", dest="request_timeout", type=float,
                       help="seconds a request may take, 0 = none (default 600; "
                       "LOKAL_REQUEST_TIMEOUT)")
    serve.add_argument("--shutdown-grace", dest="shutdown_grace", type=int,
                       help="seconds running requests get after SIGTERM (default 30; "
                       "LOKAL_SHUTDOWN_GRACE)")
    serve.add_argument("--data-dir", dest="data_dir", type=Path,
                       help="where stored Responses live (default: the user's data "
                       "directory; LOKAL_DATA_DIR)")
    from lokal.client import commands

    commands.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command != "serve":
        from lokal.client import commands

        return commands.run(args)
    overrides: dict[str, Any] = {
        k: v for k, v in vars(args).items() if k != "command" and v is not None
    }
    from lokal.server.settings import ServerSettings

    try:
        settings = ServerSettings(**overrides)
    except ValidationError as exc:
        print(f"lokal: invalid setting: {exc}", file=sys.stderr)
        return 2
    from lokal.server import logs, streaming

    logs.configure(settings.log_level, settings.log_format)
    import uvicorn

    from lokal.backends.errors import BackendUnavailable
    from lokal.backends.hardware import probe
    from lokal.server.app import create_app, make_pool

    try:
        pool = make_pool(settings, probe())
        pool.prepare()
        app = create_app(settings, pool)
    except BackendUnavailable as exc:
        print(f"lokal: {exc.message}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:
        print(f"lokal: {exc}", file=sys.stderr)
        return 2
    # On SIGTERM uvicorn stops accepting, waits up to shutdown_grace for running requests
    # (streams included, see streaming.finish_streams_on_shutdown), then runs the lifespan's
    # shutdown, which stops the engine.
    streaming.finish_streams_on_shutdown()
    config = uvicorn.Config(app, host=settings.host, port=settings.port,
                            log_level=settings.log_level, log_config=None,
                            timeout_graceful_shutdown=settings.shutdown_grace)
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
