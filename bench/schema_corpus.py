"""Which JSON schemas that users' tools really emit lokal's llama.cpp engine enforces, refuses
(a 400 that names the keyword or the limit) or fails on. Each schema goes through what a request
goes through: the size and depth limits, then llguidance compiled over SmolLM2's vocabulary and
its first mask; `--generate N` also samples N constrained outputs per enforced schema and checks
them with `jsonschema`.

Corpora (all from package registries, nothing hand-picked to pass):
- pydantic: Pydantic v2 models with bounds, Optional, $defs/$ref, enums, Literal, formats,
  unions, recursion, dicts and tuples (`model_json_schema()`), written below;
- openai-strict: the same models through openai-python's `to_strict_json_schema` (what
  `client.beta.chat.completions.parse` sends: additionalProperties false, all required);
- langchain-tools: function-calling parameter schemas made by langchain-core's
  `convert_to_openai_tool` from typed Python functions and Pydantic tools;
- zod: schemas from zod-to-json-schema (npm; needs node, made in bench/.cache/zod);
- schemastore: the SchemaStore schemas vendored in PyPI's check-jsonschema (CI configs,
  compose files, GitHub workflows: large real-world schemas).

With `--generate N` each enforced schema gets N outputs (greedy by default, `max_tokens` 256 as
issue 23 measures), sorted into valid, invalid (must stay 0) and cut by max_tokens; each cut one
is run again at `--rerun-tokens` (1024) and counted as longer (it then finished) or rambling
(still cut: the text it was stuck in, a string, an array, a number or an object's keys, is
named). `--lokal-ref REF` measures an older commit's code (exported under bench/.cache).

    .venv/bin/python bench/schema_corpus.py [--generate 1] [--lokal-ref HEAD~1]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
import uuid
from collections import Counter
from enum import StrEnum
from typing import Annotated, Any, Literal

from harness import (
    CACHE_DIR,
    OUT_DIR,
    REPO,
    VENV_PYTHON,
    export_lokal,
    git,
    import_root,
    machine_facts,
)
from pydantic import BaseModel, Field, HttpUrl

_REF = next((sys.argv[i + 1] for i, a in enumerate(sys.argv[:-1]) if a == "--lokal-ref"), None)
LOKAL_DIR = export_lokal(_REF) if _REF else REPO
sys.path.insert(0, str(import_root(LOKAL_DIR)))

# --- pydantic models ------------------------------------------------------------------------


class Color(StrEnum):
    red = "red"
    green = "green"


class Address(BaseModel):
    street: str = Field(min_length=1, max_length=80)
    zip_code: str = Field(pattern=r"^[0-9]{5}$")


class Person(BaseModel):
    name: str
    age: int = Field(ge=0, le=150)
    email: str | None = None
    address: Address
    tags: list[str] = Field(default_factory=list, max_length=5)


class Verdict(BaseModel):
    label: Literal["yes", "no", "unsure"]
    confidence: float = Field(ge=0, le=1)


class Measurement(BaseModel):
    value: float = Field(gt=0, multiple_of=0.5)
    unit: Color
    taken: dt.datetime
    day: dt.date
    id: uuid.UUID


class Link(BaseModel):
    url: HttpUrl
    title: Annotated[str, Field(max_length=100)]


class Tree(BaseModel):
    name: str
    children: list[Tree] = Field(default_factory=list)


class Cat(BaseModel):
    kind: Literal["cat"]
    lives: int = Field(ge=1, le=9)


class Dog(BaseModel):
    kind: Literal["dog"]
    good: bool


class Pet(BaseModel):
    pet: Cat | Dog = Field(discriminator="kind")


class Inventory(BaseModel):
    counts: dict[str, int]
    pair: tuple[int, str]
    scores: list[Annotated[int, Field(ge=0, le=100)]] = Field(min_length=1)


class Order(BaseModel):
    customer: Person
    items: list[Inventory]
    note: str | None = Field(default=None, max_length=200)
    status: Literal["new", "paid", "shipped"] = "new"


class Event(BaseModel):
    title: str
    start: dt.datetime
    end: dt.datetime | None = None
    attendees: list[Annotated[str, Field(pattern=r"^[^@]+@[^@]+$")]] = []


MODELS: list[type[BaseModel]] = [Address, Person, Verdict, Measurement, Link, Tree, Pet,
                                 Inventory, Order, Event]


def pydantic_corpus() -> dict[str, Any]:
    return {m.__name__: m.model_json_schema() for m in MODELS}


def openai_strict_corpus() -> dict[str, Any]:
    from openai.lib._pydantic import to_strict_json_schema

    out: dict[str, Any] = {}
    for m in MODELS:
        try:
            out[m.__name__] = to_strict_json_schema(m)
        except Exception as exc:  # openai-python refuses some models itself
            out[m.__name__] = {"__skip__": f"openai-python refused it: {exc}"}
    return out


def get_weather(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius") -> str:
    """Current weather for a city.

    Args:
        city: the city name
        unit: the temperature unit
    """
    return city


def search(query: str, max_results: int = 5, site: str | None = None) -> list[str]:
    """Search the web.

    Args:
        query: what to search for
        max_results: how many results
        site: restrict to this site
    """
    return [query]


def schedule(title: str, when: dt.datetime, attendees: list[str], reminders: list[int]) -> str:
    """Schedule a meeting.

    Args:
        title: meeting title
        when: start time
        attendees: e-mail addresses
        reminders: minutes before
    """
    return title


def langchain_corpus() -> dict[str, Any]:
    from langchain_core.utils.function_calling import convert_to_openai_tool

    out = {}
    for tool in (get_weather, search, schedule, Person, Order, Pet):
        spec = convert_to_openai_tool(tool)
        out[spec["function"]["name"]] = spec["function"]["parameters"]
    return out


ZOD_SCRIPT = """
const { z } = require("zod");
const { zodToJsonSchema } = require("zod-to-json-schema");
const schemas = {
  user: z.object({ name: z.string().min(1).max(50), email: z.string().email(),
                   age: z.number().int().min(0).max(120).optional() }),
  todo: z.object({ title: z.string(), done: z.boolean(), due: z.string().datetime().nullable(),
                   priority: z.enum(["low", "mid", "high"]) }),
  search: z.object({ query: z.string(), limit: z.number().int().positive().max(50),
                     filters: z.array(z.object({ field: z.string(), value: z.string() })) }),
  union: z.object({ result: z.union([z.object({ ok: z.literal(true), data: z.string() }),
                                     z.object({ ok: z.literal(false), error: z.string() })]) }),
  record: z.object({ scores: z.record(z.number().min(0)), tags: z.set(z.string()) }),
  url: z.object({ link: z.string().url(), id: z.string().uuid(), ip: z.string().ip() }),
  tuple: z.object({ point: z.tuple([z.number(), z.number()]),
                    label: z.string().regex(/^[A-Z]+$/) }),
  nested: z.object({ a: z.object({ b: z.object({ c: z.array(z.number().multipleOf(5)) }) }) }),
};
const out = {};
for (const [k, v] of Object.entries(schemas)) out[k] = zodToJsonSchema(v);
console.log(JSON.stringify(out));
"""


def zod_corpus() -> dict[str, Any]:
    folder = CACHE_DIR / "zod"
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "node_modules" / "zod-to-json-schema").is_dir():
        subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund",
                        "zod@3.23.8", "zod-to-json-schema@3.23.5"], cwd=folder, check=True,
                       timeout=600, capture_output=True)
    (folder / "emit.js").write_text(ZOD_SCRIPT)
    done = subprocess.run(["node", "emit.js"], cwd=folder, capture_output=True, text=True,
                          timeout=120, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def schemastore_corpus() -> dict[str, Any]:
    folder = CACHE_DIR / "check-jsonschema"
    vendor = next(folder.glob("check_jsonschema/builtin_schemas/vendor"), None) \
        if folder.is_dir() else None
    if vendor is None:
        subprocess.run([str(VENV_PYTHON), "-m", "pip", "download", "--no-deps", "--quiet",
                        "check-jsonschema==0.37.0", "-d", str(folder)], check=True, timeout=600)
        wheel = next(folder.glob("*.whl"))
        import zipfile

        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(folder)
        vendor = folder / "check_jsonschema" / "builtin_schemas" / "vendor"
    return {p.stem: json.loads(p.read_text()) for p in sorted(vendor.glob("*.json"))}


# --- classification -----------------------------------------------------------------------

def classify(guidance: Any, schema: Any) -> tuple[str, str]:
    from lokal.backends.base import Constraint
    from lokal.backends.errors import InvalidParameter
    from lokal.server.doors.translate import check_schema
    from lokal.server.errors import APIError
    from lokal.server.settings import SchemaLimits

    if isinstance(schema, dict) and "__skip__" in schema:
        return "skipped", schema["__skip__"]
    try:
        check_schema(schema, "response_format", SchemaLimits())
        guidance.matchers(Constraint("json_schema", schema=schema), 1)
    except APIError as exc:
        return "refused", exc.message
    except InvalidParameter as exc:
        return "refused", exc.message
    except Exception as exc:
        return "fails", f"{type(exc).__name__}: {exc}"
    return "enforced", ""


async def _output(engine: Any, schema: Any, seed: int, temperature: float,
                  max_tokens: int) -> tuple[str, str | None]:
    """One constrained output: its text and finish reason."""
    from lokal.backends.base import (
        ChatMessage,
        ChatPrompt,
        Constraint,
        GenerationRequest,
        SamplingParams,
    )

    request = GenerationRequest(
        f"g{seed}", ChatPrompt((ChatMessage("user", "Fill this in as JSON."),)),
        SamplingParams(temperature=temperature, seed=seed, max_tokens=max_tokens),
        constraint=Constraint("json_schema", schema=schema))
    parts, finish = [], None
    async for chunk in engine.generate(request):
        parts.append(chunk.text)
        finish = chunk.finish_reason or finish
    return "".join(parts), finish


def stuck_in(text: str) -> str:
    """What an unfinished JSON text was in when it was cut: a string value, an array, a number,
    or an object's keys (inventing keys, or cut inside one)."""
    stack: list[str] = []  # "{" expecting a key, ":" in a value of an object, "["
    in_string = escaped = key = False
    last = ""
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string, key = True, bool(stack) and stack[-1] == "{"
        elif ch in "{[":
            stack.append(ch)
        elif ch in "}]" and stack:
            stack.pop()
        elif ch == ":" and stack and stack[-1] == "{":
            stack[-1] = ":"
        elif ch == "," and stack and stack[-1] == ":":
            stack[-1] = "{"
        if not ch.isspace():
            last = ch
    if in_string:
        return "keys" if key else "string"
    if last.isdigit() or last in ".-eE":
        return "number"
    return "array" if stack and stack[-1] == "[" else "keys"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generate", type=int, default=0,
                        help="constrained outputs to sample and validate per enforced schema")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--rerun-tokens", type=int, default=1024)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    parser.add_argument("--lokal-ref", help="measure this commit's code instead of the tree")
    args = parser.parse_args()
    import asyncio

    import jsonschema

    from lokal.backends.llamacpp.backend import LlamaCppBackend
    from lokal.backends.spec import ModelSpec

    config = LOKAL_DIR / "configs" / "smollm2-135m-instruct.yaml"
    spec = ModelSpec.from_yaml(config).model_copy(update={"context_length": 2048})
    engine = LlamaCppBackend(spec, reason="bench")
    asyncio.run(engine.start())
    guidance = engine._guidance
    corpora = {"pydantic": pydantic_corpus, "openai-strict": openai_strict_corpus,
               "langchain-tools": langchain_corpus, "zod": zod_corpus,
               "schemastore": schemastore_corpus}
    rows = []
    details = []
    totals: Counter[str] = Counter()
    for name, make in corpora.items():
        try:
            schemas = make()
        except Exception as exc:
            rows.append(f"| {name} | could not be built: {exc} | | | | | | | | |")
            continue
        counts: Counter[str] = Counter()
        began = time.perf_counter()
        for key, schema in schemas.items():
            verdict, why = classify(guidance, schema)
            counts[verdict] += 1
            print(f"{name}/{key}: {verdict}", file=sys.stderr, flush=True)
            if why:
                details.append(f"- {name}/{key}: {verdict}: {why[:160]}")
            if verdict != "enforced":
                continue
            for seed in range(args.generate):
                text, finish = asyncio.run(_output(engine, schema, seed, args.temperature,
                                                   args.max_tokens))
                if finish != "stop":
                    counts["cut"] += 1
                    again, again_finish = asyncio.run(_output(
                        engine, schema, seed, args.temperature, args.rerun_tokens))
                    if again_finish == "stop":
                        counts["longer"] += 1
                        details.append(f"- {name}/{key}: cut at {args.max_tokens}, finished "
                                       f"within {args.rerun_tokens}")
                        text = again
                    else:
                        where = stuck_in(again)
                        counts[f"rambling in {where}"] += 1
                        details.append(f"- {name}/{key}: cut, still cut at "
                                       f"{args.rerun_tokens}: rambling in {where}: "
                                       f"...{again[-80:]!r}")
                        continue
                try:
                    jsonschema.validate(json.loads(text), schema)
                    counts["valid" if finish == "stop" else "valid-at-rerun"] += 1
                except (ValueError, jsonschema.ValidationError) as exc:
                    counts["invalid"] += 1
                    details.append(f"- {name}/{key}: OUTPUT INVALID: {exc!s:.120}")
        took = time.perf_counter() - began
        totals.update(counts)
        rambling = ", ".join(f"{k[len('rambling in '):]} {v}" for k, v in sorted(counts.items())
                             if k.startswith("rambling in ")) or "-"
        rows.append(f"| {name} | {len(schemas)} | {counts['enforced']} | {counts['refused']} "
                    f"| {counts['fails']} | {counts['valid']} | {counts['invalid']} "
                    f"| {counts['cut']} | {counts['longer']} | {rambling} | {took:.1f} |")
    outputs = totals["enforced"] * args.generate
    summary = (f"{totals['cut']} of {outputs} outputs cut at {args.max_tokens} tokens "
               f"({100 * totals['cut'] / outputs:.0f}%), {totals['valid']} valid, "
               f"{totals['invalid']} invalid" if outputs else "no outputs sampled")
    asyncio.run(engine.stop())
    code = f"commit {git('rev-parse', '--short', _REF)}" if _REF else \
        f"work tree at {git('rev-parse', '--short', 'HEAD')}"
    how = "greedy" if args.temperature == 0 else f"temperature {args.temperature}"
    text = "\n".join([
        f"lokal {code}, {machine_facts()['date']}, SmolLM2 vocabulary, llguidance "
        + __import__("llguidance").__version__ + f", {args.generate} output(s) per enforced "
        f"schema, {how}, max_tokens {args.max_tokens} (cut ones rerun at {args.rerun_tokens})",
        "", "| corpus | schemas | enforced | refused (400) | fails | valid | invalid | cut "
        "| of the cut: longer | of the cut: rambling in | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|", *rows, "", summary, "",
        "What was refused, failed or cut, and why:", "", *details])
    print(text)
    out = OUT_DIR / f"schemas-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
