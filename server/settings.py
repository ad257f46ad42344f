"""ServerSettings: defaults < LOKAL_* environment < command-line flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

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

    def model_specs(self) -> list[ModelSpec]:
        if self.model is not None and self.config is not None:
            raise ValueError("give either a model file (--model) or a config (--config), not both")
        if self.model is not None:
            return [ModelSpec.from_gguf_path(self.model, self.context_length)]
        spec = ModelSpec.from_yaml(self.config or DEFAULT_CONFIG)
        if self.context_length is not None:
            spec = spec.model_copy(update={"context_length": self.context_length})
        return [spec]
