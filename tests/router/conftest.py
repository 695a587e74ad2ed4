"""Fixtures of the router tests: a Redis client, and a model some (fake) worker serves."""
from __future__ import annotations

import uuid

import pytest
import redis


@pytest.fixture(scope="module")
def client(redis_url):
    with redis.Redis.from_url(redis_url) as c:
        yield c


@pytest.fixture
def model(client) -> str:
    """A model with one live (fake) worker: a heartbeat hash nobody renews within the test."""
    name = f"m-{uuid.uuid4().hex[:6]}"
    client.hset(f"inferline:worker:fake-{name}", mapping={"model": name, "free_slots": 0})
    client.pexpire(f"inferline:worker:fake-{name}", 60_000)
    client.sadd(f"inferline:workers:{name}", f"fake-{name}")
    return name
