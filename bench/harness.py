"""Shared pieces of lokal's benchmarks: server processes, SSE stream timing, statistics and
the facts about the machine and the code that a result must be recorded with."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "bench"
CACHE_DIR = BENCH_DIR / ".cache"
OUT_DIR = BENCH_DIR / "out"
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
# the folders that install as lokal.<folder>
PACKAGE_FOLDERS = ("server", "client", "backends")
DONE = "[DONE]"  # the data of an OpenAI-style stream's last event


# --- statistics ------------------------------------------------------------------------------

def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty sequence; nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ratio(a: float, b: float) -> str:
    if not (a == a and b == b) or b == 0:  # nan-safe
        return "n/a"
    return f"{a / b:.2f}x"


def fmt(value: float, digits: int = 1) -> str:
    return "n/a" if value != value else f"{value:.{digits}f}"


# --- machine and code facts --------------------------------------------------------------------

def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def git(*args: str, cwd: Path = REPO) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    return done.stdout.strip() if done.returncode == 0 else ""


def lokal_code_state(lokal_dir: Path, ref: str | None) -> str:
    """The lokal code a run measured: an exported commit, or the work tree (and whether it
    differs from HEAD in server/, backends/ or configs/)."""
    if ref is not None:
        return f"commit {git('rev-parse', '--short', ref)} (clean export in {lokal_dir})"
    head = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--", "server", "backends", "configs")
    return f"work tree at {head}" + (" with uncommitted changes in server/backends/configs"
                                     if dirty else " (clean)")


def machine_facts() -> dict[str, str]:
    return {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": str(len(os.sched_getaffinity(0))),
        "load_average": load_average(),
        "python": sys.version.split()[0],
    }


def export_lokal(ref: str) -> Path:
    """lokal's server/, backends/ and configs/ at `ref`, unpacked once under bench/.cache, so a
    benchmark can measure a commit while the work tree is being edited."""
    commit = git("rev-parse", ref)
    if not commit:
        raise SystemExit(f"unknown git ref: {ref}")
    dest = CACHE_DIR / f"lokal-{commit[:12]}"
    if (dest / "server" / "cli.py").is_file():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest.with_suffix(".tar")
    folders = [f for f in (*PACKAGE_FOLDERS, "configs") if git("cat-file", "-t", f"{commit}:{f}")]
    subprocess.run(["git", "archive", "--format=tar", f"--output={archive}", commit, *folders],
                   cwd=REPO, check=True, timeout=120)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    archive.unlink()
    return dest


def import_root(lokal_dir: Path) -> Path:
    """The folder whose `lokal` package is `lokal_dir`'s code. The folders install under the one
    name `lokal` (pyproject's package-dir), which an export has no install of, so a tree of links
    stands in for it; commits before that imported `server` and `backends` from the folder."""
    if not _one_name(lokal_dir):
        return lokal_dir
    root = lokal_dir / ".cache" / "import"
    (root / "lokal").mkdir(parents=True, exist_ok=True)
    for folder in PACKAGE_FOLDERS:
        link = root / "lokal" / folder
        if (lokal_dir / folder).is_dir() and not link.exists():
            link.symlink_to(lokal_dir / folder, target_is_directory=True)
    return root


def _one_name(lokal_dir: Path) -> bool:
    return "from lokal." in (lokal_dir / "server" / "cli.py").read_text(encoding="utf-8")


# --- other people's load ----------------------------------------------------------------------

def _busy_ticks() -> int:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return user + nice + system + irq + softirq + steal


def _process_ticks(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (all threads)


class CpuMeter:
    """CPU used by processes other than this benchmark and its server while a measurement runs,
    in cores (0.0 = quiet machine): the noise figure of a result on a shared machine."""

    def __init__(self, pids: Sequence[int] = ()) -> None:
        self._pids = list(pids)
        self._hz = os.sysconf("SC_CLK_TCK")
        self._start = self._sample()

    def _sample(self) -> tuple[float, int, int, float]:
        own = os.times()
        ours = sum(_process_ticks(pid) for pid in self._pids)
        return time.monotonic(), _busy_ticks(), ours, own.user + own.system

    def foreign_cores(self) -> float:
        t0, busy0, ours0, own0 = self._start
        t1, busy1, ours1, own1 = self._sample()
        elapsed = t1 - t0
        if elapsed <= 0:
            return float("nan")
        foreign = (busy1 - busy0 - (ours1 - ours0)) / self._hz - (own1 - own0)
        return max(foreign, 0.0) / elapsed


def wait_until_quiet(max_cores: float, max_wait_s: float, window_s: float = 3.0) -> float:
    """Wait (bounded) until other processes use less than `max_cores`; returns the last figure."""
    deadline = time.monotonic() + max_wait_s
    while True:
        meter = CpuMeter()
        time.sleep(window_s)
        load = meter.foreign_cores()
        if load < max_cores or time.monotonic() >= deadline:
            return load


def add_quiet_options(parser: argparse.ArgumentParser, when: str, wait_s: float) -> None:
    """--quiet-cores and --quiet-wait, wait_until_quiet's bounds; `when` says when it waits."""
    parser.add_argument("--quiet-cores", type=float, default=0.3,
                        help=f"{when} wait until other processes use fewer cores than this "
                             "(default 0.3) ...")
    parser.add_argument("--quiet-wait", type=float, default=wait_s,
                        help=f"... but at most this many seconds (default {wait_s:g}; "
                             "0 = never wait)")


# --- server processes ------------------------------------------------------------------------

def stop_on_sigterm() -> None:
    """Turn SIGTERM (timeout, kill) into SystemExit so `finally` blocks stop the servers."""
    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    """One server under test, started in its own process group and always stopped."""

    name: str
    command: list[str]
    base_url: str
    ready_path: str  # answers 200 once the model is loaded
    log_path: Path
    cwd: Path = REPO
    env: Mapping[str, str] = field(default_factory=dict)
    startup_timeout_s: float = 180.0
    started_in_s: float = float("nan")
    _proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        log.write(f"\n$ {' '.join(self.command)}\n".encode())
        log.flush()
        begun = time.perf_counter()
        self._proc = subprocess.Popen(self.command, cwd=self.cwd, env={**os.environ, **self.env},
                                      stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = begun + self.startup_timeout_s
        while time.perf_counter() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self._proc.returncode} while "
                                   f"starting; see {self.log_path}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.base_url + self.ready_path, timeout=2.0).status_code == 200:
                    self.started_in_s = time.perf_counter() - begun
                    return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.name} not ready after {self.startup_timeout_s:.0f}s; "
                           f"see {self.log_path}")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    @contextlib.contextmanager
    def running(self) -> Iterator[ServerProcess]:
        self.start()
        try:
            yield self
        finally:
            self.stop()


def derived_config(config: Path, threads: int, parallel: int | None, dest: Path) -> Path:
    """A copy of a model YAML with explicit threads (and slots) and an absolute GGUF path."""
    from lokal.backends.spec import ModelSpec

    spec = ModelSpec.from_yaml(config)
    data: dict[str, Any] = yaml.safe_load(config.read_text(encoding="utf-8"))
    data["gguf"] = {"path": str(spec.gguf_path())}
    data.setdefault("llamacpp", {})["n_threads"] = threads
    if parallel is not None:
        data["llamacpp"]["parallel"] = parallel
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return dest


def lokal_server(lokal_dir: Path, config: Path, port: int, log: Path) -> ServerProcess:
    """lokal from `lokal_dir` (the work tree or an exported commit), run by .venv's python."""
    cli = "lokal.server.cli" if _one_name(lokal_dir) else "server.cli"
    return ServerProcess(
        name="lokal",
        command=[str(VENV_PYTHON), "-m", cli, "serve", "--config", str(config),
                 "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        base_url=f"http://127.0.0.1:{port}", ready_path="/health/ready", log_path=log,
        cwd=lokal_dir, env={"PYTHONPATH": str(import_root(lokal_dir))},
    )


# --- one streaming chat request --------------------------------------------------------------

@dataclass
class StreamResult:
    """Timings of one streaming chat completion, seen from the client."""

    started: float = 0.0                 # perf_counter at request send
    first_token: float = float("nan")    # perf_counter at the first chunk with content
    finished: float = float("nan")
    content_times: list[float] = field(default_factory=list)
    text: str = ""
    completion_tokens: int | None = None  # from usage, when the server sends it
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    error: str | None = None

    @property
    def ttft(self) -> float:
        return self.first_token - self.started

    @property
    def tokens(self) -> int:
        return self.completion_tokens if self.completion_tokens is not None \
            else len(self.content_times)

    @property
    def gaps(self) -> list[float]:
        times = self.content_times
        return [b - a for a, b in itertools.pairwise(times)]


def _cached_tokens(event: Mapping[str, Any]) -> int | None:
    usage = event.get("usage") or {}
    details = usage.get("prompt_tokens_details") or {}
    if isinstance(details.get("cached_tokens"), int):
        return int(details["cached_tokens"])
    timings = event.get("timings") or {}  # llama-server
    return int(timings["cache_n"]) if isinstance(timings.get("cache_n"), int) else None


async def sse_events(response: httpx.Response) -> AsyncIterator[Any]:
    """The data of an OpenAI-style SSE stream, event by event: the parsed JSON, or DONE for
    the closing "data: [DONE]"."""
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        yield DONE if data == DONE else json.loads(data)


async def stream_chat(client: httpx.AsyncClient, base_url: str,
                      payload: Mapping[str, Any]) -> StreamResult:
    """POST a streaming chat completion and time every chunk that carries content."""
    result = StreamResult(started=time.perf_counter())
    try:
        async with client.stream("POST", f"{base_url}/v1/chat/completions",
                                 json={**payload, "stream": True}) as response:
            if response.status_code != 200:
                body = (await response.aread()).decode(errors="replace")
                result.error = f"HTTP {response.status_code}: {body[:200]}"
                return result
            async for event in sse_events(response):
                if event == DONE:
                    break
                now = time.perf_counter()
                if "error" in event:
                    result.error = json.dumps(event["error"])[:200]
                    break
                for choice in event.get("choices") or []:
                    delta = choice.get("delta") or {}
                    piece = delta.get("content") or delta.get("reasoning_content") or ""
                    if piece:
                        if not result.content_times:
                            result.first_token = now
                        result.content_times.append(now)
                        result.text += piece
                usage = event.get("usage")
                if usage:
                    result.completion_tokens = usage.get("completion_tokens")
                    result.prompt_tokens = usage.get("prompt_tokens")
                cached = _cached_tokens(event)
                if cached is not None:
                    result.cached_tokens = cached
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    result.finished = time.perf_counter()
    if result.error is None and not result.content_times:
        result.error = "stream ended without content"
    return result


def async_client(concurrency: int, timeout_s: float) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=10.0), limits=limits)

