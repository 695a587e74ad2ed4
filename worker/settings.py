"""Worker settings: environment (INFERLINE_WORKER_*, REDIS_URL accepted too) or command-line flags."""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INFERLINE_WORKER_", cli_kebab_case=True,
                                      cli_prog_name="python -m worker")

    redis_url: str = Field("redis://localhost:6379/0",
                           validation_alias=AliasChoices("redis_url", "INFERLINE_WORKER_REDIS_URL", "REDIS_URL"))
    engine: str = Field(description="engine name in the store; requests are read from this model's stream")
    store_dir: Path = Field(Path("engines"), description="the engine store's root directory")
    model_path: Path | None = Field(None, description="dev/test only: serve this model folder (or bundled "
                                                      "model name) without a store; --engine names the stream")
    engine_kind: Literal["model", "synthetic-benchmark-only"] = Field(
        "model", description="model: serve the engine. synthetic-benchmark-only: BENCHMARKS ONLY, load no model "
                             "and answer with synthetic tokens (control-plane load tests); logged as a warning")
    synthetic_engine_step_ms: float = Field(2.0, ge=0, description="synthetic-benchmark-only: the cost of one "
                                                                   "engine step (every running request gets a token)")
    device: str | None = Field(None, description="cpu, cuda or cuda:N; default cuda when available")
    dtype: str | None = Field(None, description="override the manifest's dtype")
    max_batch_size: int | None = Field(None, ge=1, description="override the manifest's max_batch_size")
    max_seq_len: int | None = Field(None, ge=2, description="override the manifest's max_seq_len")
    kv_cache_dtype: str = Field("auto", description="KV cache dtype: auto (the model's dtype) or fp8 (e4m3, half "
                                                    "the bytes per token: twice the KV blocks; CUDA sm_89+)")
    async_scheduling: bool | None = Field(None, description="launch each engine step before the previous one's "
                                                             "tokens are read back; default on for CUDA, off for CPU")
    worker_id: str = Field(default_factory=default_worker_id)
    metrics_port: int = Field(9402, ge=0, le=65535, description="Prometheus /metrics on 0.0.0.0:metrics_port; 0 = off")
    health_port: int = Field(50054, ge=0, le=65535, description="grpc.health.v1 (liveness, readiness; worker/health.py) "
                                                                "on 0.0.0.0:health_port; 0 = a free port (logged)")
    liveness_timeout_s: float = Field(60.0, gt=0, description="liveness is NOT_SERVING once the step loop has not "
                                                              "completed an iteration (a stuck engine step included) "
                                                              "for this long")
    readiness_interval_s: float = Field(5.0, gt=0, description="how often the step loop puts a one-token readiness "
                                                               "probe through the engine")
    readiness_timeout_s: float = Field(10.0, gt=0, description="readiness is SERVING only if the last probe produced "
                                                               "its token within this; a probe outstanding longer "
                                                               "turns it NOT_SERVING at once")
    heartbeat_interval_s: float = Field(1.0, gt=0)
    heartbeat_ttl_s: float = Field(5.0, gt=0, description="a worker silent this long is dead; its requests "
                                                          "are taken over by others")
    max_deliveries: int = Field(3, ge=1, description="a request taken over after its worker died is run by at "
                                                     "most this many workers in all, then fails with INTERNAL")
    kv_low_watermark: float = Field(0.02, ge=0, lt=1, description="take no new request while the free share "
                                                                  "of KV blocks is below this")
    idle_block_ms: int = Field(100, ge=1, description="how long an idle worker blocks reading its stream")
    band_max_wait_s: float = Field(30.0, ge=0, description="a queued request waiting longer than this is taken "
                                                           "before any newer one, whatever its priority band, so "
                                                           "HIGH traffic cannot starve NORMAL and LOW; 0 = strict "
                                                           "bands")
    drain_timeout_s: float = Field(30.0, ge=0, description="on SIGTERM, how long running requests may finish")
    results_maxlen: int = Field(100_000, ge=1000, description="approximate cap of a router's results stream")
    results_ttl_s: int = Field(3600, ge=60, description="a results stream nobody writes to expires after this")
    log_level: str = "info"

    @model_validator(mode="after")
    def _heartbeat_outlives_its_interval(self) -> "WorkerSettings":
        # Entries are re-claimed every heartbeat; if the expiry were shorter, live workers' requests
        # would be taken over while they run.
        if self.heartbeat_ttl_s < 2 * self.heartbeat_interval_s:
            raise ValueError(f"heartbeat_ttl_s ({self.heartbeat_ttl_s}) must be at least twice "
                             f"heartbeat_interval_s ({self.heartbeat_interval_s})")
        return self

    @model_validator(mode="after")
    def _liveness_outlives_an_idle_iteration(self) -> "WorkerSettings":
        # An idle loop blocks idle_block_ms per iteration reading its stream: that is not a stall.
        if self.liveness_timeout_s < 2 * self.idle_block_ms / 1000:
            raise ValueError(f"liveness_timeout_s ({self.liveness_timeout_s}) must be at least twice "
                             f"idle_block_ms ({self.idle_block_ms} ms)")
        return self

    @property
    def autoclaim_min_idle_ms(self) -> int:
        return int(self.heartbeat_ttl_s * 1000)
