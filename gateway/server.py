"""Assembles the gateway: store, tokenizers, router channel and its RouteMany calls, optional Redis, the
grpc.aio server."""
from __future__ import annotations

from dataclasses import dataclass

import grpc
import redis.asyncio as aioredis
import structlog
from grpc_health.v1 import health

from gateway.auth import ApiKeyInterceptor
from gateway.handlers import SERVICE_NAME, add_inference_service
from gateway.models import ModelCatalog
from gateway.router_health import RouterHealth
from gateway.router_mux import RouterMux
from gateway.service import InferenceServicer
from gateway.settings import GatewaySettings
from gateway.tokenizers import EngineTokenizers
from gateway.validation import Limits
from inferline.engine_store import EngineStore
from inferline.grpc.server import DEFAULT_MAX_MESSAGE_BYTES, build_server, set_serving

log = structlog.get_logger(__name__)


@dataclass
class Gateway:
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    port: int
    router_channel: grpc.aio.Channel
    router: RouterMux
    redis: aioredis.Redis | None
    router_health: RouterHealth

    async def start(self) -> None:
        """Serve; health is SERVING while the router is (gateway/router_health.py), checked once here."""
        await set_serving(self.health, [SERVICE_NAME], False)
        await self.server.start()
        await self.router_health.start()

    async def stop(self, grace_s: float) -> None:
        """Health NOT_SERVING first (load balancers stop sending), then no new calls, while calls in
        flight get `grace_s` to finish; then the outgoing connections close."""
        await self.router_health.stop()
        await set_serving(self.health, [SERVICE_NAME], False)
        await self.server.stop(grace_s)
        await self.router.close()
        await self.router_channel.close()
        if self.redis is not None:
            await self.redis.aclose()


def keepalive_options(settings: GatewaySettings) -> list[tuple[str, int]]:
    """Pings on the long-lived RouteMany call, which carries data only while requests are in flight."""
    if not settings.router_keepalive_s:
        return []
    return [("grpc.keepalive_time_ms", int(settings.router_keepalive_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(settings.router_keepalive_timeout_s * 1000)),
            ("grpc.http2.ping_timeout_ms", int(settings.router_keepalive_timeout_s * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            # grpc otherwise sends at most one ping per 5 minutes while no data flows, the case that matters.
            ("grpc.http2.min_time_between_pings_ms", int(settings.router_keepalive_s * 1000))]


def create_gateway(settings: GatewaySettings) -> Gateway:
    """Must run inside the event loop that will serve (grpc.aio binds channels and servers to it)."""
    if not settings.store_dir.is_dir():  # EngineStore would create it and serve an empty store
        raise FileNotFoundError(f"engine store {settings.store_dir} does not exist (INFERLINE_GATEWAY_STORE_DIR)")
    store = EngineStore(settings.store_dir)
    # No receive limit: the router batches its replies, and a message refused for its size would fail
    # the whole RouteMany call, every request on it.
    router_channel = grpc.aio.insecure_channel(settings.router_address,
                                               options=[("grpc.max_receive_message_length", -1),
                                                        *keepalive_options(settings)])
    router = RouterMux(router_channel, settings.router_streams, settings.router_write_interval_ms / 1000)
    redis = None
    if settings.redis_url:
        # Short timeouts: ListModels reports 0 workers rather than hanging when Redis is down.
        redis = aioredis.from_url(settings.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
    servicer = InferenceServicer(EngineTokenizers(store), ModelCatalog(store, redis), router,
                                 Limits.from_settings(settings))
    keys = [k.get_secret_value() for k in settings.api_keys]
    interceptors = [ApiKeyInterceptor(keys)] if keys else []
    # The transport limit stays above max_prompt_bytes so oversize prompts get the gateway's own
    # message; far larger ones (10 MB) are refused by the transport with RESOURCE_EXHAUSTED.
    max_message = max(DEFAULT_MAX_MESSAGE_BYTES, 2 * settings.max_prompt_bytes)
    server, health_servicer, port = build_server([(add_inference_service, servicer, SERVICE_NAME)],
                                                 settings.address, interceptors, max_message_bytes=max_message)
    return Gateway(server, health_servicer, port, router_channel, router, redis,
                   RouterHealth(router_channel, health_servicer, [SERVICE_NAME]))
