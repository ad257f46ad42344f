"""The GGUF -> safetensors converter's command line: which GGUF it reads from a model YAML, where
it writes, and that a finished output is left alone (the conversion itself needs the vLLM venv)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lokal.backends.vllm import convert as convert_module
from lokal.backends.vllm.convert import main


@pytest.fixture
def conversions(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Path, Path]]:
    """Records the (gguf, out) pairs main() asks to convert, in place of torch's conversion."""
    calls: list[tuple[Path, Path]] = []

    def record(gguf: Path, out: Path) -> None:
        calls.append((gguf, out))

    monkeypatch.setattr(convert_module, "convert", record)
    return calls


def model_yaml(directory: Path, gguf_line: str) -> Path:
    path = directory / "model.yaml"
    path.write_text(f"id: tiny\n{gguf_line}\n", encoding="utf-8")
    return path


def convert_over_an_output_with(tmp_path: Path, present: str) -> Path:
    """Runs main() (successfully) on tmp_path/tiny.gguf into an output folder that already holds
    the file `present`; returns that folder."""
    (tmp_path / "tiny.gguf").write_bytes(b"GGUF")
    config = model_yaml(tmp_path, "gguf: {path: tiny.gguf}")
    out = tmp_path / "out"
    out.mkdir()
    (out / present).write_text("{}", encoding="utf-8")
    assert main(["--config", str(config), "--out", str(out)]) == 0
    return out


def test_the_gguf_path_is_read_relative_to_the_yaml(
        tmp_path: Path, conversions: list[tuple[Path, Path]],
        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "models").mkdir()
    gguf = tmp_path / "models" / "tiny.gguf"
    gguf.write_bytes(b"GGUF")
    config = model_yaml(tmp_path / "models", "gguf: {path: tiny.gguf}")
    out = tmp_path / "cache" / "vllm" / "tiny"
    assert main(["--config", str(config), "--out", str(out)]) == 0
    assert conversions == [(gguf, out)]
    assert out.parent.is_dir()  # made for the converter, which writes beside it first
    assert f"converted {gguf} -> {out} in " in capsys.readouterr().out


def test_a_finished_output_is_left_alone(
        tmp_path: Path, conversions: list[tuple[Path, Path]],
        capsys: pytest.CaptureFixture[str]) -> None:
    convert_over_an_output_with(tmp_path, "config.json")
    assert conversions == []
    assert "already exists; nothing to do" in capsys.readouterr().out


def test_an_output_without_config_json_is_converted_again(
        tmp_path: Path, conversions: list[tuple[Path, Path]]) -> None:
    out = convert_over_an_output_with(tmp_path, "tokenizer.json")
    assert conversions == [(tmp_path / "tiny.gguf", out)]


def test_a_missing_gguf_fails_before_anything_is_written(
        tmp_path: Path, conversions: list[tuple[Path, Path]]) -> None:
    config = model_yaml(tmp_path, "gguf: {path: absent.gguf}")
    out = tmp_path / "new" / "out"
    with pytest.raises(FileNotFoundError, match=r"absent\.gguf"):
        main(["--config", str(config), "--out", str(out)])
    assert conversions == []
    assert not out.parent.exists()


def test_a_model_without_a_gguf_source_is_refused(
        tmp_path: Path, conversions: list[tuple[Path, Path]]) -> None:
    config = model_yaml(tmp_path, "vllm: {model: some/hub-id}")
    with pytest.raises(FileNotFoundError, match="no GGUF source"):
        main(["--config", str(config), "--out", str(tmp_path / "out")])
    assert conversions == []


@pytest.mark.parametrize("argv", [[], ["--config", "x.yaml"], ["--out", "dir"]])
def test_both_flags_are_required(argv: list[str], conversions: list[tuple[Path, Path]],
                                 capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "required" in capsys.readouterr().err
    assert conversions == []
