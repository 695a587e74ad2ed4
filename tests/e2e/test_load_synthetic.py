"""`inferline load` against a real local stack whose worker hosts the synthetic engine (benchmarks
only): gateway -> router -> Redis -> worker, real processes on loopback, a redis-server of its own.
No timing assertions: requests/s is printed, not judged."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import redis

from tests.conftest import store_with_smollm2
from tests.servers import free_port, redis_server
from tests.worker.processes import (REPO, ServiceProcess, service_env, start_gateway, start_router, start_worker,
                                    wait_router_ready, wait_worker_ready)

pytestmark = pytest.mark.slow

MODEL = "synthetic-bench"  # the store's engine: the gateway tokenizes with it; the worker loads nothing
GHZ_KEYS = {"date", "count", "total", "average", "fastest", "slowest", "rps", "latencyDistribution",
            "statusCodeDistribution", "errorDistribution", "histogram"}


@pytest.fixture(scope="module")
def store_dir(smollm2_dir: Path, tmp_path_factory) -> Path:
    return store_with_smollm2(tmp_path_factory.mktemp("synthetic-store"), smollm2_dir, MODEL, max_batch_size=64,
                              max_seq_len=2048)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, store_dir: Path) -> Iterator[tuple[str, redis.Redis, ServiceProcess]]:
    logs = tmp_path_factory.mktemp("load-logs")
    with redis_server(tmp_path_factory.mktemp("load-redis")) as redis_url:
        router_port, gateway_port = free_port(), free_port()
        router = start_router(logs, redis_url, "load-router", router_port)
        worker = start_worker(logs, redis_url, MODEL, "load-worker", None, engine_kind="synthetic-benchmark-only",
                              synthetic_engine_step_ms=2, store_dir=Path("/nonexistent"))
        gateway = start_gateway(logs, gateway_port, router_port, store_dir, redis_url=redis_url)
        client = redis.Redis.from_url(redis_url)
        try:
            wait_router_ready(router, router_port)
            wait_worker_ready(client, worker, timeout=30)
            wait_router_ready(gateway, gateway_port)
            yield f"127.0.0.1:{gateway_port}", client, worker
        finally:
            for proc in (gateway, worker, router):
                proc.stop()
            client.close()


def inferline_load(address: str, tmp_path: Path, *args: str) -> tuple[dict, str]:
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "inferline.cli", "load", "--address", address, "--model", MODEL,
                           "-o", str(out), *args], env=service_env(), cwd=REPO, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr
    return json.loads(out.read_text()), proc.stderr


def test_the_worker_says_it_runs_no_model(stack):
    _, client, worker = stack
    assert client.hget(f"inferline:worker:{worker.name}", "engine_kind") == b"synthetic-benchmark-only"
    warnings = [e for e in worker.log_events() if e.get("event") == "synthetic_engine_benchmarks_only"]
    assert warnings and warnings[0]["level"] == "warning"


def test_a_bounded_unary_load_run_has_no_errors(stack, tmp_path):
    address, _, _ = stack
    report, summary = inferline_load(address, tmp_path, "--call", "unary", "--concurrency", "20", "--total", "300",
                                     "--max-tokens", "8", "--warmup", "20")
    print(f"\nunary, concurrency 20, 300 requests, max_tokens 8 (synthetic engine, 2 ms/step):\n{summary}")
    assert GHZ_KEYS <= report.keys()
    assert report["count"] == 300
    assert report["statusCodeDistribution"] == {"OK": 300} and report["errorDistribution"] == {}
    assert report["inferline"]["completionTokens"] == 300 * 8
    assert [row["percentage"] for row in report["latencyDistribution"]] == [10, 25, 50, 75, 90, 95, 99]
    assert 0 < report["fastest"] <= report["latencyDistribution"][2]["latency"] <= report["slowest"]
    assert sum(b["count"] for b in report["histogram"]) == 300
    assert report["options"]["call"] == "inferline.v1.InferenceService/Generate"
    assert report["rps"] > 0 and "requests/s" in summary and "errors: 0" in summary


def test_a_paced_unary_load_run_sends_every_request_without_errors(stack, tmp_path):
    address, _, _ = stack
    report, summary = inferline_load(address, tmp_path, "--call", "unary", "--concurrency", "20", "--rps", "200",
                                     "--total", "100", "--max-tokens", "4")
    print(f"\nunary, concurrency 20, --rps 200, 100 requests, max_tokens 4:\n{summary}")
    assert report["count"] == 100 and report["statusCodeDistribution"] == {"OK": 100}
    assert report["options"]["rps"] == 200 and "(--rps 200)" in summary
    assert report["rps"] <= 200 * 100 / 99  # the 100th request goes 99/200 s after the start at the soonest


def test_a_streaming_load_run_for_a_duration(stack, tmp_path):
    address, _, _ = stack
    report, summary = inferline_load(address, tmp_path, "--call", "stream", "--concurrency", "20", "--duration",
                                     "1.5", "--max-tokens", "4")
    print(f"\nstream, concurrency 20, 1.5 s, max_tokens 4:\n{summary}")
    assert report["count"] > 0 and report["statusCodeDistribution"] == {"OK": report["count"]}
    assert report["inferline"]["completionTokens"] == 4 * report["count"]
    assert report["inferline"]["timeToFirstChunkDistribution"]
    assert report["options"]["call"] == "inferline.v1.InferenceService/GenerateStream"


def test_errors_are_counted_like_ghz(stack, tmp_path):
    address, _, _ = stack
    report, summary = inferline_load(address, tmp_path, "--total", "5", "--concurrency", "2", "--max-tokens", "5000")
    assert report["count"] == 5 and report["statusCodeDistribution"] == {"InvalidArgument": 5}
    [(message, n)] = report["errorDistribution"].items()
    assert n == 5 and message.startswith("rpc error: code = InvalidArgument desc = ")
    assert report["latencyDistribution"] == [] and "errors: 5" in summary
