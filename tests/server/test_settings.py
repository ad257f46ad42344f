"""Which models a server is configured with: a models dir, repeated --config/--model, the
bundled default; preload defaults; budgets; clashes found at start-up by `lokal serve`."""

from __future__ import annotations

from pathlib import Path

import pytest

from lokal.backends.hardware import Hardware
from lokal.backends.spec import DEFAULT_CONFIG
from lokal.server.app import make_pool
from lokal.server.cli import main
from lokal.server.settings import ServerSettings


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_no_flag_serves_the_bundled_default_preloaded() -> None:
    (spec,) = ServerSettings().model_specs()
    assert spec.source == DEFAULT_CONFIG.resolve() and spec.preload is None


def test_a_models_dir_is_on_demand_unless_a_file_says_preload(tmp_path: Path) -> None:
    write(tmp_path / "models" / "a.yaml", "id: a\ngguf: {path: a.gguf}\n")
    write(tmp_path / "models" / "b.yaml", "id: b\npreload: true\ngguf: {path: b.gguf}\n")
    write(tmp_path / "models" / "notes.txt", "not a model")
    named = write(tmp_path / "c.yaml", "id: c\ngguf: {path: c.gguf}\n")
    specs = ServerSettings(models_dir=tmp_path / "models", config=[named]).model_specs()
    assert [(s.id, s.preload) for s in specs] == [("a", False), ("b", True), ("c", None)]


def test_configs_and_models_repeat_and_split_on_commas_from_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    one = write(tmp_path / "one.yaml", "id: one\ngguf: {path: x.gguf}\n")
    two = write(tmp_path / "two.yaml", "id: two\ngguf: {path: y.gguf}\n")
    monkeypatch.setenv("LOKAL_CONFIG", f"{one},{two}")
    monkeypatch.setenv("LOKAL_MODEL", str(tmp_path / "m.gguf"))
    specs = ServerSettings().model_specs()
    assert [s.id for s in specs] == ["one", "two", "m"]


def test_memory_budget_is_a_share_of_available_ram_or_a_size() -> None:
    assert ServerSettings(memory_budget="6GiB").budgets() == {"cpu": 6 * 2**30}
    share = ServerSettings().budgets()["cpu"]
    assert 0 < share < ServerSettings(memory_budget="100%").budgets()["cpu"]
    assert ServerSettings(memory_budget="1GiB").budgets(gpu_memory=80 * 2**30)["gpu"] == \
        80 * 2**30
    with pytest.raises(ValueError):
        ServerSettings(memory_budget="lots").budgets()


def test_an_empty_or_missing_models_dir_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no \*\.yaml"):
        ServerSettings(models_dir=tmp_path).model_specs()
    with pytest.raises(ValueError, match="not a folder"):
        ServerSettings(models_dir=tmp_path / "nowhere").model_specs()


def test_a_name_clash_stops_lokal_serve_naming_both_files(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path / "models" / "first.yaml", "id: chat\ngguf: {path: a.gguf}\n")
    write(tmp_path / "models" / "second.yaml", "id: code\naliases: [chat]\ngguf: {path: b.gguf}\n")
    assert main(["serve", "--models-dir", str(tmp_path / "models")]) == 2
    err = capsys.readouterr().err
    assert "'chat' is used twice" in err and "first.yaml" in err and "second.yaml" in err


def test_pool_takes_the_budget_limits_and_timeouts(tmp_path: Path) -> None:
    settings = ServerSettings(memory_budget="2GiB", max_loaded=3, load_timeout=12,
                              idle_unload=30)
    pool = make_pool(settings, Hardware((), "test"))
    assert pool.budgets == {"cpu": 2 * 2**30}
    assert (pool.max_loaded, pool.load_timeout) == (3, 12)
