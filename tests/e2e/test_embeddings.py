"""POST /v1/embeddings on the real model: the official client (base64 by default), raw httpx
(float and base64), OpenAI's schema, vector sanity, batching under concurrency, bad input, and
langchain-openai's OpenAIEmbeddings."""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import MODEL, Server
from tests.openapi import validate

# The vLLM adapter has no embedding support yet (it answers 400, tested below on llama.cpp).
pytestmark = pytest.mark.backends("llamacpp")

DIM = 576  # SmolLM2-135M's hidden size
CAT = "The cat sat on the mat."
CAT_PARAPHRASE = "A cat was sitting on the rug."
UNRELATED = "Quarterly revenue grew by ten percent."


def _floats(http: httpx.Client, inputs: Any, **extra: Any) -> list[list[float]]:
    r = http.post("/v1/embeddings", json={"model": MODEL, "input": inputs,
                                          "encoding_format": "float", **extra})
    assert r.status_code == 200, r.text
    return [d["embedding"] for d in r.json()["data"]]


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def _close(a: Sequence[float], b: Sequence[float], tol: float = 1e-6) -> bool:
    return len(a) == len(b) and max(abs(x - y) for x, y in zip(a, b, strict=True)) < tol


def _same(a: Sequence[float], b: Sequence[float]) -> bool:
    """The same text's vector, batched with different neighbours: llama.cpp's kernels depend on
    the batch's size, so the last digits may differ (measured: cosine 0.99994), never more."""
    return len(a) == len(b) and _cosine(a, b) > 0.9995


def test_float_response_validates_and_counts_tokens(http: httpx.Client, vocab: Any) -> None:
    texts = [CAT, UNRELATED]
    r = http.post("/v1/embeddings", json={"model": MODEL, "input": texts,
                                          "encoding_format": "float"})
    assert r.status_code == 200, r.text
    body = r.json()
    validate(body, "CreateEmbeddingResponse")
    assert body["object"] == "list" and body["model"] == MODEL
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert all(d["object"] == "embedding" for d in body["data"])
    for d in body["data"]:
        assert len(d["embedding"]) == DIM
        assert math.isclose(math.sqrt(sum(x * x for x in d["embedding"])), 1.0, rel_tol=1e-5)
    tokens = sum(len(vocab.tokenize(t.encode(), add_bos=True, special=True)) for t in texts)
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


def test_openai_client_default_base64(client: openai.OpenAI, http: httpx.Client) -> None:
    result = client.embeddings.create(model=MODEL, input=[CAT, UNRELATED])
    assert [d.index for d in result.data] == [0, 1]
    assert result.usage.prompt_tokens == result.usage.total_tokens > 0
    floats = _floats(http, [CAT, UNRELATED])
    for got, want in zip(result.data, floats, strict=True):
        assert _close(got.embedding, want)  # float32 on the wire, as OpenAI's


def test_base64_is_little_endian_float32(http: httpx.Client) -> None:
    r = http.post("/v1/embeddings", json={"model": MODEL, "input": CAT,
                                          "encoding_format": "base64"})
    assert r.status_code == 200, r.text
    body = r.json()
    raw = base64.b64decode(body["data"][0]["embedding"])
    assert len(raw) == 4 * DIM
    vector = list(struct.unpack(f"<{DIM}f", raw))
    assert _close(vector, _floats(http, CAT)[0])
    body["data"][0]["embedding"] = vector
    validate(body, "CreateEmbeddingResponse")


def test_same_text_same_vector_and_order_is_kept(http: httpx.Client) -> None:
    cat, unrelated = _floats(http, CAT)[0], _floats(http, UNRELATED)[0]
    assert _close(_floats(http, CAT)[0], cat)  # the same request again: the same vector
    batch = _floats(http, [UNRELATED, CAT, UNRELATED])
    assert _same(batch[0], unrelated) and _same(batch[1], cat) and _same(batch[2], unrelated)
    assert _cosine(cat, unrelated) < 0.95


def test_paraphrase_is_closer_than_an_unrelated_sentence(http: httpx.Client) -> None:
    cat, paraphrase, unrelated = _floats(http, [CAT, CAT_PARAPHRASE, UNRELATED])
    assert _cosine(cat, paraphrase) > _cosine(cat, unrelated) + 0.05
    assert _cosine(paraphrase, unrelated) < _cosine(cat, paraphrase)


def test_token_arrays(http: httpx.Client, vocab: Any) -> None:
    ids = vocab.tokenize(CAT.encode(), add_bos=True, special=True)
    other = vocab.tokenize(UNRELATED.encode(), add_bos=True, special=True)
    (from_text,) = _floats(http, CAT)
    (from_ids,) = _floats(http, ids)
    assert _close(from_ids, from_text)
    both = _floats(http, [ids, other])
    assert _same(both[0], from_text) and _same(both[1], _floats(http, UNRELATED)[0])


def test_native_dimensions_are_accepted(http: httpx.Client) -> None:
    assert len(_floats(http, CAT, dimensions=DIM)[0]) == DIM


def test_concurrent_requests_are_all_answered(server: Server) -> None:
    texts = [f"Sentence number {i} is about {topic}." for i, topic in
             enumerate(["cats", "taxes", "rain", "chess", "bread", "music", "trains", "code"])]

    def embed(text: str) -> list[float]:
        with httpx.Client(base_url=server.base_url, timeout=120) as c:
            return _floats(c, [text, CAT])[0]

    with ThreadPoolExecutor(len(texts)) as pool:
        together = list(pool.map(embed, texts))
    with httpx.Client(base_url=server.base_url, timeout=120) as c:
        alone = [_floats(c, t)[0] for t in texts]
    for got, want in zip(together, alone, strict=True):
        assert _same(got, want)
    assert all(_cosine(a, b) < 0.9995 for a, b in pairwise(alone))


BAD_INPUTS: list[tuple[dict[str, Any], int, str, str]] = [
    ({"input": []}, 400, "input", "empty_array"),
    ({"input": ""}, 400, "input", "invalid_value"),
    ({"input": [[]]}, 400, "input[0]", "empty_array"),
    ({"input": ["a", 1]}, 400, "input", "invalid_value"),
    ({"input": None}, 400, "input", "invalid_value"),
    ({"input": ["a"] * 2049}, 400, "input", "array_above_max_length"),
    ({"input": ["fine", ""]}, 400, "input", "invalid_value"),
    ({"input": [49152]}, 400, "input", "invalid_value"),
    ({"input": [1] * 2049}, 400, "input", "context_length_exceeded"),
    ({"input": "dog " * 2100}, 400, "input", "context_length_exceeded"),
    ({"input": "hi", "dimensions": 64}, 400, "dimensions", "invalid_value"),
    ({"input": "hi", "dimensions": 0}, 400, "dimensions", "invalid_value"),
    ({"input": "hi", "encoding_format": "hex"}, 400, "encoding_format", "invalid_value"),
    ({"input": "hi", "model": "text-embedding-3-small"}, 404, "model", "model_not_found"),
    ({}, 400, "input", "missing_required_parameter"),
]


@pytest.mark.parametrize(("extra", "status", "param", "code"), BAD_INPUTS,
                         ids=[str(i) for i in range(len(BAD_INPUTS))])
def test_bad_input_is_an_error_envelope_then_serving_goes_on(
    http: httpx.Client, extra: dict[str, Any], status: int, param: str, code: str
) -> None:
    r = http.post("/v1/embeddings", json={"model": MODEL, **extra})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["code"] == code
    if param == "dimensions" and status == 400 and extra["dimensions"] == 64:
        assert str(DIM) in error["message"]  # says why: the model's one size
    assert len(_floats(http, CAT)[0]) == DIM


def test_models_reports_embeddings(http: httpx.Client) -> None:
    (model,) = http.get("/v1/models").json()["data"]
    assert model["capabilities"]["embeddings"] is True


def test_langchain_openai_embeddings(server: Server, http: httpx.Client) -> None:
    from langchain_openai import OpenAIEmbeddings

    # check_embedding_ctx_length=False: otherwise langchain tokenizes with tiktoken (OpenAI's
    # cl100k vocabulary, fetched from the internet) and sends those token ids, which mean
    # nothing to this model's vocabulary; with False it sends the texts themselves.
    embeddings = OpenAIEmbeddings(model=MODEL, base_url=server.v1, api_key="unused",
                                  check_embedding_ctx_length=False, max_retries=0)
    docs = embeddings.embed_documents([CAT, UNRELATED])
    query = embeddings.embed_query(CAT_PARAPHRASE)
    want = _floats(http, [CAT, UNRELATED, CAT_PARAPHRASE])
    assert _same(docs[0], want[0]) and _same(docs[1], want[1]) and _same(query, want[2])
    assert _cosine(query, docs[0]) > _cosine(query, docs[1])
