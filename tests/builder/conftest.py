"""Builder test fixtures: a real builder (grpc.aio server on a free port, real Redis) running in this
process on its own event loop thread, a gRPC client, and a tiny random HF Llama under an allowed root."""
from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Iterator

import grpc
import pytest
import redis

from builder.app import serve
from builder.settings import BuilderSettings
from inferline.v1 import builder_pb2_grpc

TINY_PROMPT = [1, 5, 9, 2, 7, 3]


def redis_db(url: str, db: int) -> str:
    """The session's redis-server, another database: each test module gets a registry of its own."""
    base, _, _ = url.rpartition("/")
    return f"{base}/{db}"


class BuilderThread:
    """serve() on an event loop in a thread; `with` starts it (waits for SERVING) and drains it."""

    def __init__(self, settings: BuilderSettings):
        self.settings = settings
        self.port = 0
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="builder-server", daemon=True)

    def __enter__(self) -> BuilderThread:
        self._thread.start()
        if not self._ready.wait(60) or self.error is not None:
            raise RuntimeError(f"the builder did not start: {self.error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(120)

    def _main(self) -> None:
        async def run() -> None:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            await serve(self.settings, self._stop, on_ready=self._on_ready)

        try:
            asyncio.run(run())
        except BaseException as e:  # surfaced by __enter__
            self.error = e
            self._ready.set()

    def _on_ready(self, port: int) -> None:
        self.port = port
        self._ready.set()


@pytest.fixture(scope="session")
def model_root(tmp_path_factory) -> Path:
    """The allowed root of every builder under test."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_llama_dir(model_root: Path) -> Path:
    """A tiny random Llama saved by transformers (safetensors + config.json, float32), no tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).float().eval()
    with torch.no_grad():  # HF's init leaves norms at 1 and tiny weights: spread them so greedy paths differ
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    folder = model_root / "tiny-llama"
    model.save_pretrained(folder)
    (folder / "README.md").write_text("not part of the source identity\n")
    return folder


@pytest.fixture(scope="session")
def outside_dir(tmp_path_factory, tiny_llama_dir: Path) -> Path:
    """A copy of the tiny Llama outside every allowed root."""
    import shutil

    outside = tmp_path_factory.mktemp("outside") / "tiny-llama"
    shutil.copytree(tiny_llama_dir, outside)
    return outside


def builder_settings(tmp_path: Path, redis_url: str, model_root: Path, **overrides) -> BuilderSettings:
    return BuilderSettings(**{"host": "127.0.0.1", "port": 0, "redis_url": redis_url, "store_dir": tmp_path / "store",
                              "allowed_roots": [model_root], **overrides})


@pytest.fixture(scope="module")
def builder_server(tmp_path_factory, redis_url: str, model_root: Path) -> Iterator[BuilderThread]:
    url = redis_db(redis_url, 1)
    redis.Redis.from_url(url).flushdb()
    settings = builder_settings(tmp_path_factory.mktemp("builder"), url, model_root)
    with BuilderThread(settings) as server:
        yield server


@pytest.fixture(scope="module")
def stub(builder_server: BuilderThread) -> Iterator[builder_pb2_grpc.BuilderServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{builder_server.port}") as channel:
        yield builder_pb2_grpc.BuilderServiceStub(channel)


@pytest.fixture(scope="module")
def registry(builder_server: BuilderThread) -> redis.Redis:
    return redis.Redis.from_url(builder_server.settings.redis_url, decode_responses=True)
