"""Gateway settings: environment (INFERLINE_GATEWAY_*), overridden by command-line flags."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from engine.sampling_params import MAX_STOP_STRINGS


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INFERLINE_GATEWAY_", populate_by_name=True, extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=50051, ge=0, le=65535)  # 0 = any free port (tests)
    metrics_port: int = Field(default=9400, ge=0, le=65535)  # Prometheus /metrics on host:metrics_port; 0 = off
    router_address: str = "127.0.0.1:50052"
    # Requests are multiplexed over this many long-lived RouteMany calls to the router, in turn. More
    # make each call's batches smaller (2 measured slower than 1): they are for spreading one gateway
    # over several routers behind a balancer.
    router_streams: int = Field(default=1, ge=1, le=64)
    # Each of those calls sends at most one message per this many ms: under load the requests started
    # meanwhile share it (~2 per message at ~900 requests/s; each message costs a syscall here and a
    # read in the router), while a request after a pause goes at once. 0 = every request at once.
    router_write_interval_ms: float = Field(default=1.0, ge=0, le=100)
    # HTTP/2 pings on the router channel: a router that answers none within router_keepalive_timeout_s
    # (frozen, its host gone, a dropped connection) fails the requests on its RouteMany call with
    # UNAVAILABLE then, not at each request's deadline. The router accepts pings this often
    # (inferline/grpc/server.py). 0 = no pings.
    router_keepalive_s: float = Field(default=10.0, ge=0, le=3600)
    router_keepalive_timeout_s: float = Field(default=5.0, gt=0, le=600)
    # The engine store is the source of truth for what can be served: names, tokenizers, max_seq_len.
    store_dir: Path = Path("engines")
    # Optional: only used to count live workers per model in ListModels. The plain REDIS_URL that the
    # other services read is accepted too.
    redis_url: str | None = Field(default=None, validation_alias=AliasChoices(
        "INFERLINE_GATEWAY_REDIS_URL", "REDIS_URL", "redis_url"))

    max_tokens_limit: int = Field(default=4096, gt=0)
    # More than the engine accepts would only move the rejection to the worker.
    max_stop_strings: int = Field(default=MAX_STOP_STRINGS, ge=0, le=MAX_STOP_STRINGS)
    # UTF-8 bytes of the prompt (or of all chat contents), checked before tokenizing. The transport
    # limit is kept above it (see server.py), so it is this check, not the transport, that answers.
    max_prompt_bytes: int = Field(default=1 << 20, gt=0)

    # Comma-separated; empty = no authentication. Secret so it never shows up in a logged repr.
    api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = ()

    shutdown_grace_s: float = Field(default=30.0, ge=0)  # in-flight calls get this long after SIGTERM
    log_level: str = "info"
    log_json: bool = True

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(k.strip() for k in value.split(",") if k.strip())
        return value

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"
