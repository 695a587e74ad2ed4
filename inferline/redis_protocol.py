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

# Fields of a requests stream entry (any band; written by the router).
F_RID = "rid"
F_ROUTER = "router"
F_PAYLOAD = "payload"  # RouteRequest bytes
F_ENQUEUED_MS = "enqueued_ms"  # router's wall clock, ms since the epoch

# Fields of a results:{router_id} entry (written by workers). `entry` is the run id (see run_id) of the
# requests-stream entry the event belongs to: it tells runs of the same request id apart (a retry with the same
# idempotency key, or a stale run of a worker presumed dead), so the router keeps only its own.
F_SEQ = "seq"
F_EVENT = "event"  # RouteEvent bytes
F_ENTRY = "entry"


# Priority bands, highest first: a worker fills its free slots from the first band that has entries,
# then the next. Each band of a model is a stream of its own, with the `workers` group on every one.
HIGH, NORMAL, LOW = "high", "normal", "low"
BANDS = (HIGH, NORMAL, LOW)


def band_of(priority: int) -> str:
    """RouteRequest.priority: higher runs earlier among queued requests; 0 (unset) is NORMAL."""
    return HIGH if priority > 0 else LOW if priority < 0 else NORMAL


def _requests_prefix(band: str) -> str:
    # NORMAL keeps the original name `requests:{model}`; the other bands put the band in the prefix
    # (`requests-high:{model}`), so no model name (even one ending in ":high") maps onto another's key.
    return f"{PREFIX}requests:" if band == NORMAL else f"{PREFIX}requests-{band}:"


def requests_stream(model: str, band: str = NORMAL) -> str:
    return f"{_requests_prefix(band)}{model}"


def requests_streams(model: str) -> list[str]:
    """The model's request streams, highest band first."""
    return [requests_stream(model, band) for band in BANDS]


REQUESTS_STREAM_PATTERNS = tuple(f"{_requests_prefix(band)}*" for band in BANDS)


def model_of_requests_stream(key: str) -> str:
    for band in BANDS:
        if key.startswith(prefix := _requests_prefix(band)):
            return key.removeprefix(prefix)
    raise ValueError(f"not a requests stream: {key!r}")


def run_id(band: str, stream_id: str) -> str:
    """Names one run of a request: the engine's request id, results' `entry`, the value of cancel:{rid}.
    A stream entry id is unique only within its stream, so other bands than NORMAL prefix their band."""
    return stream_id if band == NORMAL else f"{band}:{stream_id}"


def split_run_id(value: str) -> tuple[str, str]:
    """(band, stream entry id) of a run id."""
    band, sep, stream_id = value.partition(":")
    return (band, stream_id) if sep else (NORMAL, value)


def results_stream(router_id: str) -> str:
    return f"{PREFIX}results:{router_id}"


def cancel_key(request_id: str) -> str:
    """Its value is the requests-stream entry id of the run to cancel (one request id may be run
    again later with the same idempotency key; an old cancellation must not cancel the new run)."""
    return f"{PREFIX}cancel:{request_id}"


def idempotency_key(request_id: str) -> str:
    """Hash of an idempotent request (fp, owner, state): who runs it, or that it finished."""
    return f"{PREFIX}idem:{request_id}"


def idempotency_events(request_id: str) -> str:
    """Stream of the events its owner delivered (field `event`), or `end` when the owner gave up."""
    return f"{PREFIX}idem-events:{request_id}"


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
    """Create the model's band streams and their `workers` group where missing. The group starts at
    id 0 so entries queued before any worker existed are still delivered."""
    for stream in requests_streams(model):
        try:
            await client.xgroup_create(stream, WORKERS_GROUP, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise


def text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value
