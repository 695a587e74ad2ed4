"""The worker's grpc.health.v1 server on 0.0.0.0:health_port (with reflection), and the monitor that
keeps its statuses up to date: liveness and readiness (worker/health.py) are re-evaluated every
`poll_s` on the event loop, which stays free while an engine step runs in its thread, so a hung step
reads NOT_SERVING without waiting for it. Each transition is logged (`worker_health_changed`) and
exported as the inferline_worker_live / inferline_worker_ready gauges."""
from __future__ import annotations

import asyncio
import contextlib
import time

import structlog
from grpc_health.v1 import health_pb2

from inferline.grpc.server import build_server
from worker import metrics
from worker.health import LIVENESS, READINESS, HealthSource, Status, liveness, readiness
from worker.settings import WorkerSettings

log = structlog.get_logger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# Which grpc.health.v1 services each check sets: "" (the whole server) follows readiness, as the
# gateway's, router's and builder's "" follows whether they can serve.
SERVICES = {"liveness": (LIVENESS,), "readiness": ("", READINESS)}
# SO_REUSEPORT (grpc's default on Linux) would let two workers on one host share a health port, each
# answering for the other: a taken port must fail the start instead.
SERVER_OPTIONS = (("grpc.so_reuseport", 0),)


class HealthPortError(Exception):
    """The health port cannot be bound (another process holds it)."""


class WorkerHealth:
    def __init__(self, loop: HealthSource, settings: WorkerSettings):
        self.loop = loop
        self.settings = settings
        try:
            self.server, self.servicer, self.port = build_server([], f"0.0.0.0:{settings.health_port}",
                                                                 options=SERVER_OPTIONS)
        except OSError as e:
            raise HealthPortError(str(e)) from e
        # Often enough to notice a timeout within a fraction of it; no busier than 4 times a second.
        self.poll_s = min(0.25, settings.liveness_timeout_s / 10, settings.readiness_timeout_s / 10)
        self.status: dict[str, Status | None] = {check: None for check in SERVICES}
        self._task: asyncio.Task | None = None
        self._lock = asyncio.Lock()  # the monitor and a drain's refresh: one evaluation published at a time

    async def start(self) -> None:
        """Serve, NOT_SERVING everywhere until the loop iterates and the first probe produced its token."""
        for names in SERVICES.values():
            for name in names:
                await self.servicer.set(name, NOT_SERVING)
        await self.server.start()
        self._task = asyncio.create_task(self._run(), name="health-monitor")
        log.info("health_serving", port=self.port, liveness=LIVENESS, readiness=READINESS)

    async def refresh(self) -> None:
        """Evaluate both checks now and publish what changed."""
        async with self._lock:
            now, settings = time.monotonic(), self.settings
            await self._publish("liveness", liveness(self.loop, now, settings.liveness_timeout_s))
            await self._publish("readiness", readiness(self.loop, now, settings.liveness_timeout_s))

    async def stop(self) -> None:
        """NOT_SERVING for good (later sets are ignored), then close the port."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.servicer.enter_graceful_shutdown()
        await self.server.stop(0)

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # never let one failed update freeze the statuses for good
                log.exception("health_refresh_failed")
            await asyncio.sleep(self.poll_s)

    async def _publish(self, check: str, status: Status) -> None:
        previous = self.status[check]
        if previous is not None and previous.serving == status.serving:
            self.status[check] = status  # the same side, perhaps another reason: nothing to announce
            return
        self.status[check] = status
        for name in SERVICES[check]:
            await self.servicer.set(name, SERVING if status.serving else NOT_SERVING)
        gauge = metrics.LIVE if check == "liveness" else metrics.READY
        gauge.labels(self.settings.engine).set(int(status.serving))
        expected = status.serving or status.reason in ("starting", "no_probe_yet", "draining")
        (log.info if expected else log.warning)(
            "worker_health_changed", check=check, serving=status.serving, reason=status.reason,
            previous=None if previous is None else previous.reason)
