"""`lokal pull` against a local server speaking the Hub's routes (the Hub is unreachable here):
choosing the file, a whole pull with its sha256 checked and YAML written, a pull resumed after
the connection died, a corrupt download refused, and `lokal rm`."""

from __future__ import annotations

from pathlib import Path

import pytest

from lokal.backends.spec import DEFAULT_CONFIG, ModelSpec
from lokal.client.pull import (
    HubFile,
    PullError,
    choose,
    model_id,
    parse_ref,
    pull,
    remove,
    sha256_of,
)
from tests.fake_hub import HubRepo, serve_hub

REPO_ID = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"
FILE = "smollm2-135m-instruct-q4_1.gguf"


def _hub(**kwargs: bool) -> HubRepo:
    gguf = ModelSpec.from_yaml(DEFAULT_CONFIG).gguf_path()
    return HubRepo(REPO_ID, {FILE: gguf}, listed_only={"smollm2-135m-instruct-q8_0.gguf": 1},
                   **kwargs)


def _files(*names: str) -> list[HubFile]:
    return [HubFile(n, i + 1, None) for i, n in enumerate(names)]


def test_refs_quantizations_and_ids() -> None:
    assert parse_ref("a/b:Q4_K_M") == ("a/b", "Q4_K_M")
    assert parse_ref("a/b") == ("a/b", None)
    with pytest.raises(PullError):
        parse_ref("just-a-name")
    files = _files("m-Q8_0.gguf", "m-Q4_K_M.gguf", "m-Q2_K.gguf", "mmproj-m-f16.gguf")
    (picked,), why = choose(files, None)
    assert picked.name == "m-Q4_K_M.gguf" and "default" in why
    assert choose(files, "q8_0")[0][0].name == "m-Q8_0.gguf"
    assert choose(files, "m-Q2_K.gguf")[0][0].name == "m-Q2_K.gguf"
    with pytest.raises(PullError, match="Q2_K, Q4_K_M, Q8_0"):
        choose(files, "Q5_K_M")
    split = _files("big-Q4_K_M-00002-of-00002.gguf", "big-Q4_K_M-00001-of-00002.gguf")
    parts, _ = choose(split, "Q4_K_M")
    assert [p.name for p in parts] == ["big-Q4_K_M-00001-of-00002.gguf",
                                       "big-Q4_K_M-00002-of-00002.gguf"]
    assert model_id("bartowski/Qwen2.5-7B-Instruct-GGUF", "Qwen2.5-7B-Instruct-Q4_K_M.gguf") \
        == "qwen2.5-7b-instruct-q4_k_m"


def test_a_whole_pull_checks_the_sha256_and_writes_a_servable_yaml(tmp_path: Path) -> None:
    hub = _hub()
    said: list[str] = []
    with serve_hub(hub) as endpoint:
        yaml_path = pull(REPO_ID, tmp_path, endpoint=endpoint, say=said.append)
    assert any("Q4_1" in line and "default" in line for line in said), said
    assert any("sha256 checked" in line for line in said), said
    spec = ModelSpec.from_yaml(yaml_path)
    assert spec.id == "smollm2-135m-instruct-q4_1"
    assert sha256_of(spec.gguf_path()) == hub.sha[FILE]
    assert spec.context_length == 8192  # SmolLM2's trained context, within the cap
    assert spec.pulled is not None and spec.pulled.sha256 == hub.sha[FILE]
    removed = remove("smollm2-135m-instruct-q4_1", tmp_path)
    assert yaml_path in removed and not yaml_path.exists()
    assert not list(tmp_path.rglob("*.gguf"))


def test_a_pull_cut_half_way_resumes_from_where_it_stopped(tmp_path: Path) -> None:
    hub = _hub(cut_first_get=True)
    with serve_hub(hub) as endpoint:
        try:
            path = pull(REPO_ID, tmp_path, endpoint=endpoint, say=lambda _: None)
        except PullError as exc:  # the client gave up: the user runs the pull again
            assert "resume" in str(exc)
            path = pull(REPO_ID, tmp_path, endpoint=endpoint, say=lambda _: None)
    assert hub.ranges[0] == ""
    resumed_at = int(hub.ranges[-1].removeprefix("bytes=").split("-")[0])
    assert resumed_at > 0, hub.ranges  # not downloaded again from the start
    assert sha256_of(ModelSpec.from_yaml(path).gguf_path()) == hub.sha[FILE]


def test_a_corrupt_download_is_refused_and_deleted(tmp_path: Path) -> None:
    with serve_hub(_hub(corrupt=True)) as endpoint, pytest.raises(PullError, match="corrupt"):
        pull(REPO_ID, tmp_path, endpoint=endpoint, say=lambda _: None)
    assert not list(tmp_path.rglob("*.gguf")) and not list(tmp_path.glob("*.yaml"))


def test_rm_refuses_a_model_lokal_did_not_pull(tmp_path: Path) -> None:
    (tmp_path / "mine.yaml").write_text("id: mine\ngguf: {path: /x.gguf}\n")
    with pytest.raises(PullError, match="not pulled"):
        remove("mine", tmp_path)
    with pytest.raises(PullError, match="no model"):
        remove("other", tmp_path)
