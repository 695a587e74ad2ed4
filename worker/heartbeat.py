"""The heartbeat: the worker's hash (with a TTL: a worker that stops beating is dead), its membership
of the model's worker set, and the re-claim of its running entries so no one takes them over."""
from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from worker.loop import StepLoop
from worker.queue import RequestQueue
from inferline.redis_protocol import worker_key, workers_set
from worker.settings import WorkerSettings

log = structlog.get_logger(__name__)


class Heartbeat:
    def __init__(self, client: aioredis.Redis, queue: RequestQueue, loop: StepLoop, settings: WorkerSettings):
        self.client = client
        self.queue = queue
        self.loop = loop
        self.settings = settings
        self.key = worker_key(settings.worker_id)
        self.started_ms = int(time.time() * 1000)

    def fields(self) -> dict[str, str | int | float]:
        stats = self.loop.stats
        return {
            "model": self.settings.engine,
            "engine_kind": self.settings.engine_kind,  # synthetic-benchmark-only: no model behind it
            "free_slots": self.loop.free_slots(),
            "running": len(self.loop.running),
            "max_batch_size": self.loop.max_batch_size,
            "kv_used": stats.kv_blocks_used,
            "kv_free": stats.kv_blocks_free,
            "last_step_ms": round(self.loop.last_step_ms, 2),  # duration of the last engine step
            "last_step_at_ms": int(self.loop.last_step_at_ms),  # when it ended (epoch ms)
            "draining": int(self.loop.draining),
            "started_ms": self.started_ms,
        }

    async def beat(self) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.key, mapping=self.fields())
        pipe.pexpire(self.key, int(self.settings.heartbeat_ttl_s * 1000))
        pipe.sadd(workers_set(self.settings.engine), self.settings.worker_id)
        await pipe.execute()
        self.loop.mark_lost(await self.queue.touch(self.loop.own_entry_ids()))

    async def run(self) -> None:
        while True:
            try:
                await self.beat()
            except RedisError as e:  # the client already retried; the next beat tries again
                log.warning("heartbeat_failed", error=str(e))
            await asyncio.sleep(self.settings.heartbeat_interval_s)

    async def withdraw(self) -> None:
        """Leave the model's worker set at once, rather than a heartbeat expiry later."""
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self.key)
        pipe.srem(workers_set(self.settings.engine), self.settings.worker_id)
        await pipe.execute()
