"""`python -m worker --engine NAME [--store-dir DIR]`: serve one engine from its Redis stream.

The engine is verified in the store (every file's sha256) before it is loaded. Development and tests
only: `--model-path FOLDER` serves a plain HF folder (or a bundled model name) with no store, under
the model name given by --engine; --max-batch-size and --max-seq-len then stand in for the manifest.
Benchmarks only: `--engine-kind synthetic-benchmark-only [--synthetic-engine-step-ms 2]` loads no model
and answers with synthetic tokens (worker/synthetic_engine.py), to load-test the control plane.
`python -m worker --help` lists every setting; each is also INFERLINE_WORKER_<NAME> in the environment.
Once the engine is loaded, grpc.health.v1 answers on --health-port (worker/health.py: liveness from the
step loop, readiness from a one-token probe through the engine); readiness turns NOT_SERVING on SIGTERM.

Exit status: 0 after SIGTERM/SIGINT (running requests drained), 78 (EX_CONFIG) when the engine is
missing, corrupt or unloadable, 1 when the loop fails or the health port cannot be bound.
"""
from __future__ import annotations

import asyncio
import signal
import sys

import structlog
from pydantic_settings import CliApp
from redis.exceptions import RedisError

from inferline.logs import configure_service_logging
from inferline.metrics import start_metrics_server
from worker.health_server import HealthPortError, WorkerHealth
from worker.heartbeat import Heartbeat
from worker.loop import StepLoop
from worker.queue import RequestQueue
from inferline.heap import freeze_long_lived
from inferline.redis_protocol import connect
from worker.settings import WorkerSettings
from worker.startup import EngineUnavailableError, load_engine

EXIT_ENGINE_UNAVAILABLE = 78  # sysexits EX_CONFIG

log = structlog.get_logger("worker")


async def serve(settings: WorkerSettings, engine) -> None:
    client = connect(settings.redis_url)
    queue = RequestQueue(client, settings.engine, settings.worker_id, settings.results_maxlen, settings.results_ttl_s,
                         band_max_wait_ms=round(settings.band_max_wait_s * 1000))
    step_loop = StepLoop(engine, queue, settings)
    heartbeat = Heartbeat(client, queue, step_loop, settings)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    try:
        health = WorkerHealth(step_loop, settings)
        await health.start()
        try:
            await queue.ensure_group()
            await heartbeat.beat()  # registered only now: the engine is loaded and the stream reachable
            freeze_long_lived()
            heartbeat_task = asyncio.create_task(heartbeat.run(), name="heartbeat")
            try:
                await run_until_stopped(step_loop, queue, stop, settings, health)
            finally:
                heartbeat_task.cancel()
                await heartbeat.withdraw()
            log.info("worker_stopped")
        finally:
            await health.stop()
    finally:
        await client.aclose()


async def run_until_stopped(step_loop: StepLoop, queue: RequestQueue, stop: asyncio.Event,
                            settings: WorkerSettings, health: WorkerHealth) -> None:
    """Run the loop until a signal, then drain: readiness turns NOT_SERVING at once; running requests
    may finish within the drain timeout; those that do not are handed back, un-acknowledged, for
    another worker to run."""
    loop_task = asyncio.create_task(step_loop.run(), name="step-loop")
    log.info("worker_ready", model=settings.engine, engine_kind=settings.engine_kind,
             max_batch_size=step_loop.max_batch_size)
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait([loop_task, stopping], return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if loop_task.done():
        loop_task.result()  # the loop only ends on its own by failing: raise its error
    step_loop.drain()
    await health.refresh()
    try:
        await asyncio.wait_for(asyncio.shield(loop_task), settings.drain_timeout_s)
    except TimeoutError:
        unfinished = step_loop.own_entry_ids()
        loop_task.cancel()
        await queue.release(unfinished, settings.autoclaim_min_idle_ms)
        log.warning("drain_timeout", handed_back=len(unfinished))
    else:
        await queue.forget_consumer()  # nothing pending under our name: leave the group tidy


def main() -> int:
    settings = CliApp.run(WorkerSettings)
    configure_service_logging("worker", settings.log_level)
    structlog.contextvars.bind_contextvars(worker_id=settings.worker_id)
    start_metrics_server(settings.metrics_port, service="worker")  # worker/metrics.py; a daemon thread
    try:
        engine = load_engine(settings)
    except EngineUnavailableError as e:
        log.error("engine_unavailable", engine=settings.engine, error=str(e))
        return EXIT_ENGINE_UNAVAILABLE
    try:
        asyncio.run(serve(settings, engine))
    except RedisError as e:
        log.error("redis_unavailable", redis_url=settings.redis_url, error=str(e))
        return 1
    except HealthPortError as e:
        log.error("health_port_unavailable", port=settings.health_port, error=str(e),
                  message="give each worker on a host its own health_port")
        return 1
    except Exception:
        log.exception("worker_failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
