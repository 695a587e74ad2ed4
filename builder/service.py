"""BuilderService over grpc.aio: a thin, typed layer over build.py, the engine store and the registry.

BuildEngine runs the blocking build in a thread (asyncio.to_thread) inside a task of its own that
holds the engine name's lock, and streams the progress the thread posts to an asyncio.Queue. The task
outlives the RPC: a client that goes away does not abandon a half-done build (a thread cannot be
stopped anyway), the lock stays held until the thread is done, so two builds of one name never
overlap, and drain() lets shutdown wait for every build.

Status mapping: a bad field -> INVALID_ARGUMENT, message starting with the field; a source outside
the allowed roots -> PERMISSION_DENIED (the request is well-formed, the builder may not read it);
no such engine -> NOT_FOUND; an unreadable manifest -> DATA_LOSS; shutting down -> UNAVAILABLE.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import AsyncIterator, Iterator, Sequence

import grpc
import structlog
from grpc_interceptor.exceptions import DataLoss, InvalidArgument, NotFound, PermissionDenied, Unavailable

from builder import metrics
from builder.build import BuildSpec, build_engine
from builder.quantize.settings import QuantizeSettings
from builder.errors import BuildInputError, SourceNotAllowedError
from builder.registry import READY, EngineRegistry
from inferline.engine_store import NAME_PATTERN, EngineCorruptError, EngineNotFoundError, EngineStore, Manifest
from inferline.logs import request_context
from inferline.v1 import builder_pb2 as pb
from inferline.v1 import builder_pb2_grpc

log = structlog.get_logger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["BuilderService"].full_name
UNREGISTERED = "unregistered"  # in the store, but Redis has no (or an outdated) record
CORRUPT = "corrupt"  # in the store with an unreadable manifest


@contextlib.contextmanager
def grpc_errors() -> Iterator[None]:
    """The builder's and the store's errors as grpc-interceptor exceptions (ErrorInterceptor sets the status)."""
    try:
        yield
    except SourceNotAllowedError as e:
        raise PermissionDenied(str(e)) from e
    except BuildInputError as e:
        raise InvalidArgument(str(e)) from e
    except EngineNotFoundError as e:
        raise NotFound(str(e)) from e
    except EngineCorruptError as e:
        raise DataLoss(str(e)) from e


def engine_record(manifest: Manifest, path: Path, checksum: str, status: str) -> pb.EngineRecord:
    quant = manifest.quantization
    record = pb.EngineRecord(
        name=manifest.name, fingerprint=manifest.fingerprint, path=str(path), checksum=checksum, status=status,
        dtype=manifest.dtype, quantization=quant.get("scheme", "none"),
        max_batch_size=manifest.max_batch_size, max_seq_len=manifest.max_seq_len,
        architecture=manifest.architecture, size_bytes=manifest.size_bytes, created_at=manifest.created_at)
    if quant.get("scheme", "none") != "none":
        record.quantization_options.CopyFrom(pb.QuantizationOptions(
            group_size=quant["group_size"], quantize_lm_head=quant["lm_head"],
            quantize_embedding=quant.get("embedding", False), smoothquant_alpha=quant["alpha"],
            gptq_act_order=quant["act_order"], fp8_granularity=quant["fp8_granularity"],
            fp8_activations=quant.get("fp8_activations", "token")))
        record.quality.CopyFrom(pb.QualityReport(**quant["quality"]))
    return record


def build_spec(request: pb.BuildEngineRequest) -> BuildSpec:
    options = request.quantization_options
    return BuildSpec.parse(
        source=request.source, name=request.name, dtype=request.dtype, quantization=request.quantization,
        max_batch_size=request.max_batch_size, max_seq_len=request.max_seq_len, group_size=options.group_size,
        quantize_lm_head=options.quantize_lm_head, quantize_embedding=options.quantize_embedding,
        smoothquant_alpha=options.smoothquant_alpha if options.HasField("smoothquant_alpha") else None,
        gptq_act_order=options.gptq_act_order if options.HasField("gptq_act_order") else None,
        fp8_granularity=options.fp8_granularity, fp8_activations=options.fp8_activations)


class BuilderService(builder_pb2_grpc.BuilderServiceServicer):
    def __init__(self, store: EngineStore, registry: EngineRegistry, allowed_roots: Sequence[Path],
                 quantize: QuantizeSettings = QuantizeSettings()):
        self.store = store
        self.quantize = quantize
        self.registry = registry
        self.allowed_roots = tuple(allowed_roots)
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)  # per valid name; names are few
        self._jobs: set[asyncio.Task[None]] = set()
        self._closing = False

    async def BuildEngine(self, request: pb.BuildEngineRequest,
                          context: grpc.aio.ServicerContext) -> AsyncIterator[pb.BuildEvent]:
        if self._closing:
            raise Unavailable("the builder is shutting down; retry once it is back")
        with grpc_errors():
            spec = build_spec(request)
        events: asyncio.Queue[pb.BuildEvent | None] = asyncio.Queue()
        with request_context(_request_id(context)):  # the task (and its thread) copy this context
            log.info("build_requested", name=spec.name, source=spec.source, dtype=spec.dtype, quantization=spec.scheme,
                     max_batch_size=spec.max_batch_size, max_seq_len=spec.max_seq_len)
            job = asyncio.create_task(self._build(spec, events))
        self._jobs.add(job)
        job.add_done_callback(self._forget)
        while (event := await events.get()) is not None:
            yield event
        with grpc_errors():
            await asyncio.shield(job)  # finished already; re-raises the build's error, if any

    async def GetEngine(self, request: pb.GetEngineRequest, context: grpc.aio.ServicerContext) -> pb.EngineRecord:
        with grpc_errors():
            return await self._record(_checked_name(request.name))

    async def ListEngines(self, request: pb.ListEnginesRequest,
                          context: grpc.aio.ServicerContext) -> pb.ListEnginesResponse:
        records = []
        for name in self.store.names():
            try:
                records.append(await self._record(name))
            except EngineCorruptError:  # still listed, so it can be seen and deleted
                records.append(pb.EngineRecord(name=name, path=str(self.store.path(name)), status=CORRUPT))
            except EngineNotFoundError:  # deleted between the listing and the read
                continue
        return pb.ListEnginesResponse(engines=records)

    async def DeleteEngine(self, request: pb.DeleteEngineRequest,
                           context: grpc.aio.ServicerContext) -> pb.DeleteEngineResponse:
        with grpc_errors():
            name = _checked_name(request.name)
            async with self._locks[name]:  # never under a running build of the same name
                try:
                    record = await self._record(name)
                except EngineNotFoundError:
                    await self.registry.unregister(name)  # a stale record must not outlive its engine
                    raise
                except EngineCorruptError:  # still deletable: that is how a corrupt engine is cleared
                    record = pb.EngineRecord(name=name, status=CORRUPT)
                # Registry first: no one discovers the engine while its files are going.
                await self.registry.unregister(name)
                await asyncio.to_thread(self.store.delete, name)
        log.info("engine_deleted", name=name)
        return pb.DeleteEngineResponse(engine=record)

    async def drain(self) -> None:
        """Refuse new builds and wait for the running ones (their clients still get every event)."""
        self._closing = True
        if self._jobs:
            log.info("draining_builds", running=len(self._jobs))
            await asyncio.gather(*list(self._jobs), return_exceptions=True)

    async def _build(self, spec: BuildSpec, events: asyncio.Queue[pb.BuildEvent | None]) -> None:
        loop = asyncio.get_running_loop()

        def progress(stage: str, fraction: float, message: str) -> None:  # called in the build thread
            loop.call_soon_threadsafe(events.put_nowait, pb.BuildEvent(stage=stage, fraction=fraction, message=message))

        started, outcome = time.perf_counter(), "failed"
        metrics.BUILDS_IN_PROGRESS.inc()
        try:
            lock = self._locks[spec.name]
            if lock.locked():
                progress("resolve", 0.0, f"waiting for the running build of {spec.name!r}")
            async with lock:
                manifest = await asyncio.to_thread(build_engine, spec, self.store, self.allowed_roots, progress,
                                                  self.quantize)
                events.put_nowait(pb.BuildEvent(stage="register", fraction=0.95, message="registering in Redis"))
                path, checksum = self.store.path(spec.name), self.store.checksum(spec.name)
                await self.registry.register(manifest, path, checksum)
            record = engine_record(manifest, path, checksum, READY)
            events.put_nowait(pb.BuildEvent(stage="done", fraction=1.0, message=f"engine {spec.name!r} is ready",
                                            engine=record))
            outcome = "success"
        except BuildInputError as e:
            outcome = "refused"
            log.info("build_refused", name=spec.name, error=str(e))
            raise
        except Exception:  # logged here too: the client may be gone, and with it the interceptor's log line
            log.exception("build_failed", name=spec.name)
            raise
        finally:
            metrics.BUILDS_IN_PROGRESS.dec()
            metrics.BUILD_DURATION.labels(spec.scheme, outcome).observe(time.perf_counter() - started)
            metrics.BUILDS_TOTAL.labels(spec.scheme, outcome).inc()
            events.put_nowait(None)

    def _forget(self, job: asyncio.Task[None]) -> None:
        self._jobs.discard(job)
        if not job.cancelled():
            job.exception()  # retrieved (and logged in _build), so asyncio does not warn at exit

    async def _record(self, name: str) -> pb.EngineRecord:
        manifest = self.store.manifest(name)
        checksum = self.store.checksum(name)
        registered = await self.registry.get(name)
        ok = registered is not None and registered.get("checksum") == checksum
        return engine_record(manifest, self.store.path(name), checksum, registered["status"] if ok else UNREGISTERED)


def _checked_name(name: str) -> str:
    if not NAME_PATTERN.match(name or ""):
        raise InvalidArgument(f"name: {name!r} must match {NAME_PATTERN.pattern}")
    return name


def _request_id(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and isinstance(value, str) and value:
            return value
    return uuid.uuid4().hex
