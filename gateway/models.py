"""ListModels: the engines in the store, with the number of live workers serving each.

The engine store is the source of truth for what exists (the gateway must read it anyway for
tokenizers and max_seq_len), so the builder's registry hashes are not consulted. Worker counts come
from Redis (`inferline:workers:{model}`, keeping only ids whose `inferline:worker:{id}` heartbeat
hash has not expired); without Redis, or while it is unreachable, they are reported as 0 and a
warning is logged: listing models must not depend on Redis being up.
"""
from __future__ import annotations

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from inferline.engine_store import EngineStore, EngineStoreError, Manifest
from inferline.v1 import generate_pb2

log = structlog.get_logger(__name__)
PREFIX = "inferline:"


class ModelCatalog:
    def __init__(self, store: EngineStore, redis: aioredis.Redis | None):
        self.store = store
        self.redis = redis

    async def list_models(self) -> generate_pb2.ListModelsResponse:
        manifests: list[Manifest] = []
        for name in self.store.names():
            try:
                manifests.append(self.store.manifest(name))
            except EngineStoreError as e:  # one bad engine must not hide the others
                log.warning("engine_unreadable", model=name, error=str(e))
        workers = await self._live_workers([m.name for m in manifests])
        return generate_pb2.ListModelsResponse(models=[
            generate_pb2.ModelInfo(name=m.name, max_seq_len=m.max_seq_len, workers=workers.get(m.name, 0),
                                   quantization=str(m.quantization.get("scheme", "none")))
            for m in manifests])

    async def _live_workers(self, names: list[str]) -> dict[str, int]:
        if self.redis is None or not names:
            return {}
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.smembers(f"{PREFIX}workers:{name}")
                members: list[set[bytes]] = await pipe.execute()
            ids = [(name, wid) for name, ws in zip(names, members) for wid in sorted(ws)]
            async with self.redis.pipeline(transaction=False) as pipe:
                for _, wid in ids:
                    pipe.exists(f"{PREFIX}worker:{_text(wid)}")
                alive: list[int] = await pipe.execute()
        except (RedisError, OSError) as e:
            log.warning("worker_count_unavailable", error=str(e))
            return {}
        counts: dict[str, int] = {}
        for (name, _), live in zip(ids, alive):
            counts[name] = counts.get(name, 0) + (1 if live else 0)
        return counts


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
