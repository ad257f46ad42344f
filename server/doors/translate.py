"""What every door's translator builds the same way: sampling parameters over a protocol's
defaults, an output format as a Constraint, the tool plan (tools, tool_choice and the
constraint that enforces a call), and the schema limits."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from fastapi.responses import Response

from lokal.backends.base import Constraint, GenerationRequest, SamplingParams, Tool
from lokal.backends.tools import tool_call_schema
from lokal.server.errors import APIError
from lokal.server.settings import SchemaLimits

logger = logging.getLogger(__name__)
_TOKEN_ID = re.compile(r"-?[0-9]+")  # ASCII digits: str.isdigit() takes '²', which int() refuses
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's limit on the inputs of one request
# OpenAI's and Anthropic's defaults: temperature 1, top_p 1, no penalties (Ollama has its own)
DEFAULT_SAMPLING = SamplingParams()


def unsupported(param: str, why: str) -> APIError:
    return APIError(400, f"'{param}' is not supported: {why}", param=param,
                    code="unsupported_parameter")


def stops(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    return tuple(s for s in stops if s)


def logit_bias(raw: dict[str, float] | None) -> dict[int, float]:
    bias: dict[int, float] = {}
    for key, value in (raw or {}).items():
        if not _TOKEN_ID.fullmatch(key):
            raise APIError(400, f"Invalid 'logit_bias': key {key!r} is not a token id.",
                           param="logit_bias", code="invalid_value")
        if not -100 <= value <= 100:
            raise APIError(400, f"Invalid 'logit_bias': {value} for token {key} is outside "
                           "-100..100.", param="logit_bias", code="invalid_value")
        bias[int(key)] = float(value)
    return bias


def sampling(defaults: SamplingParams = DEFAULT_SAMPLING, *, temperature: float | None = None,
             top_p: float | None = None, top_k: int | None = None, min_p: float | None = None,
             seed: int | None = None, max_tokens: int | None = None,
             max_tokens_ceiling: bool | None = None, stop: str | list[str] | None = None,
             presence_penalty: float | None = None,
             frequency_penalty: float | None = None, repetition_penalty: float | None = None,
             logit_bias: Mapping[int, float] | None = None) -> SamplingParams:
    """The sampling a request asks for: what it sets, over its protocol's `defaults` for what
    it leaves out (None); empty stop strings are dropped."""
    given: dict[str, Any] = {
        "temperature": temperature, "top_p": top_p, "top_k": top_k, "min_p": min_p,
        "seed": seed, "max_tokens": max_tokens, "max_tokens_ceiling": max_tokens_ceiling,
        "presence_penalty": presence_penalty,
        "frequency_penalty": frequency_penalty, "repetition_penalty": repetition_penalty,
        "logit_bias": logit_bias, "stop": None if stop is None else stops(stop),
    }
    return replace(defaults, **{k: v for k, v in given.items() if v is not None})


@dataclass(frozen=True, slots=True)
class Translated:
    """A wire request as the engine's, and the tool plan it was built with (the engine's side
    reads calls from the request itself: backends.tool_calls.call_parsers)."""

    generation: GenerationRequest
    plan: ToolPlan


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """A request's tool choice in neutral terms: `auto`, `none`, `required` (some call), or
    `required` with `name` (that function)."""

    mode: Literal["auto", "none", "required"] = "auto"
    name: str | None = None


@dataclass(frozen=True, slots=True)
class ToolPlan:
    """What a request's tools become: the tools the prompt shows, the names a call may take,
    whether the whole output is calls (`forced`: tool_choice required or a named function),
    and the constraint that enforces them. Empty when there are no tools or the choice is
    `none`."""

    tools: tuple[Tool, ...] = ()
    names: frozenset[str] = frozenset()
    forced: bool = False
    constraint: Constraint | None = None
    left_out: tuple[str, ...] = ()
    """Hosted tools the request offered that lokal cannot run (web search, code interpreter,
    ...), by type: not shown to the model; the response names them (left_out_header)."""


def tool_plan(tools: Sequence[Tool], choice: ToolChoice | None, *,
              parallel: bool = True, param: str = "tools",
              choice_param: str = "tool_choice",
              schema_field: str = "function.parameters") -> ToolPlan:
    """The one place tools and tool_choice are checked and enforced, for every front door.
    `param`, `choice_param` and `schema_field` name the fields in the caller's protocol."""
    if choice is not None and not tools:
        raise APIError(400, f"'{choice_param}' is only allowed when '{param}' are specified.",
                       param=choice_param, code="invalid_value")
    if not tools or (choice is not None and choice.mode == "none"):
        return ToolPlan()
    names = [t.name for t in tools]
    if len(set(names)) != len(names):
        raise APIError(400, f"Invalid '{param}': function names must be unique.", param=param,
                       code="invalid_value")
    for i, tool in enumerate(tools):
        params = tool.parameters
        if params is not None and params.get("type", "object") != "object":
            where = f"{param}[{i}].{schema_field}"
            raise APIError(400, f"Invalid '{where}': must be a JSON schema of type object.",
                           param=where, code="invalid_value")
    if choice is not None and choice.name is not None and choice.name not in names:
        raise APIError(400, f"Invalid '{choice_param}': no tool named '{choice.name}' in "
                       f"'{param}'.", param=choice_param, code="invalid_value")
    forced = choice is not None and choice.mode == "required"
    if forced:
        assert choice is not None
        only = choice.name
        constraint = Constraint(kind="tool_calls", schema=tool_call_schema(
            list(tools), only=only, parallel=parallel and only is None))
    else:
        # Auto: the model may answer in text; a call it begins is held to its tool's schema.
        # Best effort unless a tool asks for strict enforcement.
        strict = any(t.strict for t in tools)
        constraint = Constraint(kind="tool_calls", schema=tool_call_schema(
            list(tools), parallel=False), lazy=True, names=frozenset(names),
            best_effort=not strict)
    return ToolPlan(tuple(tools), frozenset(names), forced, constraint)


def constraint_of(plan: ToolPlan, wants_format: bool, output: Callable[[], Constraint | None],
                  param: str, limits: SchemaLimits) -> Constraint | None:
    """The one constraint a request gets: its tools' (within the limits) or else its output
    format's (`output()`, built only then); asking for both is a 400 naming `param`."""
    if plan.names and wants_format:
        raise unsupported(param, "it cannot be enforced together with tools; send one or the "
                          "other")
    if plan.constraint is not None:
        return limited(plan.constraint, limits)
    return output()


def output_constraint(kind: Literal["json_object", "json_schema"], schema: Any, param: str,
                      limits: SchemaLimits) -> Constraint:
    """An output format as the engine's constraint: any JSON object, or `schema` once it is
    within the limits (a 400 naming `param` otherwise)."""
    if kind == "json_object":
        return Constraint(kind="json_object")
    check_schema(schema, param, limits)
    return Constraint(kind="json_schema", schema=schema)


def check_schema(schema: Any, param: str, limits: SchemaLimits) -> None:
    """400 naming the limit when `schema` is larger or deeper than `limits` allow, or asks
    for more array items than they allow (llguidance before 1.9, the one vLLM pins, builds
    arrays item by item: `minItems: 1e9` was 24 GB here)."""
    size = len(json.dumps(schema, separators=(",", ":")))
    if size > limits.max_bytes:
        raise APIError(400, f"Invalid '{param}': the JSON schema is {size} bytes, more than "
                       f"this server's limit of {limits.max_bytes} (LOKAL_MAX_SCHEMA_BYTES).",
                       param=param, code="schema_too_large")
    level = [schema]
    depth = 0
    while level:
        depth += 1
        if depth > limits.max_depth:
            raise APIError(400, f"Invalid '{param}': the JSON schema nests deeper than this "
                           f"server's limit of {limits.max_depth} levels "
                           "(LOKAL_MAX_SCHEMA_DEPTH).", param=param, code="schema_too_deep")
        for node in level:
            if not isinstance(node, dict):
                continue
            for keyword in ("minItems", "maxItems"):
                count = node.get(keyword)
                if isinstance(count, int) and count > limits.max_items:
                    raise APIError(400, f"Invalid '{param}': '{keyword}' is {count}, more than "
                                   f"this server's limit of {limits.max_items} array items "
                                   "(LOKAL_MAX_SCHEMA_ITEMS).", param=param,
                                   code="schema_too_large")
        level = [child for node in level
                 for child in (node.values() if isinstance(node, dict) else
                               node if isinstance(node, list) else ())]


def limited(constraint: Constraint | None, limits: SchemaLimits) -> Constraint | None:
    """`constraint` within the schema limits: a 400 when it is over them, except a best-effort
    tool constraint (tool_choice auto, nothing strict), which is then dropped: the request
    did not ask for enforcement and gets what it got before lazy calls existed."""
    if constraint is not None and constraint.schema is not None:
        param = "tools" if constraint.kind == "tool_calls" else "response_format"
        try:
            check_schema(constraint.schema, param, limits)
        except APIError:
            if constraint.best_effort:
                return None
            raise
    return constraint


LEFT_OUT_HEADER = "X-Lokal-Tools-Left-Out"


def left_out_header(plan: ToolPlan, response: Response, request_id: str) -> Response:
    """Names the hosted tools `plan` left out in a response header (and the log), so that a
    client sees its request succeeded without them."""
    if plan.left_out:
        response.headers[LEFT_OUT_HEADER] = ", ".join(plan.left_out)
        logger.info("request %s: hosted tools left out (lokal cannot run them): %s",
                    request_id, ", ".join(plan.left_out))
    return response
