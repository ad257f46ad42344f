"""`lokal chat` driven through a pseudo-terminal (pexpect) against the real server: a streamed
reply with its usage, multi-line input, /model, /system, /save, /clear, /load, Ctrl-C stopping
a reply (and the server freeing its slot), and clear messages when the server is down or the
model unknown."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import httpx
import pexpect

from tests.conftest import MODEL, REPO, Server, free_port

PROMPT = f"{MODEL}>"
# Every expect waits on something the chat prints; the bound only catches a hang. Generous, as
# two shared CPUs (a second suite beside this one) make a small model answer 5x slower.
WAIT = 300


def _spawn(*args: str, home: Path) -> pexpect.spawn:
    env = {"TERM": "xterm-256color", "HOME": str(home), "PATH": "/usr/bin:/bin",
           "XDG_DATA_HOME": str(home / "data"), "PYTHONPATH": str(REPO),
           "PROMPT_TOOLKIT_NO_CPR": "1"}
    # Ctrl-C must reach the chat as SIGINT even where the suite runs as a background job,
    # whose children inherit SIGINT ignored (POSIX, without job control).
    return pexpect.spawn(sys.executable, ["-m", "lokal.server.cli", "chat", *args], cwd=str(REPO),
                         env=env, encoding="utf-8", timeout=WAIT, dimensions=(40, 160),
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _cancelled(server: Server) -> float:
    """Generations the engine stopped early (and so freed their slot), since start."""
    text = httpx.get(f"{server.base_url}/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("lokal_requests_cancelled_total{"))


def test_a_conversation_with_commands_and_a_stopped_reply(server: Server,
                                                          tmp_path: Path) -> None:
    chat = _spawn("--url", server.base_url, "--max-tokens", "24", "--temperature", "0",
                  home=tmp_path)
    try:
        chat.expect_exact(f"model {MODEL}")
        chat.expect_exact(PROMPT)
        chat.send("Say hello.\r")
        chat.expect(r"\[(\d+) prompt \+ (\d+) completion tokens\]")
        assert 0 < int(chat.match.group(2)) <= 24
        chat.expect_exact(PROMPT)
        chat.send("line one\x1b\rline two\r")  # Alt-Enter: a new line, not a send
        chat.expect(r"completion tokens\]")
        chat.expect_exact(PROMPT)
        chat.send("/model\r")
        chat.expect(rf"{MODEL} \*\s+loaded")
        chat.expect_exact(PROMPT)
        chat.send("/system You are terse.\r")
        chat.expect_exact("system prompt set")
        saved = tmp_path / "talk.json"
        chat.send(f"/save {saved}\r")
        chat.expect_exact("saved 4 messages")
        data = json.loads(saved.read_text())
        assert data["system"] == "You are terse." and data["model"] == MODEL
        assert data["messages"][2] == {"role": "user", "content": "line one\nline two"}
        chat.send("/clear\r")
        chat.expect_exact("new conversation")
        chat.send(f"/load {saved}\r")
        chat.expect_exact("loaded 4 messages")
        chat.send("/model no-such-model\r")
        chat.expect_exact("no model 'no-such-model'")
        chat.expect_exact(PROMPT)
        chat.sendline("/exit")
        chat.expect(pexpect.EOF)
    finally:
        chat.close(force=True)

    cancelled = _cancelled(server)
    # Greedy, each story runs to --max-tokens, so the reply is still streaming when Ctrl-C
    # lands; nothing waits for it to end (a stopped reply ends at once, whatever the limit).
    # The limit only bounds a reply that did end first, so that the next topic comes soon.
    long_chat = _spawn("--url", server.base_url, "--max-tokens", "400", "--temperature", "0",
                       home=tmp_path)
    try:
        stopped = False
        # Should a reply still end before the Ctrl-C lands (a very fast engine), ask again: a
        # finished reply prints its usage instead.
        for topic in ("dragon", "lighthouse keeper", "sailor"):
            long_chat.expect_exact(PROMPT)
            long_chat.send(f"Write a very long story about a {topic}.\r")
            long_chat.expect_exact(f"{topic}.")  # the input's echo
            # The prompt has ended (bracketed paste off): the terminal is out of raw mode, so
            # Ctrl-C is a signal again. Before that prompt_toolkit reads it as a key and drops
            # it; the old wait matched the echo's redraw and sent it there on a busy machine.
            long_chat.expect_exact("\x1b[?2004l")
            long_chat.expect(r"\w+\s+\w+\s+\w+\s+\w+")  # the reply is streaming
            long_chat.sendintr()
            # Waits on the stop, not on the reply: a Ctrl-C that took hold prints [stopped]
            # within a decode step or two; a reply still streaming after WAIT s ignored it.
            try:
                ended = long_chat.expect_exact(["[stopped]", "completion tokens]"])
            except pexpect.TIMEOUT:
                raise AssertionError(f"Ctrl-C did not stop the streaming reply within {WAIT} s;"
                                     f" it printed: {long_chat.before[-300:]!r}") from None
            if ended == 0:
                stopped = True
                break
        assert stopped, "no Ctrl-C stopped a reply: each one ran to its end"
        long_chat.expect_exact(PROMPT)
        deadline = time.monotonic() + WAIT
        while _cancelled(server) == cancelled and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _cancelled(server) > cancelled, "the stopped reply still holds its slot"
        long_chat.sendeof()
        long_chat.expect(pexpect.EOF)
    finally:
        long_chat.close(force=True)


def test_clear_messages_when_the_server_is_down_or_the_model_unknown(
        server: Server, tmp_path: Path) -> None:
    down = _spawn("--url", f"http://127.0.0.1:{free_port()}", home=tmp_path)
    down.expect_exact("cannot reach lokal at")
    down.expect(pexpect.EOF)
    down.close()
    assert down.exitstatus == 1
    unknown = _spawn("no-such-model", "--url", server.base_url, home=tmp_path)
    unknown.expect_exact("model 'no-such-model' is not served here")
    unknown.expect(pexpect.EOF)
    unknown.close()
    assert unknown.exitstatus == 1
