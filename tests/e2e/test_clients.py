"""Real clients that no one here wrote: langchain-openai and simonw's `llm` CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
from pydantic import BaseModel, Field

from tests.conftest import MODEL, Server


class Person(BaseModel):
    name: str = Field(max_length=24)
    age: int
    pet: str = Field(json_schema_extra={"enum": ["cat", "dog", "none"]})


def _chat(server: Server, **kwargs: object) -> object:
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(model=MODEL, base_url=server.v1, api_key="unused",  # type: ignore[arg-type]
                      max_retries=0, timeout=300, **kwargs)


def test_langchain_bind_tools_required(server: Server) -> None:
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str) -> str:
        """Current weather for a city."""
        return "sunny"

    llm = _chat(server, max_tokens=80, temperature=0)
    # strict: the schema closed (additionalProperties false), as OpenAI's strict mode has it; an
    # open one lets a 135M model add made-up keys past any token budget.
    bound = llm.bind_tools([get_weather], tool_choice="get_weather",  # type: ignore[attr-defined]
                           strict=True)
    message = bound.invoke("What is the weather in Paris?")
    assert message.tool_calls, message
    call = message.tool_calls[0]
    assert call["name"] == "get_weather"
    assert isinstance(call["args"].get("city"), str)


def test_langchain_bind_tools_required_open_schema(server: Server) -> None:
    """The same without strict, as LangChain sends tools by default (no additionalProperties):
    lokal closes the object, so the call finishes within the budget."""
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str) -> str:
        """Current weather for a city."""
        return "sunny"

    llm = _chat(server, max_tokens=80, temperature=0)
    bound = llm.bind_tools([get_weather], tool_choice="get_weather")  # type: ignore[attr-defined]
    message = bound.invoke("What is the weather in Paris?")
    assert message.tool_calls, message
    call = message.tool_calls[0]
    assert call["name"] == "get_weather"
    assert set(call["args"]) == {"city"} and isinstance(call["args"]["city"], str)


def test_langchain_with_structured_output_open_schema(server: Server) -> None:
    llm = _chat(server, max_tokens=80, temperature=0)
    for method in ("json_schema", "function_calling"):
        structured = llm.with_structured_output(Person, method=method)  # type: ignore[attr-defined]
        person = structured.invoke("Describe a person.")
        assert isinstance(person, Person), (method, person)
        jsonschema.validate(person.model_dump(), Person.model_json_schema())


def test_langchain_with_structured_output(server: Server) -> None:
    llm = _chat(server, max_tokens=80, temperature=0)
    for method in ("json_schema", "function_calling"):
        structured = llm.with_structured_output(Person, method=method,  # type: ignore[attr-defined]
                                                strict=True)
        person = structured.invoke("Describe a person.")
        assert isinstance(person, Person), (method, person)
        jsonschema.validate(person.model_dump(), Person.model_json_schema())


def test_langchain_streaming_chat(server: Server) -> None:
    llm = _chat(server, max_tokens=12, temperature=0)
    pieces = [chunk.content for chunk in llm.stream("Say hello.")]  # type: ignore[attr-defined]
    whole = llm.invoke("Say hello.")  # type: ignore[attr-defined]
    assert "".join(str(p) for p in pieces) == whole.content


def test_llm_cli_with_extra_openai_models(server: Server, tmp_path: Path) -> None:
    (tmp_path / "extra-openai-models.yaml").write_text(json.dumps([
        {"model_id": "lokal-smol", "model_name": MODEL, "api_base": server.v1},
    ]))
    env = {**os.environ, "LLM_USER_PATH": str(tmp_path), "OPENAI_API_KEY": "unused"}
    llm_cli = [sys.executable, "-c", "from llm.cli import cli; cli()"]
    out = subprocess.run([*llm_cli, "-m", "lokal-smol", "-o", "max_tokens", "8",
                          "-o", "temperature", "0", "Say hello."],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()
    again = subprocess.run([*llm_cli, "-m", "lokal-smol", "--no-stream", "-o", "max_tokens", "8",
                            "-o", "temperature", "0", "Say hello."],
                           capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == out.stdout.strip()
