"""ServerSettings: defaults < LOKAL_* environment < command-line flags."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from lokal.backends.spec import DEFAULT_CONFIG, ModelSpec

logger = logging.getLogger(__name__)


def _user_data_dir() -> Path:
    from platformdirs import user_data_dir

    return Path(user_data_dir("lokal"))


@dataclass(frozen=True, slots=True)
class SchemaLimits:
    """The largest JSON schema (serialized bytes, nesting depth) a request may constrain its
    output with; the grammar engine has its own limits on top."""

    max_bytes: int = 64 * 1024
    max_depth: int = 48
    max_items: int = 100_000


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOKAL_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    config: Annotated[list[Path], NoDecode] = Field(
        default_factory=list, description="model YAMLs (configs/*.yaml); comma-separated in env")
    model: Annotated[list[Path], NoDecode] = Field(
        default_factory=list, description="GGUF files to serve; comma-separated in env")
    models_dir: Path | None = Field(default=None, description="a folder whose *.yaml files are "
                                    "one model each, loaded on demand")
    memory_budget: str = Field(default="75%", description="bytes, a size (6GiB) or a share of "
                               "the RAM available at start (75%) that loaded models may hold")
    max_loaded: int | None = Field(default=None, ge=1, description="models loaded at once")
    load_timeout: float = Field(default=300.0, gt=0, description="seconds a request waits for "
                                "its model to load, or for room to load it")
    idle_unload: float = Field(default=0.0, ge=0, description="seconds idle before a model is "
                               "unloaded (0: never); a model's ttl overrides it")
    context_length: int | None = Field(default=None, ge=16,
                                       description="context per request, for --model")
    backend: Literal["auto", "llamacpp", "vllm"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    log_prompts: bool = Field(default=False, description="log prompt text (off: privacy)")
    api_key: SecretStr | None = Field(default=None, description="one or several keys, a,b,c")
    api_key_file: Path | None = Field(default=None, description="a file with one key a line")
    metrics_open: bool = Field(default=False, description="/metrics answers without a key")
    ui: bool = Field(default=True, description="serve the chat page at / to browsers")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="origins allowed by CORS; none: CORS off")
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    request_timeout: float = Field(default=600.0, ge=0,
                                   description="seconds per request; 0: no limit")
    shutdown_grace: int = Field(default=30, ge=0,
                                description="seconds running requests get after SIGTERM")
    max_schema_bytes: int = Field(default=64 * 1024, ge=256, description="largest JSON schema "
                                  "(serialized) a request may constrain its output with")
    max_schema_depth: int = Field(default=48, ge=4, description="deepest nesting of such a "
                                  "schema")
    max_schema_items: int = Field(default=100_000, ge=1, description="largest minItems or "
                                  "maxItems such a schema may ask for")
    max_headers: int = Field(default=100, ge=8, description="most HTTP headers in a request")
    max_header_bytes: int = Field(default=32 * 1024, ge=1024, description="most bytes of "
                                  "HTTP headers in a request")
    body_idle_timeout: float = Field(default=30.0, gt=0, description="seconds a request body "
                                     "may stall before 408")
    data_dir: Path = Field(default_factory=lambda: _user_data_dir(), description="where "
                           "lokal keeps its data (stored Responses); default: the user's data "
                           "directory")
    responses_max_stored: int = Field(default=10_000, ge=1, description="stored Responses kept; "
                                      "the oldest go first")
    responses_max_bytes: int = Field(default=1 << 30, ge=1 << 20, description="bytes stored "
                                     "Responses may take; the oldest go first")
    responses_max_chain: int = Field(default=1_000, ge=1, description="most earlier responses "
                                     "a previous_response_id may chain back through")

    @field_validator("cors_origins", "config", "model", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    def api_keys(self) -> tuple[str, ...]:
        """Every accepted key. A key file that is set but holds no key is an error: failing
        open would serve everyone when a mounted Secret is empty."""
        keys: list[str] = []
        if self.api_key is not None:
            keys += [k.strip() for k in self.api_key.get_secret_value().split(",") if k.strip()]
        if self.api_key_file is not None:
            lines = self.api_key_file.read_text(encoding="utf-8").splitlines()
            from_file = [k.strip() for k in lines if k.strip() and not k.startswith("#")]
            if not from_file:
                raise ValueError(f"the API key file {self.api_key_file} holds no key")
            keys += from_file
        return tuple(dict.fromkeys(keys))

    def model_specs(self) -> list[ModelSpec]:
        """Every configured model: the models dir's YAMLs (not preloaded unless they say so),
        then each --config and --model (preloaded unless they say not); with none of these,
        the bundled default model. --context-length applies to --model and --config."""
        specs: list[ModelSpec] = []
        if self.models_dir is not None:
            if not self.models_dir.is_dir():
                raise ValueError(f"models dir {self.models_dir} is not a folder")
            specs = self.models_dir_specs()
            if not specs:
                raise ValueError(f"models dir {self.models_dir} holds no *.yaml model file")
        named = [ModelSpec.from_yaml(path) for path in self.config]
        named += [ModelSpec.from_gguf_path(path, self.context_length) for path in self.model]
        if not specs and not named:
            named = [ModelSpec.from_yaml(DEFAULT_CONFIG)]
        if self.context_length is not None:
            named = [s.model_copy(update={"context_length": self.context_length}) for s in named]
        return specs + named

    def models_dir_specs(self, strict: bool = True) -> list[ModelSpec]:
        """The models dir's YAMLs now, one model each, not preloaded unless they say so.
        Not `strict`: a file that is not a valid model YAML is skipped (and logged)."""
        if self.models_dir is None or not self.models_dir.is_dir():
            return []
        specs = []
        for path in sorted(self.models_dir.glob("*.yaml")):
            try:
                spec = ModelSpec.from_yaml(path)
            except (ValueError, OSError, yaml.YAMLError) as exc:
                if strict:
                    raise
                logger.warning("skipping %s: %s", path, exc)
                continue
            specs.append(spec if spec.preload is not None
                         else spec.model_copy(update={"preload": False}))
        return specs

    def schema_limits(self) -> SchemaLimits:
        return SchemaLimits(self.max_schema_bytes, self.max_schema_depth, self.max_schema_items)

    def budgets(self, gpu_memory: int = 0) -> dict[str, int]:
        """Bytes loaded models may hold: host RAM from --memory-budget (a share of the RAM
        available now), and each GPU's memory as NVML reports it."""
        from lokal.backends.budget import available_ram, parse_size

        budgets = {"cpu": parse_size(self.memory_budget, available_ram())}
        if gpu_memory:
            budgets["gpu"] = gpu_memory
        return budgets
