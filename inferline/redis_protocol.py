"""The Redis protocol between routers and workers (docs/serving.md, "Redis keys"): key names, entry
fields and the client factory. Both services import this one module so the two sides cannot drift.

It imports nothing heavy (no torch): the router imports it too. It belongs in the shared package
(inferline/) and lives here until that move is made.
"""
from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

PREFIX = "inferline:"
WORKERS_GROUP = "workers"  # the one consumer group of every requests stream

# Fields of a requests:{model} entry (written by the router).
F_RID = "rid"
F_ROUTER = "router"
F_PAYLOAD = "payload"  # RouteRequest bytes
F_ENQUEUED_MS = "enqueued_ms"  # router's wall clock, ms since the epoch

# Fields of a results:{router_id} entry (written by workers). `entry` is the id of the requests-stream
# entry the event belongs to: it tells runs of the same request id apart (a retry with the same
# idempotency key, or a stale run of a worker presumed dead), so the router keeps only its own.
F_SEQ = "seq"
F_EVENT = "event"  # RouteEvent bytes
F_ENTRY = "entry"


def requests_stream(model: str) -> str:
    return f"{PREFIX}requests:{model}"


REQUESTS_STREAM_PATTERN = f"{PREFIX}requests:*"


def model_of_requests_stream(key: str) -> str:
    return key.removeprefix(f"{PREFIX}requests:")


def results_stream(router_id: str) -> str:
    return f"{PREFIX}results:{router_id}"


def cancel_key(request_id: str) -> str:
    """Its value is the requests-stream entry id of the run to cancel (one request id may be run
    again later with the same idempotency key; an old cancellation must not cancel the new run)."""
    return f"{PREFIX}cancel:{request_id}"


def worker_key(worker_id: str) -> str:
    return f"{PREFIX}worker:{worker_id}"


def workers_set(model: str) -> str:
    return f"{PREFIX}workers:{model}"


def queued_tokens_key(model: str) -> str:
    return f"{PREFIX}queued_tokens:{model}"


def connect(url: str) -> aioredis.Redis:
    """A client whose commands ride out short Redis outages (reconnect with jittered backoff) instead
    of each caller looping by hand. Responses stay bytes: payloads are protobuf."""
    return aioredis.Redis.from_url(
        url,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries=6),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        health_check_interval=30,
    )


async def ensure_group(client: aioredis.Redis, model: str) -> None:
    """Create the model's stream and its `workers` group if missing. The group starts at id 0 so
    entries queued before any worker existed are still delivered."""
    try:
        await client.xgroup_create(requests_stream(model), WORKERS_GROUP, id="0", mkstream=True)
    except ResponseError as e:
        if "BUSYGROUP" not in str(e):
            raise


def text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value
