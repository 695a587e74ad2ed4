"""Load the engine the worker serves: verified from the engine store (every file's sha256), or, for
development and tests, a plain model folder given with --model-path; or, for control-plane benchmarks
only, a synthetic engine that runs no model (--engine-kind synthetic-benchmark-only)."""
from __future__ import annotations

import structlog
import torch

from engine import Engine, EngineConfig, InvalidParameterError
from inferline.engine_store import EngineStore, EngineStoreError
from worker.settings import WorkerSettings
from worker.synthetic_engine import ENGINE_KIND, SyntheticEngine, SyntheticEngineConfig

log = structlog.get_logger(__name__)


class EngineUnavailableError(Exception):
    """The engine cannot be served (missing, corrupt, or refused by the engine); the message says why."""


def engine_config(settings: WorkerSettings) -> EngineConfig:
    device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if settings.model_path is not None:
        # Dev/test: no manifest, so the batch and sequence limits come from the settings (or the engine's defaults).
        overrides = {k: v for k, v in (("max_batch_size", settings.max_batch_size), ("max_seq_len", settings.max_seq_len))
                     if v is not None}
        return EngineConfig(model=str(settings.model_path), device=device, dtype=settings.dtype,
                            kv_cache_dtype=settings.kv_cache_dtype, async_scheduling=settings.async_scheduling,
                            **overrides)
    if not settings.store_dir.is_dir():
        raise EngineUnavailableError(f"engine store {str(settings.store_dir)!r} does not exist")
    store = EngineStore(settings.store_dir)
    try:
        manifest = store.verify(settings.engine)
        folder = store.path(settings.engine)
    except (EngineStoreError, ValueError) as e:  # ValueError: not a valid engine name
        raise EngineUnavailableError(str(e)) from e
    log.info("engine_verified", engine=settings.engine, fingerprint=manifest.fingerprint, files=len(manifest.files))
    return EngineConfig(model=str(folder), device=device, dtype=settings.dtype or manifest.dtype,
                        max_batch_size=settings.max_batch_size or manifest.max_batch_size,
                        max_seq_len=settings.max_seq_len or manifest.max_seq_len,
                        kv_cache_dtype=settings.kv_cache_dtype, async_scheduling=settings.async_scheduling)


def load_engine(settings: WorkerSettings) -> Engine | SyntheticEngine:
    if settings.engine_kind == ENGINE_KIND:
        return synthetic_engine(settings)
    try:
        return Engine(engine_config(settings))
    except InvalidParameterError as e:  # also ModelNotFoundError / UnsupportedModelError
        raise EngineUnavailableError(str(e)) from e


def synthetic_engine(settings: WorkerSettings) -> SyntheticEngine:
    """BENCHMARKS ONLY: no model, no store; batch and sequence limits from the settings or defaults."""
    overrides = {k: v for k, v in (("max_batch_size", settings.max_batch_size), ("max_seq_len", settings.max_seq_len))
                 if v is not None}
    try:
        config = SyntheticEngineConfig(step_ms=settings.synthetic_engine_step_ms, **overrides)
    except InvalidParameterError as e:
        raise EngineUnavailableError(str(e)) from e
    log.warning("synthetic_engine_benchmarks_only", engine_kind=ENGINE_KIND, model=settings.engine,
                step_ms=config.step_ms, max_batch_size=config.max_batch_size, max_seq_len=config.max_seq_len,
                message="this worker runs NO model: it answers every request with synthetic tokens, for "
                        "control-plane benchmarks only; never serve users with it")
    return SyntheticEngine(config)
