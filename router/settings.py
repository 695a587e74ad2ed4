"""Router settings: environment (INFERLINE_ROUTER_*, REDIS_URL accepted too) or command-line flags."""
from __future__ import annotations

import os
import secrets
import socket
from typing import Annotated, Any

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from inferline.engine_store import NAME_PATTERN


def default_router_id() -> str:
    # Random part: a restarted router with the same pid must not read its predecessor's results stream.
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class RouterSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INFERLINE_ROUTER_", cli_kebab_case=True,
                                      cli_prog_name="python -m router")

    host: str = "0.0.0.0"
    port: int = Field(50052, ge=0, le=65535)
    metrics_port: int = Field(9401, ge=0, le=65535, description="Prometheus /metrics on host:metrics_port; 0 = off")
    redis_url: str = Field("redis://localhost:6379/0",
                           validation_alias=AliasChoices("redis_url", "INFERLINE_ROUTER_REDIS_URL", "REDIS_URL"))
    router_id: str = Field(default_factory=default_router_id)
    max_queue_depth: int = Field(1024, ge=1, description="per model: requests queued and not yet taken by a worker")
    max_queued_tokens: int = Field(1_000_000, ge=1, description="per model: prompt tokens of those requests")
    # Comma-separated engine names. An explicit list, never guessed from Redis: any other model without a
    # live worker stays NOT_FOUND, so a mistyped name still fails fast.
    scale_from_zero_models: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="models queued even while no worker serves them (an autoscaler starts one); "
                        "comma-separated engine names")
    cancel_ttl_s: int = Field(600, ge=1, description="how long a cancellation is kept; longer than requests "
                                                     "stay queued, or a late-taken cancelled request runs")
    idempotency_ttl_s: float = Field(600.0, gt=0, description="how long a finished request with a client-chosen "
                                                             "request_id is replayed to retries")
    idempotency_lease_s: float = Field(10.0, gt=0, description="a running idempotent request's claim lapses this "
                                                               "long after its router stopped renewing it (died)")
    results_block_ms: int = Field(1000, ge=1, description="how long the results reader blocks per XREAD")
    shutdown_grace_s: float = Field(10.0, ge=0, description="on SIGTERM, how long running calls may finish")
    log_level: str = "info"

    @field_validator("scale_from_zero_models", mode="before")
    @classmethod
    def _split_models(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, (list, tuple)):
            names = [str(v).strip() for v in value]
            return tuple(dict.fromkeys(n for n in names if n))  # dropping blanks and repeats, in order
        return value

    @field_validator("scale_from_zero_models")
    @classmethod
    def _engine_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not NAME_PATTERN.match(name):
                raise ValueError(f"{name!r} is not an engine name (must match {NAME_PATTERN.pattern})")
        return value
