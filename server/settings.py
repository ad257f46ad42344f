"""ServerSettings: defaults < LOKAL_* environment < command-line flags."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from backends.spec import DEFAULT_CONFIG, ModelSpec


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOKAL_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    config: Path | None = Field(default=None, description="model YAML (configs/*.yaml)")
    model: Path | None = Field(default=None, description="a GGUF file to serve instead")
    context_length: int | None = Field(default=None, ge=16,
                                       description="context per request, for --model")
    backend: Literal["auto", "llamacpp", "vllm"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    log_prompts: bool = Field(default=False, description="log prompt text (off: privacy)")
    api_key: SecretStr | None = Field(default=None, description="one or several keys, a,b,c")
    api_key_file: Path | None = Field(default=None, description="a file with one key a line")
    metrics_open: bool = Field(default=False, description="/metrics answers without a key")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="origins allowed by CORS; none: CORS off")
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    request_timeout: float = Field(default=600.0, ge=0,
                                   description="seconds per request; 0: no limit")
    shutdown_grace: int = Field(default=30, ge=0,
                                description="seconds running requests get after SIGTERM")

    @field_validator("cors_origins", mode="before")
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
        if self.model is not None and self.config is not None:
            raise ValueError("give either a model file (--model) or a config (--config), not both")
        if self.model is not None:
            return [ModelSpec.from_gguf_path(self.model, self.context_length)]
        spec = ModelSpec.from_yaml(self.config or DEFAULT_CONFIG)
        if self.context_length is not None:
            spec = spec.model_copy(update={"context_length": self.context_length})
        return [spec]
