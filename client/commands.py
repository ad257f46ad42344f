"""The client commands of `lokal`: `chat` (terminal chat, against a running server or one it
starts), `pull` (a GGUF from the Hugging Face Hub), `models` (what the models directory holds,
with the running server's status) and `rm`."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8000"


def default_models_dir() -> Path:
    """LOKAL_MODELS_DIR, else the user's data directory (where `lokal pull` puts models)."""
    given = os.environ.get("LOKAL_MODELS_DIR")
    if given:
        return Path(given).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("lokal")) / "models"


def add_commands(sub: Any) -> None:
    chat = sub.add_parser("chat", help="chat in the terminal with a model lokal serves")
    chat.add_argument("model", nargs="?", help="model id (default: the server's first)")
    _client_flags(chat)
    chat.add_argument("--serve", action="store_true",
                      help="start a lokal server for this chat (stopped when it ends)")
    chat.add_argument("--config", type=Path, action="append",
                      help="with --serve: a model YAML to serve (default: the bundled model)")
    chat.add_argument("--models-dir", type=Path, help="with --serve: a folder of model YAMLs")
    chat.add_argument("--temperature", type=float)
    chat.add_argument("--max-tokens", type=int)
    pull = sub.add_parser("pull", help="download a GGUF model from the Hugging Face Hub")
    pull.add_argument("ref", metavar="REPO[:QUANT|:FILE]",
                      help="e.g. bartowski/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M")
    _models_dir_flag(pull)
    models = sub.add_parser("models", help="list the models directory's models and status")
    _models_dir_flag(models)
    _client_flags(models)
    remove = sub.add_parser("rm", help="delete a pulled model and its files")
    remove.add_argument("model")
    _models_dir_flag(remove)


def _client_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=os.environ.get("LOKAL_URL", DEFAULT_URL),
                        help=f"a running lokal (LOKAL_URL; default {DEFAULT_URL})")
    parser.add_argument("--api-key", dest="api_key",
                        default=os.environ.get("LOKAL_API_KEY", "").split(",")[0] or None,
                        help="its API key (default: LOKAL_API_KEY's first key)")


def _models_dir_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models-dir", dest="models_dir", type=Path,
                        default=default_models_dir(),
                        help="the models directory (LOKAL_MODELS_DIR; default: the user's "
                        "data directory)")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console(highlight=False)
    from lokal.client.pull import PullError

    try:
        if args.command == "chat":
            return _chat(args, console)
        if args.command == "pull":
            return _pull(args, console)
        if args.command == "models":
            return _models(args, console)
        if args.command == "rm":
            from lokal.client.pull import remove

            for path in remove(args.model, args.models_dir):
                console.print(f"deleted {path}", markup=False)
            return 0
    except PullError as exc:
        console.print(f"lokal {args.command}: {exc}", style="bold red", markup=False)
        return 1
    raise AssertionError(args.command)


def _pull(args: argparse.Namespace, console: Any) -> int:
    from lokal.client.pull import pull

    path = pull(args.ref, args.models_dir, endpoint=os.environ.get("HF_ENDPOINT"),
                say=lambda text: console.print(text, markup=False))
    console.print(f"wrote {path}; serve it with: lokal serve --models-dir {args.models_dir}",
                  markup=False)
    return 0


def _models(args: argparse.Namespace, console: Any) -> int:
    import httpx
    import yaml
    from rich.table import Table

    from lokal.backends.budget import human
    from lokal.backends.spec import ModelSpec

    status: dict[str, str] = {}
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    try:
        served = httpx.get(f"{args.url.rstrip('/')}/v1/models", headers=headers, timeout=3)
        if served.status_code == 200:
            status = {m["id"]: m.get("status", "") for m in served.json()["data"]}
            console.print(f"status from the server at {args.url}", style="dim", markup=False)
    except httpx.TransportError:
        console.print(f"no server answers at {args.url}: status unknown", style="dim",
                      markup=False)
    table = Table("model", "size", "status", "from", box=None)
    found = sorted(args.models_dir.glob("*.yaml")) if args.models_dir.is_dir() else []
    for path in found:
        try:
            spec = ModelSpec.from_yaml(path)
        except (ValueError, yaml.YAMLError) as exc:
            table.add_row(path.stem, "", "invalid", str(exc)[:60])
            continue
        try:
            size = human(spec.gguf_path().stat().st_size) if spec.gguf else ""
        except FileNotFoundError:
            size = "file missing"
        origin = f"{spec.pulled.repo}" if spec.pulled else str(path)
        table.add_row(spec.id, size, status.get(spec.id, "not served" if status else "?"),
                      origin)
    if not found:
        console.print(f"no models in {args.models_dir}; add one with `lokal pull REPO`",
                      markup=False)
        return 0
    console.print(table)
    return 0


def _chat(args: argparse.Namespace, console: Any) -> int:
    from lokal.client.chat import LokalClient, TerminalChat

    server: subprocess.Popen[bytes] | None = None
    url = args.url
    try:
        if args.serve:
            server, url = _start_server(args, console)
            if server is None:
                return 1
        from platformdirs import user_data_dir

        history = Path(user_data_dir("lokal")) / "chat_history"
        history.parent.mkdir(parents=True, exist_ok=True)
        chat = TerminalChat(LokalClient(url, args.api_key), args.model, console,
                            history=history, temperature=args.temperature,
                            max_tokens=args.max_tokens)
        try:
            chat.run()
        except SystemExit as exc:
            return int(exc.code or 0)
        return 0
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)


def _start_server(args: argparse.Namespace,
                  console: Any) -> tuple[subprocess.Popen[bytes] | None, str]:
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # `lokal serve` in a child process, named by its module so that it is this interpreter's
    # lokal even off PATH; the client itself never imports the server.
    command = [sys.executable, "-m", "lokal.server.cli", "serve", "--port", str(port),
               "--log-level", "warning"]
    for config in args.config or []:
        command += ["--config", str(config)]
    if args.models_dir is not None:
        command += ["--models-dir", str(args.models_dir)]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    with console.status("starting lokal (loading the model)..."):
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if server.poll() is not None:
                console.print("lokal serve exited; see its messages above", style="bold red")
                return None, url
            try:
                if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                    return server, url
            except httpx.TransportError:
                pass
            time.sleep(0.3)
    server.terminate()
    console.print("lokal serve did not become ready in 10 minutes", style="bold red")
    return None, url
