"""Requests for the serving tests, and what the engine makes of them offline (the reference)."""
from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from engine import CompletionOutput, Engine, SamplingParams
from inferline.v1 import common_pb2, router_pb2
from inferline.events import is_final

TOPICS = ["the capital of France", "a haiku about GPUs", "what a KV cache is", "three prime numbers",
          "'good morning' in Spanish", "12 times 7", "clean Python code", "who wrote Romeo and Juliet",
          "why the sky is blue", "how a bicycle works", "the tallest mountain", "a recipe for pancakes",
          "the speed of light", "a joke about cats", "the history of Rome", "how rain forms"]


@dataclass(frozen=True)
class Job:
    request_id: str
    prompt_token_ids: list[int]
    max_tokens: int

    def request(self, model: str, **params: object) -> router_pb2.RouteRequest:
        return router_pb2.RouteRequest(request_id=self.request_id, model=model, prompt_token_ids=self.prompt_token_ids,
                                       parameters=common_pb2.SamplingParameters(max_tokens=self.max_tokens, **params))


def make_jobs(engine: Engine, n: int, prefix: str, max_tokens: tuple[int, ...] = (4, 6, 8, 10, 12)) -> list[Job]:
    """n different prompts (short: prefill is cheap) with different max_tokens."""
    jobs = []
    for i in range(n):
        text = f"Question {i}: tell me about {TOPICS[i % len(TOPICS)]}."
        jobs.append(Job(f"{prefix}-{i}", engine.tokenizer.encode(text), max_tokens[i % len(max_tokens)]))
    return jobs


def reference(engine: Engine, jobs: list[Job], **params: object) -> dict[str, CompletionOutput]:
    outs = engine.generate([j.prompt_token_ids for j in jobs],
                           [SamplingParams(max_tokens=j.max_tokens, **params) for j in jobs])
    return {j.request_id: out for j, out in zip(jobs, outs)}


def enqueue(client: redis.Redis, request: router_pb2.RouteRequest, router_id: str) -> str:
    """Queue a request the way the router does (without its admission checks)."""
    pipe = client.pipeline()
    pipe.xadd(f"inferline:requests:{request.model}", {"rid": request.request_id, "router": router_id,
                                                       "payload": request.SerializeToString(),
                                                       "enqueued_ms": int(time.time() * 1000)})
    pipe.incrby(f"inferline:queued_tokens:{request.model}", len(request.prompt_token_ids))
    return pipe.execute()[0].decode()


def collect_events(client: redis.Redis, router_id: str, request_ids: set[str],
                   timeout: float = 60) -> dict[str, list[router_pb2.RouteEvent]]:
    """Read a router's results stream until every request has its final event."""
    events: dict[str, list[router_pb2.RouteEvent]] = {rid: [] for rid in request_ids}
    pending, last_id = set(request_ids), "0-0"
    deadline = time.monotonic() + timeout
    while pending:
        assert time.monotonic() < deadline, f"no final event for {sorted(pending)}"
        for _stream, messages in client.xread({f"inferline:results:{router_id}": last_id}, block=200) or []:
            for message_id, fields in messages:
                last_id = message_id
                rid = fields[b"rid"].decode()
                if rid in events:
                    event = router_pb2.RouteEvent.FromString(fields[b"event"])
                    events[rid].append(event)
                    if is_final(event):
                        pending.discard(rid)
    return events
