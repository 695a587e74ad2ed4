"""`python -m router`: serve RouterService (plus health and reflection) on --host/--port.

Health is NOT_SERVING until Redis answers, and while the results reader cannot read.
"""
from __future__ import annotations

import asyncio
import signal
import sys

import structlog
from pydantic_settings import CliApp
from redis.exceptions import RedisError

from inferline.grpc.server import build_server, set_serving
from inferline.heap import freeze_long_lived
from inferline.logs import configure_service_logging
from inferline.metrics import start_metrics_server
from inferline.v1 import router_pb2_grpc
from router.admission import Admission
from router.idempotency import IdempotencyStore
from router.results import ResultsFanout
from router.service import SERVICE_NAME, RouterService
from router.settings import RouterSettings
from inferline.redis_protocol import connect

log = structlog.get_logger("router")


async def serve(settings: RouterSettings) -> None:
    client = connect(settings.redis_url)
    admission = Admission(client, settings.router_id, settings.max_queue_depth, settings.max_queued_tokens,
                          settings.scale_from_zero_models)
    results = ResultsFanout(client, settings.router_id, settings.results_block_ms)
    idempotency = IdempotencyStore(client, settings.router_id, settings.idempotency_lease_s, settings.idempotency_ttl_s)
    service = RouterService(client, admission, results, idempotency, settings.cancel_ttl_s)
    server, health, port = build_server([(router_pb2_grpc.add_RouterServiceServicer_to_server, service, SERVICE_NAME)],
                                        f"{settings.host}:{settings.port}")
    background: set[asyncio.Task] = set()

    def on_health(ok: bool) -> None:
        task = asyncio.create_task(set_serving(health, [SERVICE_NAME], ok))
        background.add(task)
        task.add_done_callback(background.discard)

    results.on_health = on_health
    await set_serving(health, [SERVICE_NAME], False)
    await server.start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    reader = asyncio.create_task(results.run(), name="results-reader")
    metrics_server = start_metrics_server(settings.metrics_port, settings.host, service="router")
    leases = asyncio.create_task(idempotency.keep_leases(), name="idempotency-leases")
    try:
        await client.ping()
        await set_serving(health, [SERVICE_NAME], True)
        freeze_long_lived()
        log.info("router_ready", port=port, router_id=settings.router_id,
                 scale_from_zero_models=list(settings.scale_from_zero_models))
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait([reader, stopping], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if reader.done():
            reader.result()  # the reader only ends by failing: raise its error
        await set_serving(health, [SERVICE_NAME], False)
        service.drain()
        await server.stop(settings.shutdown_grace_s)
        await service.finish_cleanups()
        log.info("router_stopped")
    finally:
        reader.cancel()
        leases.cancel()
        if metrics_server is not None:
            metrics_server.stop()
        await client.aclose()


def main() -> int:
    settings = CliApp.run(RouterSettings)
    configure_service_logging("router", settings.log_level)
    structlog.contextvars.bind_contextvars(router_id=settings.router_id)
    try:
        asyncio.run(serve(settings))
    except RedisError as e:
        log.error("redis_unavailable", redis_url=settings.redis_url, error=str(e))
        return 1
    except OSError as e:  # the port is taken
        log.error("router_failed_to_start", error=str(e))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
