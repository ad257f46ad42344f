"""`lokal chat`: an interactive terminal chat against a running lokal (prompt_toolkit for the
input line, with history and multi-line editing; rich for everything the chat says itself).
The reply streams as it is generated; Ctrl-C stops it and keeps the chat."""

from __future__ import annotations

import json
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prompt_toolkit import PromptSession
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from rich.console import Console
from rich.table import Table

HELP = """Enter sends; Alt-Enter (or Esc then Enter) starts a new line. Ctrl-C stops a reply,
Ctrl-D leaves. Commands:
  /model [NAME]    switch model (without NAME: list the models and their status)
  /system [TEXT]   set the system prompt (without TEXT: clear it)
  /clear           start a new conversation
  /save FILE       save the conversation (JSON)
  /load FILE       load a saved conversation
  /help            this text
  /exit            leave"""


class ChatError(Exception):
    """A message for the user: the server is down, the model unknown, a request refused."""


@dataclass
class Conversation:
    model: str
    system: str | None = None
    messages: list[dict[str, str]] = field(default_factory=list)

    def request_messages(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.messages

    def to_json(self) -> str:
        return json.dumps({"model": self.model, "system": self.system,
                           "messages": self.messages}, indent=2, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Conversation:
        data = json.loads(text)
        messages = data.get("messages")
        if not isinstance(data.get("model"), str) or not isinstance(messages, list) or any(
                not isinstance(m, dict) or m.get("role") not in ("user", "assistant")
                or not isinstance(m.get("content"), str) for m in messages):
            raise ValueError("not a lokal chat file (model, system, messages)")
        return cls(data["model"], data.get("system"), messages)


class LokalClient:
    """The few calls the chat makes, with errors turned into sentences."""

    def __init__(self, url: str, api_key: str | None) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=self.url, headers=headers,
                                 timeout=httpx.Timeout(10.0, read=600.0))

    def _error(self, response: httpx.Response) -> ChatError:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:200] or response.reason_phrase
        if response.status_code == 401:
            message += " (pass --api-key or set LOKAL_API_KEY)"
        return ChatError(f"{response.status_code}: {message}")

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ChatError(f"cannot reach lokal at {self.url} ({exc.__class__.__name__}); "
                            "start it with `lokal serve`, or use `lokal chat --serve`") from None
        if response.status_code >= 400:
            raise self._error(response)
        return response

    def models(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self._call("GET", "/v1/models").json()["data"]
        return data

    def stream(self, conversation: Conversation, temperature: float | None,
               max_tokens: int | None) -> Generator[str | dict[str, Any], None, None]:
        """The reply's text pieces, then its usage (a dict)."""
        body: dict[str, Any] = {"model": conversation.model, "stream": True,
                                "messages": conversation.request_messages(),
                                "stream_options": {"include_usage": True}}
        if temperature is not None:
            body["temperature"] = temperature
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        try:
            with self.http.stream("POST", "/v1/chat/completions", json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    raise self._error(response)
                for line in response.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line.removeprefix("data: "))
                    if "error" in event:
                        raise ChatError(event["error"]["message"])
                    for choice in event.get("choices", []):
                        text = choice.get("delta", {}).get("content")
                        if text:
                            yield text
                    if event.get("usage"):
                        yield event["usage"]
        except httpx.TransportError as exc:
            raise ChatError(f"the connection to {self.url} broke ({exc.__class__.__name__})") \
                from None


def _bindings() -> KeyBindings:
    keys = KeyBindings()

    @keys.add("enter")
    def _send(event: KeyPressEvent) -> None:
        event.current_buffer.validate_and_handle()

    @keys.add("escape", "enter")
    def _newline(event: KeyPressEvent) -> None:
        event.current_buffer.insert_text("\n")

    return keys


class TerminalChat:
    def __init__(self, client: LokalClient, model: str | None, console: Console,
                 history: Path | None = None, temperature: float | None = None,
                 max_tokens: int | None = None) -> None:
        self.client = client
        self.console = console
        self.conversation = Conversation(model or "")
        self.temperature = temperature
        self.max_tokens = max_tokens
        store: History = FileHistory(str(history)) if history is not None else InMemoryHistory()
        self.session: PromptSession[str] = PromptSession(history=store, multiline=True,
                                                         key_bindings=_bindings())

    def say(self, text: str, style: str = "dim") -> None:
        self.console.print(text, style=style, markup=False, highlight=False)

    def start(self) -> bool:
        """Checks the server and picks the model; False (after saying why) if it cannot."""
        try:
            models = self.client.models()
        except ChatError as exc:
            self.say(str(exc), "bold red")
            return False
        ids = [m["id"] for m in models]
        if not self.conversation.model:
            if not ids:
                self.say("the server has no model configured", "bold red")
                return False
            self.conversation.model = ids[0]
        elif self.conversation.model not in ids:
            self.say(f"model {self.conversation.model!r} is not served here; models: "
                     f"{', '.join(ids)}", "bold red")
            return False
        self.say(f"lokal at {self.client.url}, model {self.conversation.model}. /help for help.")
        return True

    def run(self) -> None:
        if not self.start():
            raise SystemExit(1)
        while True:
            try:
                text = self.session.prompt(f"{self.conversation.model}> ")
            except KeyboardInterrupt:
                continue
            except EOFError:
                return
            text = text.strip()
            if not text:
                continue
            if text.startswith("/"):
                if not self.command(text):
                    return
                continue
            self.reply(text)

    def reply(self, text: str) -> None:
        self.conversation.messages.append({"role": "user", "content": text})
        pieces: list[str] = []
        usage: dict[str, Any] | None = None
        stream = self.client.stream(self.conversation, self.temperature, self.max_tokens)
        try:
            for item in stream:
                if isinstance(item, str):
                    pieces.append(item)
                    self.console.out(item, end="", highlight=False)
                else:
                    usage = item
            self.console.out("")
        except KeyboardInterrupt:
            self.console.out("")
            self.say("[stopped]", "yellow")
        except ChatError as exc:
            self.console.out("")
            self.say(str(exc), "bold red")
            self.conversation.messages.pop()
            return
        finally:
            stream.close()  # closing the response cancels the request on the server
        self.conversation.messages.append({"role": "assistant", "content": "".join(pieces)})
        if usage is not None:
            self.say(f"[{usage['prompt_tokens']} prompt + {usage['completion_tokens']} "
                     "completion tokens]")

    def command(self, text: str) -> bool:
        """Runs a /command; False to leave."""
        name, _, arg = text.partition(" ")
        arg = arg.strip()
        if name in ("/exit", "/quit"):
            return False
        if name == "/help":
            self.say(HELP, "")
        elif name == "/model":
            self.switch_model(arg)
        elif name == "/system":
            self.conversation.system = arg or None
            self.say("system prompt set" if arg else "system prompt cleared")
        elif name == "/clear":
            self.conversation.messages.clear()
            self.say("new conversation")
        elif name in ("/save", "/load") and not arg:
            self.say(f"{name} needs a file name", "bold red")
        elif name == "/save":
            Path(arg).expanduser().write_text(self.conversation.to_json(), encoding="utf-8")
            self.say(f"saved {len(self.conversation.messages)} messages to {arg}")
        elif name == "/load":
            try:
                loaded = Conversation.from_json(Path(arg).expanduser().read_text("utf-8"))
            except (OSError, ValueError) as exc:
                self.say(f"cannot load {arg}: {exc}", "bold red")
            else:
                self.conversation = loaded
                self.say(f"loaded {len(loaded.messages)} messages (model {loaded.model})")
        else:
            self.say(f"unknown command {name}; /help lists them", "bold red")
        return True

    def switch_model(self, name: str) -> None:
        try:
            models = self.client.models()
        except ChatError as exc:
            self.say(str(exc), "bold red")
            return
        if not name:
            table = Table("model", "status", "context", box=None)
            for m in models:
                mark = " *" if m["id"] == self.conversation.model else ""
                table.add_row(m["id"] + mark, str(m.get("status", "")),
                              str(m.get("context_length", "")))
            self.console.print(table)
            return
        if name not in [m["id"] for m in models]:
            self.say(f"no model {name!r}; models: {', '.join(m['id'] for m in models)}",
                     "bold red")
            return
        self.conversation.model = name
        self.say(f"now chatting with {name}")
