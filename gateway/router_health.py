"""The gateway's health follows its router's: every request goes through the router, so while the
router is unreachable or NOT_SERVING (it is, while Redis is unreachable) the gateway reports
NOT_SERVING too, and load balancers and readiness probes route around it.

A grpc.health.v1 Check of the router's whole server ("") on the gateway's own router channel, at
start and then every CHECK_INTERVAL_S: a Check (rather than a Watch stream) also notices a router
that accepts connections but no longer answers. Transitions are logged (`router_health_changed`)."""
from __future__ import annotations

import asyncio
import contextlib
from typing import Sequence

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from inferline.grpc.server import set_serving

log = structlog.get_logger(__name__)

CHECK_INTERVAL_S = 1.0
CHECK_TIMEOUT_S = 1.0


class RouterHealth:
    def __init__(self, router_channel: grpc.aio.Channel, health_servicer: health.aio.HealthServicer,
                 service_names: Sequence[str], interval_s: float = CHECK_INTERVAL_S,
                 timeout_s: float = CHECK_TIMEOUT_S):
        self._stub = health_pb2_grpc.HealthStub(router_channel)
        self._servicer = health_servicer
        self._names = list(service_names)
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.serving: bool | None = None  # as last published; None before the first check
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        """Check once (so the gateway's status is right when start returns), then keep following."""
        await self.check()
        self._task = asyncio.create_task(self._follow(), name="router-health")

    async def stop(self) -> None:
        """Stop following; the statuses stay as they are (the gateway sets them on its way out)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def check(self) -> bool:
        try:
            reply = await self._stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=self.timeout_s)
        except grpc.aio.AioRpcError as e:
            serving, router_status = False, e.code().name
        else:
            serving = reply.status == health_pb2.HealthCheckResponse.SERVING
            router_status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        if serving != self.serving:
            await set_serving(self._servicer, self._names, serving)
            (log.info if serving else log.warning)("router_health_changed", serving=serving, router=router_status)
            self.serving = serving
        return serving

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.check()
            except Exception:  # never let one bad check end the following for good
                log.exception("router_health_check_failed")
