"""API-key parsing and comparison, and where the keys come from (env list, key file)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from lokal.server.auth import key_matches, presented_keys
from lokal.server.settings import ServerSettings


@pytest.mark.parametrize(("headers", "expected"), [
    ([(b"authorization", b"Bearer abc")], ["abc"]),
    ([(b"Authorization", b"bearer   abc  ")], ["abc"]),
    ([(b"x-api-key", b"xyz")], ["xyz"]),
    ([(b"authorization", b"Bearer a"), (b"x-api-key", b"b")], ["a", "b"]),
    ([(b"authorization", b"Basic abc")], []),
    ([(b"authorization", b"Bearer")], []),
    ([(b"authorization", b"Bearer ")], []),
    ([(b"x-api-key", b"  ")], []),
    ([], []),
])
def test_presented_keys(headers: list[tuple[bytes, bytes]], expected: list[str]) -> None:
    assert presented_keys(headers) == expected


def test_key_matches_only_whole_keys() -> None:
    keys = ("alpha-key", "beta-key")
    assert key_matches("alpha-key", keys)
    assert key_matches("beta-key", keys)
    for wrong in ("alpha", "alpha-key ", "Alpha-key", "", "beta-keyx", "ключ"):
        assert not key_matches(wrong, keys), wrong
    assert not key_matches("alpha-key", ())


def test_keys_from_env_list_and_file(tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("# comment\n\nfile-key\n two \n")
    settings = ServerSettings(api_key=SecretStr(" one, two ,,"), api_key_file=key_file)
    assert settings.api_keys() == ("one", "two", "file-key")


def test_env_variable_holds_several_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOKAL_API_KEY", "k1,k2")
    settings = ServerSettings()
    assert settings.api_keys() == ("k1", "k2")
    assert "k1" not in repr(settings)  # a SecretStr: never in logs or tracebacks


def test_no_key_means_auth_off() -> None:
    assert ServerSettings().api_keys() == ()
    assert ServerSettings(api_key=SecretStr(" , ")).api_keys() == ()


def test_a_key_file_without_keys_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "keys"
    empty.write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="holds no key"):
        ServerSettings(api_key_file=empty).api_keys()
    with pytest.raises(FileNotFoundError):
        ServerSettings(api_key_file=tmp_path / "missing").api_keys()


def test_cors_origins_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOKAL_CORS_ORIGINS", "https://a.example, https://b.example")
    assert ServerSettings().cors_origins == ["https://a.example", "https://b.example"]
    assert ServerSettings(cors_origins="").cors_origins == []
