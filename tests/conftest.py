"""Fixtures: the real `lokal serve` on a free port, driven over real HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

REPO = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"

# The engines the shared end-to-end tests run against (`--backend`, or LOKAL_TEST_BACKENDS).
# The main venv runs llamacpp; `make test-vllm` runs vllm in .venv-vllm, where llama.cpp is absent.
BACKENDS = ("llamacpp", "vllm")
VLLM_CONFIG = REPO / "configs" / "smollm2-135m-instruct-vllm-cpu.yaml"
SERVE_ARGS: dict[str, tuple[str, ...]] = {
    "llamacpp": (),
    "vllm": ("--backend", "vllm", "--config", str(VLLM_CONFIG)),
}
VLLM_ENV = {"VLLM_TARGET_DEVICE": "cpu", "VLLM_HOST_IP": "127.0.0.1", "HF_HUB_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1"}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--backend", default=os.environ.get("LOKAL_TEST_BACKENDS", "llamacpp"),
                     help="comma-separated engines for the e2e tests: llamacpp, vllm")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "backends(*names): only these engines can pass this test")


def selected_backends(config: pytest.Config) -> list[str]:
    names = [n.strip() for n in str(config.getoption("--backend")).split(",") if n.strip()]
    unknown = set(names) - set(BACKENDS)
    if unknown or not names:
        raise pytest.UsageError(f"--backend takes {', '.join(BACKENDS)}; got {names}")
    return names


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend_name" in metafunc.fixturenames:
        metafunc.parametrize("backend_name", selected_backends(metafunc.config), indirect=True,
                             scope="session")


def _own_fixtures(item: pytest.Item) -> bool:
    """Whether the test uses a fixture of its own module (such as a server of its own, started
    with llama.cpp's defaults) rather than only this file's shared ones."""
    info = getattr(item, "_fixtureinfo", None)
    for defs in (info.name2fixturedefs.values() if info is not None else ()):
        module = getattr(defs[-1].func, "__module__", "")
        if module.startswith("tests.") and module != __name__:
            return True
    return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep each test only where it belongs: a test that runs against the shared server runs once
    per selected engine; one that needs no server, or brings its own (llama.cpp) server, runs in
    the main venv only (llamacpp selected), unless `@pytest.mark.backends(...)` names its engines;
    that marker also narrows shared-server tests."""
    wanted = selected_backends(config)
    keep: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        engine = callspec.params.get("backend_name") if callspec is not None else None
        marker = item.get_closest_marker("backends")
        allowed = set(marker.args) if marker is not None else set(BACKENDS)
        if engine is None or (_own_fixtures(item) and marker is None):
            ok = "llamacpp" in wanted and "llamacpp" in allowed and engine in (None, "llamacpp")
        else:
            ok = engine in allowed
        (keep if ok else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    base_url: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def v1(self) -> str:
        return f"{self.base_url}/v1"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(tmp: Path, *args: str, env: dict[str, str] | None = None,
                 ready_timeout: float = 180.0) -> Server:
    port = free_port()
    log = tmp / f"lokal-{port}.log"
    cmd = [sys.executable, "-m", "lokal.server.cli", "serve", "--port", str(port), *args]
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=log.open("wb"), stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    server = Server(f"http://127.0.0.1:{port}", proc, log)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"lokal exited with {proc.returncode}:\n{server.log_text()}")
        try:
            if httpx.get(f"{server.base_url}/health/ready", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    stop_server(server)
    raise RuntimeError(f"lokal did not become ready:\n{server.log_text()}")


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="session")
def backend_name(request: pytest.FixtureRequest) -> str:
    """The engine behind the shared `server` (parametrised by pytest_generate_tests)."""
    return str(request.param)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, backend_name: str) -> Iterator[Server]:
    env = {k: os.environ.get(k, v) for k, v in VLLM_ENV.items()} if backend_name == "vllm" \
        else {}
    tmp = tmp_path_factory.mktemp(f"server-{backend_name}")
    env["LOKAL_DATA_DIR"] = str(tmp / "data")  # stored Responses never reach the user's home
    srv = start_server(tmp, *SERVE_ARGS[backend_name], env=env, ready_timeout=600.0)
    yield srv
    stop_server(srv)


# How long the shared clients wait for an answer. It bounds a hang, not speed: two shared CPUs
# with a second suite beside this one made 200 greedy tokens take 83 s (about 10x a quiet run).
CLIENT_TIMEOUT = 300


@pytest.fixture(scope="session")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0,
                         timeout=CLIENT_TIMEOUT)


@pytest.fixture()
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=CLIENT_TIMEOUT) as c:
        yield c


class HfVocab:
    """The HF tokenizer vLLM uses, with llama_cpp.Llama's `tokenize` signature."""

    def __init__(self, path: Path) -> None:
        from transformers import AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(str(path))

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = True) -> list[int]:
        ids: list[int] = self._tokenizer.encode(text.decode("utf-8"), add_special_tokens=add_bos)
        return ids


@pytest.fixture(scope="session")
def vocab(backend_name: str) -> Any:
    """The served model's tokenizer alone, to build token-id prompts honestly."""
    from lokal.backends.spec import DEFAULT_CONFIG, ModelSpec

    if backend_name == "vllm":
        from lokal.backends.vllm.engine import resolve_model

        spec = ModelSpec.from_yaml(VLLM_CONFIG)
        assert spec.vllm is not None
        return HfVocab(Path(resolve_model(spec.vllm.model, spec.base_dir)))
    import llama_cpp

    path = ModelSpec.from_yaml(DEFAULT_CONFIG).gguf_path()
    return llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
