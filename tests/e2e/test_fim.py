"""Fill-in-the-middle on /v1/completions: the exact token sequence the engine receives, checked on
a tiny random-weight GGUF whose vocabulary holds FIM tokens; the 400 on a model without them.

The observable is the llama.cpp backend's debug log line `request <id>: prompt token ids [...]`,
written right after tokenisation with the list handed to the scheduler (the server runs with
--log-level debug). The tiny vocabulary has one token per ASCII character, so the expected ids
follow from the text alone, independently of llama.cpp's tokenizer."""

from __future__ import annotations

import ast
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import Server, start_server, stop_server
from tests.openapi import validate, validate_completion_chunk
from tests.tiny_gguf import BOS, FIM_MID, FIM_PRE, FIM_SUF, char_ids, write_tiny_gguf

TINY = "tiny-fim"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("tiny-fim")
    gguf = write_tiny_gguf(tmp / f"{TINY}.gguf")
    srv = start_server(tmp, "--model", str(gguf), "--context-length", "256",
                       "--log-level", "debug")
    yield srv
    stop_server(srv)


def _engine_prompt(srv: Server, request_id: str) -> list[int]:
    """The prompt token ids the backend logged for this request."""
    found = re.findall(rf"request {re.escape(request_id)}: prompt token ids (\[[0-9, ]*\])",
                       srv.log_text())
    assert len(found) == 1, f"expected one prompt log line for {request_id}, got {found}"
    ids: list[int] = ast.literal_eval(found[0])
    return ids


def _complete(srv: Server, body: dict[str, object]) -> tuple[httpx.Response, str]:
    rid = f"req_fim_{uuid.uuid4().hex[:12]}"
    r = httpx.post(f"{srv.v1}/completions", headers={"X-Request-ID": rid}, timeout=60,
                   json={"model": TINY, "max_tokens": 3, "temperature": 0, **body})
    return r, rid


def test_suffix_builds_prefix_suffix_middle(tiny: Server) -> None:
    r, rid = _complete(tiny, {"prompt": "def f(x):", "suffix": "return y"})
    assert r.status_code == 200, r.text
    body = r.json()
    validate(body, "CreateCompletionResponse")
    expected = [BOS, FIM_PRE, *char_ids("def f(x):"), FIM_SUF, *char_ids("return y"), FIM_MID]
    assert _engine_prompt(tiny, rid) == expected
    assert body["usage"]["prompt_tokens"] == len(expected)


def test_raw_fim_tokens_in_the_prompt_are_special_tokens(tiny: Server) -> None:
    r, rid = _complete(tiny, {"prompt": "<fim_prefix>ab<fim_suffix>cd<fim_middle>"})
    assert r.status_code == 200, r.text
    # The same sequence as prompt "ab" + suffix "cd": each tag is one token, not its characters.
    assert _engine_prompt(tiny, rid) == [BOS, FIM_PRE, *char_ids("ab"), FIM_SUF,
                                         *char_ids("cd"), FIM_MID]


def test_token_prompt_with_suffix(tiny: Server) -> None:
    prompt = char_ids("x = ")
    r, rid = _complete(tiny, {"prompt": prompt, "suffix": "\n"})
    assert r.status_code == 200, r.text
    newline = 6 + 0x0A  # not a printable character: the byte-fallback token <0x0A>
    assert _engine_prompt(tiny, rid) == [BOS, FIM_PRE, *prompt, FIM_SUF, newline, FIM_MID]


def test_suffix_with_several_prompts_and_streaming(tiny: Server) -> None:
    client = openai.OpenAI(base_url=tiny.v1, api_key="unused", max_retries=0, timeout=60)
    rid = f"req_fim_{uuid.uuid4().hex[:12]}"
    stream = client.completions.create(model=TINY, prompt=["a", "b"], suffix="z", max_tokens=2,
                                       stream=True, extra_headers={"X-Request-ID": rid})
    finished = set()
    for chunk in stream:
        validate_completion_chunk(chunk.model_dump(exclude_unset=True))
        for choice in chunk.choices:
            if choice.finish_reason is not None:
                finished.add(choice.index)
    assert finished == {0, 1}
    for i, text in enumerate("ab"):
        assert _engine_prompt(tiny, f"{rid}-{i}") == [BOS, FIM_PRE, *char_ids(text), FIM_SUF,
                                                      *char_ids("z"), FIM_MID]


def test_capabilities_follow_the_vocabulary_and_the_yaml(tiny: Server) -> None:
    (model,) = httpx.get(f"{tiny.v1}/models").json()["data"]
    validate({"object": "list", "data": [model]}, "ListModelsResponse")
    assert model["capabilities"]["fim"] is True
    assert model["capabilities"]["embeddings"] is False  # a bare --model GGUF enables none
    assert model["context_length"] == 256


def test_embeddings_on_a_model_without_them_is_a_400(tiny: Server) -> None:
    r = httpx.post(f"{tiny.v1}/embeddings", json={"model": TINY, "input": "abc"}, timeout=60)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "model"
    assert "does not serve embeddings" in error["message"]
    r, _ = _complete(tiny, {"prompt": "ok", "suffix": "!"})
    assert r.status_code == 200


def test_suffix_on_a_model_without_fim_tokens_is_a_400(http: httpx.Client) -> None:
    from tests.conftest import MODEL

    r = http.post("/v1/completions", json={"model": MODEL, "prompt": "def add(a, b):",
                                           "suffix": "\n    return c", "max_tokens": 4})
    assert r.status_code == 400
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "suffix"
    assert "fill-in-the-middle" in error["message"]
    r = http.post("/v1/completions", json={"model": MODEL, "prompt": "def add(a, b):",
                                           "max_tokens": 2})
    assert r.status_code == 200


def test_default_model_vocabulary_has_no_fim_tokens(http: httpx.Client) -> None:
    (model,) = http.get("/v1/models").json()["data"]
    assert model["capabilities"]["fim"] is False


def test_tiny_gguf_declares_fim_tokens(tmp_path: Path) -> None:
    """The fixture model itself: llama.cpp reads its fim_pre/suf/mid keys (else the e2e tests
    above would test nothing)."""
    import llama_cpp

    path = write_tiny_gguf(tmp_path / "t.gguf")
    vocab = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    v = vocab._model.vocab
    assert (llama_cpp.llama_vocab_fim_pre(v), llama_cpp.llama_vocab_fim_suf(v),
            llama_cpp.llama_vocab_fim_mid(v)) == (FIM_PRE, FIM_SUF, FIM_MID)
    assert vocab.tokenize(b"ab c", add_bos=False, special=True) == char_ids("ab c")
