"""serve(): the builder's life. Start: open the store (clearing builds a crash left in .staging), check
Redis, re-sync the registry, serve, report SERVING. Stop (when `stop` is set): NOT_SERVING, refuse new
builds, let the running ones finish and stream to the end, then stop the server.

One builder per store: the per-name lock lives in this process, and leftovers in .staging are
treated as abandoned.
"""
from __future__ import annotations

import asyncio
from typing import Callable

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from builder.registry import EngineRegistry
from builder.service import SERVICE_NAME, BuilderService
from builder.settings import BuilderSettings
from inferline.engine_store import EngineStore
from inferline.grpc.server import build_server, set_serving
from inferline.v1 import builder_pb2_grpc

log = structlog.get_logger(__name__)

STOP_GRACE_S = 5.0  # for unary calls still in flight once the builds are done


class StartupError(RuntimeError):
    """The builder cannot start with these settings (a dependency is unreachable, a path unusable)."""


async def serve(settings: BuilderSettings, stop: asyncio.Event, on_ready: Callable[[int], None] | None = None) -> None:
    """Run until `stop` is set; `on_ready(port)` is called once the server answers and reports SERVING."""
    store = _open_store(settings)
    redis = Redis.from_url(settings.redis_url)
    try:
        try:
            await redis.ping()
        except (RedisError, OSError) as e:
            raise StartupError(f"redis_url: cannot reach Redis at {settings.redis_url}: {e}") from e
        registry = EngineRegistry(redis)
        await registry.sync(store)
        servicer = BuilderService(store, registry, settings.allowed_roots, settings.quantize)
        try:
            server, health, port = build_server(
                [(builder_pb2_grpc.add_BuilderServiceServicer_to_server, servicer, SERVICE_NAME)], settings.address)
        except (OSError, RuntimeError) as e:  # grpc reports a taken port as either, by version
            raise StartupError(f"port: cannot listen on {settings.address}: {e}") from e
        await server.start()
        await set_serving(health, [SERVICE_NAME], True)
        log.info("builder_serving", address=f"{settings.host}:{port}", store=str(store.root),
                 allowed_roots=[str(r) for r in settings.allowed_roots], engines=len(store.names()))
        if on_ready is not None:
            on_ready(port)
        await stop.wait()
        log.info("builder_stopping")
        await set_serving(health, [SERVICE_NAME], False)
        await servicer.drain()
        await server.stop(STOP_GRACE_S)
        log.info("builder_stopped")
    finally:
        await redis.aclose()


def _open_store(settings: BuilderSettings) -> EngineStore:
    try:
        store = EngineStore(settings.store_dir)
        probe = store.root / ".staging" / ".write-probe"
        probe.parent.mkdir(exist_ok=True)
        probe.write_bytes(b"")  # fail now, not at the end of the first build
        probe.unlink()
    except OSError as e:
        raise StartupError(f"store_dir: {settings.store_dir} is not a writable directory: {e}") from e
    for leftover in store.clean_staging():  # builds (or deletes) a crash interrupted
        log.warning("staging_leftover_removed", path=str(leftover))
    return store
