"""Per-engine tokenizers, loaded from the engine store and cached.

The gateway tokenizes with the very files the workers load (engine.tokenizer.load_tokenizer on the
engine's store folder), so token ids and the chat template agree with what the engine would do with
text. An entry is keyed by the engine's checksum (sha256 of its manifest): a rebuilt engine is
picked up on the next request without a restart. The checksum is recomputed only when the manifest
file's inode, size or mtime changes (the store replaces it by renaming a new file in), so a request
costs one stat, not a read and a hash.
"""
from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import structlog
from grpc_interceptor.exceptions import FailedPrecondition, Internal, InvalidArgument, NotFound

from engine.loader import open_checkpoint
from engine.tokenizer import load_tokenizer
from inferline.heap import freeze_long_lived
from inferline.engine_store import (MANIFEST, NAME_PATTERN, EngineCorruptError, EngineNotFoundError, EngineStore,
                                    Manifest)

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class EngineTokenizer:
    name: str
    checksum: str
    manifest: Manifest
    tokenizer: Any  # a transformers tokenizer
    vocab_size: int
    # HF fast tokenizers are not safe to call from several threads at once ("Already borrowed").
    lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    @property
    def max_seq_len(self) -> int:
        return self.manifest.max_seq_len


class EngineTokenizers:
    def __init__(self, store: EngineStore):
        self.store = store
        self._cache: dict[str, EngineTokenizer] = {}
        self._loads: dict[tuple[str, str], asyncio.Future[EngineTokenizer]] = {}  # (name, checksum) -> its load
        # Loads run one at a time in a thread of their own: transformers imports its classes lazily, and two
        # threads importing them at once can fail with ImportError ("cannot import name 'AutoTokenizer'").
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenizer-load")
        self._checksums: dict[str, tuple[tuple[int, int, int], str]] = {}  # name -> (manifest stat, checksum)
        self._manifests: dict[str, str] = {}  # name -> its manifest path, once found (no Path built per request)

    async def get(self, name: str) -> EngineTokenizer:
        """The engine's tokenizer and limits; NOT_FOUND naming the model when the store lacks it."""
        if not name:
            raise InvalidArgument("model: is empty; name one of the engines that ListModels returns")
        checksum = self._checksum(name)
        cached = self._cache.get(name)
        if cached is not None and cached.checksum == checksum:
            return cached
        # One load per engine version, shared: concurrent first requests wait for it instead of each loading,
        # and a request that gives up while it runs (cancelled, past its deadline) leaves it to the others.
        key = (name, checksum)
        load = self._loads.get(key)
        if load is None:
            load = self._loads[key] = asyncio.get_running_loop().run_in_executor(self._loader, self._load, *key)
            load.add_done_callback(lambda done: self._loaded(key, done))
        return await asyncio.shield(load)

    def _loaded(self, key: tuple[str, str], load: asyncio.Future[EngineTokenizer]) -> None:
        del self._loads[key]
        if load.cancelled() or load.exception() is not None:  # its waiters get the error; the next request retries
            return
        self._cache[key[0]] = load.result()
        freeze_long_lived()  # a tokenizer lives as long as its engine: keep it out of full collections

    def _checksum(self, name: str) -> str:
        # A name the store could never hold (path tricks included) is as unknown as a missing one.
        try:
            if NAME_PATTERN.match(name):
                manifest = self._manifests.get(name) or str(self.store.path(name) / MANIFEST)
                stat = os.stat(manifest)
                key = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
                known = self._checksums.get(name)
                if known is not None and known[0] == key:
                    return known[1]
                checksum = self.store.checksum(name)
                self._checksums[name] = (key, checksum)
                self._manifests[name] = manifest
                return checksum
        except FileNotFoundError:  # no such engine, or deleted between the two reads
            pass
        self._checksums.pop(name, None)
        self._manifests.pop(name, None)
        self._cache.pop(name, None)  # a deleted engine's tokenizer is not kept
        raise NotFound(f"model: {name!r} is not in the engine store; ListModels lists the engines")

    def _load(self, name: str, checksum: str) -> EngineTokenizer:
        # Blocking (file reads, tokenizer construction): runs in a thread, off the event loop.
        try:
            manifest = self.store.manifest(name)
            ckpt = open_checkpoint(str(self.store.path(name)))
        except EngineNotFoundError:
            raise NotFound(f"model: {name!r} is not in the engine store; ListModels lists the engines") from None
        except (EngineCorruptError, ValueError) as e:  # engine errors are ValueErrors too
            log.error("engine_unreadable", model=name, error=str(e))
            raise Internal(f"model: engine {name!r} cannot be read from the store: {e}") from e
        tokenizer = load_tokenizer(ckpt)
        if tokenizer is None:
            raise FailedPrecondition(f"model: engine {name!r} has no tokenizer files, so text cannot be tokenized")
        log.info("tokenizer_loaded", model=name, checksum=checksum[:12], max_seq_len=manifest.max_seq_len)
        return EngineTokenizer(name=name, checksum=checksum, manifest=manifest, tokenizer=tokenizer,
                               vocab_size=ckpt.config.vocab_size)
