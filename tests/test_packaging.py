"""The wheel installs one import name, `lokal`, and carries every module and the chat page."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# the folders that install under `lokal` (pyproject's package-dir)
FOLDERS = {"server": "lokal.server", "client": "lokal.client", "backends": "lokal.backends"}


def _package_dir() -> tuple[dict[str, str], list[str]]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    return dict(config["package-dir"]), list(config["packages"])


def test_every_folder_with_code_is_a_listed_package() -> None:
    mapping, packages = _package_dir()
    assert mapping == {name: folder for folder, name in FOLDERS.items()}
    found = set()
    for folder, name in FOLDERS.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder).parts
            found.add(".".join((name, *rel)))
    # the chat page ships as package data of its folder (vendor/ included, once made)
    found.add("lokal.server.ui")
    assert sorted(packages) == sorted(found)


def test_the_wheel_holds_only_lokal(tmp_path: Path) -> None:
    # Built from a copy: pip builds in the source tree, and a build/ left there would carry
    # modules since deleted into the next wheel (and unseen by this test).
    source = tmp_path / "src"
    skip = shutil.ignore_patterns("__pycache__", "node_modules", "build", "*.egg-info")
    for folder in (*FOLDERS, "configs"):
        shutil.copytree(REPO / folder, source / folder, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w",
                    str(tmp_path), str(source)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("lokal-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    stale = {n for n in names if n.endswith(".py") and n.startswith("lokal/")
             and not (source / _folder_path(n)).is_file()}
    assert not stale, f"modules in the wheel with no source: {sorted(stale)}"
    (top_level,) = (n for n in names if n.endswith(".dist-info/top_level.txt"))
    assert zipfile.ZipFile(wheel).read(top_level).decode().split() == ["lokal"]
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"lokal"}
    for folder, name in FOLDERS.items():
        for source in (REPO / folder).rglob("*.py"):
            if "node_modules" in source.parts:
                continue
            member = "/".join((*name.split("."), *source.relative_to(REPO / folder).parts))
            assert member in names, f"{source} is missing from the wheel"
    assert "lokal/server/ui/index.html" in names and "lokal/server/ui/app.js" in names
    if (REPO / "server" / "ui" / "vendor" / "purify.es.js").is_file():  # made by `make ui`
        assert {"lokal/server/ui/vendor/purify.es.js", "lokal/server/ui/vendor/marked.esm.js",
                "lokal/server/ui/vendor/purify.LICENSE"} <= names


def _folder_path(member: str) -> str:
    """A wheel member's source path: lokal/server/x.py -> server/x.py."""
    return member.removeprefix("lokal/")
