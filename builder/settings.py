"""The builder's settings: flags > environment (INFERLINE_BUILDER_*) > defaults, all validated when
the service starts, so a bad value stops it with a message instead of failing the first build.

`python -m builder --help` lists the flags (pydantic-settings' CLI, kebab-case); builder/README.md
has the table. Only __main__ parses flags: constructing BuilderSettings() elsewhere (tests) reads
the environment and keyword arguments only.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from builder.quantize.calibration import CalibrationSettings
from builder.quantize.settings import EvalSettings, QuantizeSettings

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


class BuilderSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="INFERLINE_BUILDER_",
        populate_by_name=True,  # BuilderSettings(redis_url=...) works despite the env aliases
        cli_kebab_case=True,
        cli_prog_name="python -m builder",
        extra="forbid",
    )

    host: str = Field("127.0.0.1", min_length=1,
                      description="Address to listen on (0.0.0.0 or [::] to accept other hosts, e.g. in a container).")
    port: int = Field(50053, ge=0, le=65535, description="gRPC port; 0 picks a free one (logged at start).")
    metrics_port: int = Field(9403, ge=0, le=65535, description="Prometheus /metrics on host:metrics_port; 0 = off.")
    redis_url: str = Field(
        "redis://localhost:6379/0",
        # INFERLINE_BUILDER_REDIS_URL wins over the REDIS_URL every service reads.
        validation_alias=AliasChoices("INFERLINE_BUILDER_REDIS_URL", "REDIS_URL"),
        description="Redis for the engine registry (redis://, rediss:// or unix://).")
    store_dir: Path = Field(Path("engines"), description="The engine store directory (created if missing).")
    allowed_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Directories a source path may be under (symlinks resolved), comma-separated or a JSON list. "
                    "Bundled model names are always allowed; empty = bundled models only.")
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?)$",
                        description="Where quantized builds calibrate and score the model: cpu, cuda or cuda:N.")
    calibration_samples: int = Field(32, ge=1, description="Calibration sequences (awq, gptq, smoothquant).")
    calibration_seq_len: int = Field(256, ge=16, description="Tokens per calibration sequence.")
    eval_window: int = Field(512, ge=16, description="Tokens per perplexity window of the quality report.")
    eval_windows: int = Field(16, ge=1, description="Most perplexity windows scored (held-out text permitting).")
    eval_greedy_tokens: int = Field(32, ge=1, description="Greedy tokens per prompt for the agreement score.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level of the JSON log.")

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, url: str) -> str:
        if not url.startswith(REDIS_SCHEMES):
            raise ValueError(f"must start with one of {', '.join(REDIS_SCHEMES)}, got {url!r}")
        return url

    @field_validator("store_dir")
    @classmethod
    def _store_dir(cls, path: Path) -> Path:
        path = path.expanduser().resolve()
        if path.exists() and not path.is_dir():
            raise ValueError(f"{path} exists and is not a directory")
        return path

    @field_validator("allowed_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: Any) -> Any:
        # Environment (and repeated flags, which the CLI joins with commas) arrive as one string.
        if isinstance(value, str):
            value = value.strip()
            return json.loads(value) if value.startswith("[") else [p.strip() for p in value.split(",") if p.strip()]
        return value

    @field_validator("allowed_roots")
    @classmethod
    def _roots_exist(cls, roots: list[Path]) -> list[Path]:
        # Resolved once here, so the per-build check compares real paths with real paths.
        resolved = [root.expanduser().resolve() for root in roots]
        missing = [str(r) for r in resolved if not r.is_dir()]
        if missing:
            raise ValueError(f"not existing directories: {', '.join(missing)}")
        return resolved

    @property
    def quantize(self) -> QuantizeSettings:
        return QuantizeSettings(
            device=self.device,
            calibration=CalibrationSettings(num_samples=self.calibration_samples, seq_len=self.calibration_seq_len),
            evaluation=EvalSettings(window=self.eval_window, max_windows=self.eval_windows,
                                    greedy_tokens=self.eval_greedy_tokens))

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"
