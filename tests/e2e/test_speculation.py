"""Prompt-lookup speculative decoding on the real model: the same output as decoding one token a
step (greedy and seeded sampling), exact max_tokens and cancellation, drafts actually taken.

Two servers of the default model: one with speculation on, one left at the default (off: it
must then draft nothing, even where drafts would be cheap). The
prompts stay under 64 tokens and prompt + reply under 256: there llama.cpp's CPU kernels give
every row the same result whatever the batch holds (longer KV views send a lone row through
its split-KV attention and 64+ prompt rows through the tiled one, which round differently, with
or without speculation), so any difference here is the scheduler's."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lokal.backends.spec import DEFAULT_CONFIG, ModelSpec
from tests.conftest import MODEL, Server, start_server, stop_server

pytestmark = pytest.mark.backends("llamacpp")

PASSAGES = [
    "The quick brown fox jumps over the lazy dog. The five boxing wizards jump quickly.",
    "Pack my box with five dozen liquor jugs. How vexingly quick daft zebras jump.",
    "The river runs north past the old mill, then turns east under the stone bridge.",
    "Our office opens at nine on weekdays and closes at noon on Saturdays and Sundays.",
    "Water boils at one hundred degrees at sea level and at lower temperatures on hills.",
    "The library lends books for three weeks; late returns cost ten cents a day each.",
    "Mix the flour with the butter, add two eggs, and bake the dough for forty minutes.",
    "The train to the coast leaves at seven and arrives shortly after half past ten.",
]


def _copy(i: int, **extra: object) -> dict[str, object]:
    return {"model": MODEL, "max_tokens": 96, "temperature": 0,
            "messages": [{"role": "system", "content": "You repeat the user's text exactly."},
                         {"role": "user", "content": f"Repeat exactly: {PASSAGES[i]}"}],
            **extra}


def _server(tmp: Path, speculation: bool) -> Server:
    gguf = ModelSpec.from_yaml(DEFAULT_CONFIG).gguf_path()
    cfg = tmp / f"spec-{speculation}.yaml"
    # step_rows: draft whatever the batch size (on this CPU drafts would only pay with one or
    # two sequences decoding), so that 8 concurrent requests all verify drafts.
    enabled = "    enabled: true\n" if speculation else ""  # off: the default
    cfg.write_text(f"id: {MODEL}\ncontext_length: 1024\ngguf:\n  path: {gguf}\n"
                   f"llamacpp:\n  parallel: 8\n  speculation:\n{enabled}    step_rows: 1000\n")
    return start_server(tmp, "--config", str(cfg))


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    tmp = tmp_path_factory.mktemp("speculation")
    on = _server(tmp, True)
    try:
        off = _server(tmp, False)
    except BaseException:
        stop_server(on)
        raise
    yield on, off
    stop_server(on)
    stop_server(off)


def _metric(server: Server, name: str) -> float:
    for line in httpx.get(f"{server.base_url}/metrics").text.splitlines():
        if line.startswith(f'{name}{{model="{MODEL}"}}'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} series")


def _together(server: Server, bodies: list[dict[str, object]]) -> list[dict[str, object]]:
    async def main() -> list[dict[str, object]]:
        async with httpx.AsyncClient(base_url=server.v1, timeout=300) as c:
            async def one(body: dict[str, object]) -> dict[str, object]:
                r = await c.post("/chat/completions", json=body)
                assert r.status_code == 200, r.text
                return dict(r.json())

            return list(await asyncio.gather(*(one(b) for b in bodies)))

    return asyncio.run(main())


def _texts(replies: list[dict[str, object]]) -> list[str]:
    return [r["choices"][0]["message"]["content"] for r in replies]  # type: ignore[index]


def test_greedy_output_is_the_same_with_speculation(servers: tuple[Server, Server]) -> None:
    """8 concurrent greedy requests that copy their prompt: token for token the text of the
    server without speculation (and of itself again, now from the prefix cache), while drafts
    were taken."""
    on, off = servers
    bodies = [_copy(i, logprobs=True) for i in range(8)]
    accepted = _metric(on, "lokal_spec_accepted_tokens_total")
    with_spec = _together(on, bodies)
    without = _together(off, bodies)
    again = _together(on, bodies)
    taken = _metric(on, "lokal_spec_accepted_tokens_total") - accepted
    assert taken >= 8 * 5, f"only {taken} drafted tokens were taken"
    assert _metric(off, "lokal_spec_draft_tokens_total") == 0  # off by default

    def tokens(replies: list[dict[str, object]]) -> list[list[str]]:
        return [[t["token"] for t in r["choices"][0]["logprobs"]["content"]]  # type: ignore[index]
                for r in replies]

    assert tokens(with_spec) == tokens(without)
    assert tokens(again) == tokens(without)
    assert _texts(with_spec) == _texts(without)
    # The logprobs of each token are the model's too (the same rows, whatever was drafted).
    for a, b in zip(with_spec, without, strict=True):
        la = [t["logprob"] for t in a["choices"][0]["logprobs"]["content"]]  # type: ignore[index]
        lb = [t["logprob"] for t in b["choices"][0]["logprobs"]["content"]]  # type: ignore[index]
        assert la == lb
    # They did copy: most of each reply is the passage itself.
    assert sum(p in t for p, t in zip(PASSAGES, _texts(with_spec), strict=True)) >= 4


def test_seeded_sampling_is_reproducible_with_speculation(
        servers: tuple[Server, Server]) -> None:
    """Each token is still one sampler call on its own row, in order: a seeded sampled reply
    repeats, and equals the one decoded a token a step."""
    on, off = servers
    bodies = [_copy(i, temperature=0.7, seed=1234 + i) for i in range(8)]
    first, second = _texts(_together(on, bodies)), _texts(_together(on, bodies))
    assert first == second
    assert first == _texts(_together(off, bodies))


def test_max_tokens_is_exact_when_a_draft_would_run_past_it(
        servers: tuple[Server, Server]) -> None:
    on, off = servers
    for limit in (1, 2, 7, 13):
        body = _copy(0, max_tokens=limit)
        (a,), (b,) = _together(on, [body]), _together(off, [body])
        assert a["usage"]["completion_tokens"] == limit  # type: ignore[index]
        assert a["choices"][0]["finish_reason"] == "length"  # type: ignore[index]
        assert _texts([a]) == _texts([b])


def test_cancelled_copy_stops_and_leaves_the_slot_clean(servers: tuple[Server, Server]) -> None:
    """A client gone in the middle of a copying stream: the server stops it, frees the slot,
    and the same request afterwards (reusing that slot's cache) is still the plain output."""
    on, off = servers
    body = _copy(1, stream=True)
    cancelled = _metric(on, "lokal_requests_cancelled_total")
    with httpx.Client(base_url=on.v1, timeout=60) as c, \
            c.stream("POST", "/chat/completions", json=body) as r:
        assert r.status_code == 200
        lines = 0
        for line in r.iter_lines():
            lines += line.startswith("data: ")
            if lines == 3:
                break
    deadline = time.monotonic() + 120  # room for a busy machine; the counter is the check
    while _metric(on, "lokal_requests_cancelled_total") == cancelled \
            or _metric(on, "lokal_requests_running") > 0:
        assert time.monotonic() < deadline, "the dropped stream was not cancelled"
        time.sleep(0.05)
    plain = _copy(1)
    assert _texts(_together(on, [plain])) == _texts(_together(off, [plain]))
