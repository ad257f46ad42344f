"""The servers lokal is measured against, made once and cached under bench/.cache: llama.cpp's
`llama-server` built from the llama.cpp vendored in the llama-cpp-python sdist, and
llama-cpp-python's own server in a venv of its own."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import time
from importlib import metadata
from pathlib import Path

from harness import CACHE_DIR, VENV_PYTHON


def llama_cpp_python_version() -> str:
    """The llama-cpp-python that lokal runs on; the anchors use exactly this version."""
    code = "from importlib import metadata; print(metadata.version('llama_cpp_python'))"
    done = subprocess.run([str(VENV_PYTHON), "-c", code], capture_output=True, text=True,
                          timeout=60)
    if done.returncode == 0 and done.stdout.strip():
        return done.stdout.strip()
    return metadata.version("llama_cpp_python")


def _run_logged(cmd: list[str], log: Path, cwd: Path | None = None,
                timeout_s: float = 3600) -> None:
    print(f"  $ {' '.join(cmd)}  (log: {log})", flush=True)
    with log.open("ab") as out:
        done = subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                              timeout=timeout_s)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}; see {log}")


def llama_cpp_source(version: str) -> Path:
    """vendor/llama.cpp of the llama-cpp-python sdist, downloaded and unpacked once."""
    root = CACHE_DIR / f"llama_cpp_python-{version}"
    vendored = root / "vendor" / "llama.cpp"
    if (vendored / "CMakeLists.txt").is_file():
        return vendored
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    sdist = CACHE_DIR / f"llama_cpp_python-{version}.tar.gz"
    if not sdist.is_file():
        _run_logged([str(VENV_PYTHON), "-m", "pip", "download", "--no-deps", "--no-binary",
                     ":all:", f"llama-cpp-python=={version}", "-d", str(CACHE_DIR)],
                    CACHE_DIR / "download.log", timeout_s=900)
    with tarfile.open(sdist) as tar:
        tar.extractall(CACHE_DIR, filter="data")
    if not (vendored / "CMakeLists.txt").is_file():
        raise SystemExit(f"{sdist} has no vendor/llama.cpp")
    return vendored


def llama_server_binary(version: str, jobs: int) -> Path:
    """bench/.cache/build-<version>/bin/llama-server, configured and built the first time."""
    return llama_cpp_tool(version, jobs, "llama-server")


def llama_cpp_tool(version: str, jobs: int, target: str) -> Path:
    """bench/.cache/build-<version>/bin/<target> (llama-server, llama-batched-bench, ...) of
    the vendored llama.cpp, configured and built the first time."""
    build = CACHE_DIR / f"build-{version}"
    binary = build / "bin" / target
    if binary.is_file():
        return binary
    source = llama_cpp_source(version)
    log = CACHE_DIR / "build.log"
    print(f"building {target} from {source} (once; ~10 min on 2 cores)", flush=True)
    started = time.perf_counter()
    # No network at build time: no curl, no OpenSSL, no prebuilt web UI download.
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    _run_logged(["cmake", "-S", str(source), "-B", str(build), *generator,
                 "-DCMAKE_BUILD_TYPE=Release",
                 "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",
                 "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
                 "-DBUILD_SHARED_LIBS=OFF"], log, timeout_s=600)
    _run_logged(["cmake", "--build", str(build), "--target", target, f"-j{jobs}"], log,
                timeout_s=5400)
    print(f"built {binary} in {time.perf_counter() - started:.0f}s", flush=True)
    return binary


def llama_server_version(binary: Path) -> str:
    done = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=60)
    found = re.search(r"^version: (.+)$", done.stdout + done.stderr, re.MULTILINE)
    return found.group(1).strip() if found else "unknown"


def llama_cpp_commit(version: str) -> str:
    """The llama.cpp commit vendored in the sdist (its git metadata travels with it)."""
    vendored = CACHE_DIR / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
    done = subprocess.run(["git", "-C", str(vendored), "rev-parse", "HEAD"],
                          capture_output=True, text=True, timeout=30)
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def llama_cpp_python_server(version: str) -> Path:
    """The python of bench/.cache/venv-llama-cpp-python, which has llama-cpp-python[server].

    A venv of its own, not lokal's .venv: the server extras (starlette-context, and whatever
    versions pip picks for llama-cpp-python's pins) must never change the environment lokal
    and its tests run in. pip's wheel cache makes llama-cpp-python a copy of the wheel .venv was
    built with (same libllama), so this takes seconds after `make serve` or `make test`.
    """
    venv = CACHE_DIR / "venv-llama-cpp-python"
    python = venv / "bin" / "python"
    check = [str(python), "-c", "import llama_cpp.server.app, starlette_context"]
    if python.is_file() and subprocess.run(check, capture_output=True, timeout=120).returncode == 0:
        return python
    print(f"making {venv} with llama-cpp-python[server]=={version}", flush=True)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    log = CACHE_DIR / "venv-llama-cpp-python.log"
    _run_logged([sys.executable, "-m", "venv", str(venv)], log, timeout_s=300)
    _run_logged([str(python), "-m", "pip", "install", "--disable-pip-version-check",
                 f"llama-cpp-python[server]=={version}"], log, timeout_s=3600)
    return python
