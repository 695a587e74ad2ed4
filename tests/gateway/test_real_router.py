"""End to end: the gateway in front of the real router (`python -m router`) and a real worker
(`python -m worker`) serving the engine store's SmolLM2, over a Redis of the test's own."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from transformers import AutoTokenizer

from inferline.v1 import common_pb2, generate_pb2, generate_pb2_grpc
from tests.gateway.conftest import MODEL, running_gateway
from tests.servers import free_port, redis_server

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "The capital of France is"

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("router") is None or importlib.util.find_spec("worker") is None,
    reason="router/ or worker/ is missing (written in parallel, issue #3)")


def start(module: str, args: list[str], log: Path) -> subprocess.Popen:
    # One torch thread per process: two shared cores, several processes.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "wb") as out:  # a file, not a pipe nobody reads
        return subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)


def wait_for(ok: Callable[[], bool], what: str, procs: dict[str, subprocess.Popen], logs: Path, timeout: float = 90):
    deadline = time.monotonic() + timeout
    while not ok():
        dead = [name for name, p in procs.items() if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            tails = "\n".join(f"--- {n}:\n{(logs / f'{n}.log').read_text(errors='replace')[-2000:]}" for n in procs)
            raise AssertionError(f"{what} (exited: {dead})\n{tails}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def e2e_stub(loop_thread, engine_store_dir, tmp_path_factory) -> Iterator[generate_pb2_grpc.InferenceServiceStub]:
    logs = tmp_path_factory.mktemp("e2e-logs")
    with redis_server(tmp_path_factory.mktemp("e2e-redis")) as redis_url:
        router_port = free_port()
        procs = {
            "router": start("router", ["--host", "127.0.0.1", "--port", str(router_port), "--redis-url", redis_url],
                            logs / "router.log"),
            "worker": start("worker", ["--engine", MODEL, "--store-dir", str(engine_store_dir), "--redis-url",
                                       redis_url, "--device", "cpu", "--health-port", "0"], logs / "worker.log"),
        }
        try:
            with running_gateway(loop_thread, store_dir=engine_store_dir, router_address=f"127.0.0.1:{router_port}",
                                 redis_url=redis_url) as address, grpc.insecure_channel(address) as ch:
                stub = generate_pb2_grpc.InferenceServiceStub(ch)
                with grpc.insecure_channel(f"127.0.0.1:{router_port}") as router_ch:
                    health = health_pb2_grpc.HealthStub(router_ch)

                    def router_serving() -> bool:
                        try:
                            return health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1
                        except grpc.RpcError:
                            return False
                    wait_for(router_serving, "the router did not become SERVING", procs, logs)
                # The gateway's own view: the worker counts once its heartbeat is in Redis.
                wait_for(lambda: stub.ListModels(generate_pb2.ListModelsRequest(), timeout=5).models[0].workers == 1,
                         "the worker did not register", procs, logs)
                yield stub
        finally:
            for p in procs.values():
                p.terminate()
            for p in procs.values():
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


def greedy(prompt: str | None = PROMPT) -> generate_pb2.GenerateRequest:
    return generate_pb2.GenerateRequest(model=MODEL, prompt=prompt,
                                        parameters=common_pb2.SamplingParameters(max_tokens=8, temperature=0.0))


def test_generate_and_stream_agree_through_the_real_router(e2e_stub, smollm2_dir):
    response = e2e_stub.Generate(greedy(), timeout=60)
    assert "Paris" in response.text  # greedy SmolLM2 on the gateway's token ids: " Paris.\n\nThe answer is:"
    assert response.finish_reason in (common_pb2.FINISH_REASON_LENGTH, common_pb2.FINISH_REASON_EOS)
    assert response.usage.completion_tokens == len(response.token_ids) <= 8
    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_dir), local_files_only=True)
    assert response.usage.prompt_tokens == len(tokenizer.encode(PROMPT))
    assert response.timings.total_ms >= response.timings.time_to_first_token_ms > 0

    chunks = list(e2e_stub.GenerateStream(greedy(), timeout=60))
    assert "".join(c.text_delta for c in chunks) == response.text
    assert [t for c in chunks for t in c.token_ids] == list(response.token_ids)
    assert chunks[-1].finish_reason == response.finish_reason and chunks[-1].usage == response.usage


def test_chat_through_the_real_router(e2e_stub):
    req = greedy(prompt=None)
    req.messages.messages.add(role="user", content="What is the capital of France?")
    response = e2e_stub.Generate(req, timeout=60)
    assert response.text and response.usage.completion_tokens > 0
