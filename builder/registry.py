"""The engine registry in Redis (docs/serving.md): a hash `inferline:engine:{name}` with name,
fingerprint, path, checksum and status, and the set `inferline:engines` of names. The store is the
source of truth; the registry is how routers and workers discover engines without listing a disk,
so the builder re-syncs it from the store when it starts (Redis may have restarted empty)."""
from __future__ import annotations

from pathlib import Path

import structlog
from redis.asyncio import Redis

from inferline.engine_store import EngineStore, EngineStoreError, Manifest

log = structlog.get_logger(__name__)

PREFIX = "inferline:"
ENGINES_KEY = f"{PREFIX}engines"
READY = "ready"


def engine_key(name: str) -> str:
    return f"{PREFIX}engine:{name}"


class EngineRegistry:
    def __init__(self, redis: Redis):
        self.redis = redis

    async def register(self, manifest: Manifest, path: Path, checksum: str) -> None:
        # One MULTI/EXEC: a reader never sees the name in the set without its hash.
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(engine_key(manifest.name))  # no stale fields from an older record
            pipe.hset(engine_key(manifest.name), mapping=_record(manifest, path, checksum))
            pipe.sadd(ENGINES_KEY, manifest.name)
            await pipe.execute()

    async def unregister(self, name: str) -> bool:
        """Remove the engine's hash and set entry; True if it was registered."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(engine_key(name))
            pipe.srem(ENGINES_KEY, name)
            deleted, removed = await pipe.execute()
        return bool(deleted or removed)

    async def get(self, name: str) -> dict[str, str] | None:
        record = await self.redis.hgetall(engine_key(name))
        return {_text(k): _text(v) for k, v in record.items()} or None

    async def names(self) -> set[str]:
        return {_text(n) for n in await self.redis.smembers(ENGINES_KEY)}

    async def sync(self, store: EngineStore) -> None:
        """Register every engine in the store whose record is missing or stale, and drop records of
        engines the store no longer has. Reads manifests only: workers verify files when they load."""
        stored = set(store.names())
        for name in sorted(stored):
            try:
                manifest, checksum = store.manifest(name), store.checksum(name)
            except EngineStoreError as e:
                log.warning("registry_sync_skipped", name=name, error=str(e))
                continue
            path = store.path(name).resolve()
            current = await self.get(name)
            if current != _record(manifest, path, checksum):
                await self.register(manifest, path, checksum)
                log.info("registry_sync_registered", name=name)
        for name in await self.names() - stored:
            await self.unregister(name)
            log.info("registry_sync_unregistered", name=name)


def _record(manifest: Manifest, path: Path, checksum: str) -> dict[str, str]:
    return {"name": manifest.name, "fingerprint": manifest.fingerprint, "path": str(path), "checksum": checksum,
            "status": READY}


def _text(value: bytes | str) -> str:
    # Works whether or not the client was made with decode_responses.
    return value.decode() if isinstance(value, bytes) else value
