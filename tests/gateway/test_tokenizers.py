"""EngineTokenizers: the store's engine, reloaded when the engine is rebuilt, gone when deleted."""
from __future__ import annotations

import asyncio
import shutil
import threading
from pathlib import Path

import pytest
from grpc_interceptor.exceptions import NotFound

from gateway.tokenizers import EngineTokenizers
from inferline.engine_store import EngineStore, Manifest
from tests.gateway.conftest import MODEL


def commit(store: EngineStore, smollm2_dir: Path, max_seq_len: int) -> None:
    staging = store.new_staging_dir(MODEL)
    for f in smollm2_dir.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy2(f, staging / f.name)
    (staging / "model.safetensors").write_bytes(b"")  # the gateway never reads weights; it must exist
    store.commit(staging, Manifest(name=MODEL, fingerprint=str(max_seq_len), architecture="llama", dtype="float32",
                                   quantization={"scheme": "none"}, max_batch_size=4, max_seq_len=max_seq_len,
                                   source=MODEL))


def test_a_rebuilt_engine_is_picked_up_and_a_deleted_one_is_not_found(smollm2_dir, tmp_path):
    store = EngineStore(tmp_path)
    tokenizers = EngineTokenizers(store)
    commit(store, smollm2_dir, 256)

    async def scenario() -> None:
        first = await tokenizers.get(MODEL)
        assert first.max_seq_len == 256 and first.vocab_size == 49152
        assert await tokenizers.get(MODEL) is first  # cached
        commit(store, smollm2_dir, 64)
        assert (await tokenizers.get(MODEL)).max_seq_len == 64
        store.delete(MODEL)
        with pytest.raises(NotFound, match="model: 'smollm2-135m' is not in the engine store"):
            await tokenizers.get(MODEL)

    asyncio.run(scenario())


def test_one_load_serves_every_waiting_request_and_outlives_one_that_gave_up(smollm2_dir, tmp_path):
    store = EngineStore(tmp_path)
    tokenizers = EngineTokenizers(store)
    commit(store, smollm2_dir, 256)
    loads, release = [], threading.Event()
    real_load = tokenizers._load

    def gated_load(name: str, checksum: str):
        loads.append(name)
        assert release.wait(60)
        return real_load(name, checksum)

    tokenizers._load = gated_load

    async def scenario() -> None:
        first = asyncio.create_task(tokenizers.get(MODEL))
        await asyncio.sleep(0)  # its load starts
        first.cancel()  # the first caller gives up (cancelled, past its deadline) while the load runs
        with pytest.raises(asyncio.CancelledError):
            await first
        waiting = asyncio.gather(tokenizers.get(MODEL), tokenizers.get(MODEL))
        release.set()
        a, b = await waiting
        assert a is b and a.max_seq_len == 256
        assert await tokenizers.get(MODEL) is a  # cached

    asyncio.run(scenario())
    assert loads == [MODEL]  # one load, not one per request
