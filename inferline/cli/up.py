"""`inferline up`: a whole local stack in one command.

Redis (REDIS_URL, or a redis-server started here on a free port), the builder (building the default
engine into the store if it is missing, with a progress bar), the router, N workers and the gateway,
each a child process with its log under <state-dir>/logs. Stays in the foreground until interrupted,
then stops everything it started, in reverse order (services drain on SIGTERM).
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path
from typing import Annotated, Optional

import grpc
import typer
from tqdm import tqdm

from inferline.cli.errors import fail
from inferline.client import Client, InferlineError, Request
from inferline.local_redis import free_port, local_redis_server
from inferline.stack import ServiceFailed, ServiceProcess, wait_healthy
from inferline.v1 import builder_pb2, builder_pb2_grpc


def up(
    host: Annotated[str, typer.Option(help="Address the gateway listens on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Gateway port.")] = 50051,
    model: Annotated[str, typer.Option(help="Source of the default engine: a bundled name, HF folder or .gguf.")] = "smollm2-135m",
    engine: Annotated[Optional[str], typer.Option(help="Engine name to serve (default: the model's name).")] = None,
    device: Annotated[str, typer.Option(help="Workers' device: cpu or cuda.")] = "cpu",
    workers: Annotated[int, typer.Option(min=1, help="Worker processes (one per GPU on a GPU machine).")] = 1,
    state_dir: Annotated[Path, typer.Option(help="Engine store and logs live here.")] = Path(".inferline"),
    prompt: Annotated[Optional[str], typer.Option(help="Ask this once the stack is up and print the answer.")] = None,
    synthetic_engine_step_ms: Annotated[Optional[float], typer.Option(
        min=0, help="BENCHMARKS ONLY: workers load no model and answer with synthetic tokens, one per running "
                    "request every this many ms (the gateway still tokenizes with the built engine).")] = None,
) -> None:
    """Start Redis (unless REDIS_URL is set), builder, router, workers and gateway; Ctrl-C stops them."""
    engine_name = engine or Path(model).stem.lower().replace("_", "-")
    state_dir = state_dir.resolve()
    store_dir, log_dir = state_dir / "engines", state_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    started: list[ServiceProcess] = []
    try:
        with contextlib.ExitStack() as stack:
            redis_url = os.environ.get("REDIS_URL") or stack.enter_context(local_redis_server(state_dir))
            typer.echo(f"redis: {redis_url}" + ("" if os.environ.get("REDIS_URL") else " (started here)"), err=True)
            common = {"REDIS_URL": redis_url}
            builder_port, router_port = free_port(), free_port()
            source_root = Path(model).expanduser().resolve().parent if Path(model).expanduser().exists() else None
            builder = _start(started, "builder", "builder", log_dir, common | {
                "INFERLINE_BUILDER_HOST": "127.0.0.1", "INFERLINE_BUILDER_PORT": str(builder_port),
                "INFERLINE_BUILDER_STORE_DIR": str(store_dir),
                "INFERLINE_BUILDER_ALLOWED_ROOTS": str(source_root or "")})
            wait_healthy(builder, f"127.0.0.1:{builder_port}")
            _build(f"127.0.0.1:{builder_port}", model, engine_name, device)
            router = _start(started, "router", "router", log_dir, common | {"INFERLINE_ROUTER_HOST": "127.0.0.1",
                                                                          "INFERLINE_ROUTER_PORT": str(router_port)})
            wait_healthy(router, f"127.0.0.1:{router_port}")
            synthetic = {} if synthetic_engine_step_ms is None else {
                "INFERLINE_WORKER_ENGINE_KIND": "synthetic-benchmark-only",
                "INFERLINE_WORKER_SYNTHETIC_ENGINE_STEP_MS": str(synthetic_engine_step_ms)}
            if synthetic:
                typer.echo("WARNING: workers run a synthetic engine (benchmarks only): answers are not a model's",
                           err=True)
            for i in range(workers):
                _start(started, f"worker-{i}", "worker", log_dir, common | synthetic | {
                    "INFERLINE_WORKER_ENGINE": engine_name, "INFERLINE_WORKER_STORE_DIR": str(store_dir),
                    "INFERLINE_WORKER_HEALTH_PORT": str(free_port()),  # one grpc.health.v1 port per worker
                    "INFERLINE_WORKER_DEVICE": device if device == "cpu" or workers == 1 else f"cuda:{i}"})
            gateway = _start(started, "gateway", "gateway", log_dir, common | {
                "INFERLINE_GATEWAY_HOST": host, "INFERLINE_GATEWAY_PORT": str(port),
                "INFERLINE_GATEWAY_ROUTER_ADDRESS": f"127.0.0.1:{router_port}",
                "INFERLINE_GATEWAY_STORE_DIR": str(store_dir)})
            address = f"{host}:{port}"
            wait_healthy(gateway, address)
            _wait_for_workers(address, engine_name, started)
            typer.echo(f"gateway listening on {address}")
            typer.echo(f'  try: inferline generate --address {address} --model {engine_name} "What is a KV cache?"')
            typer.echo(f"  logs: {log_dir}; Ctrl-C stops everything")
            if prompt:
                _ask(address, engine_name, prompt)
            while not stop.wait(0.5):
                for service in started:
                    service.check_alive()
    except ServiceFailed as err:
        raise fail(str(err), code=1) from None
    finally:
        for service in reversed(started):
            service.stop()
        typer.echo("stopped", err=True)


def _start(started: list[ServiceProcess], name: str, module: str, log_dir: Path, env: dict[str, str]) -> ServiceProcess:
    service = ServiceProcess(name, module, env, log_dir)
    service.start()
    started.append(service)
    return service


def _build(address: str, source: str, name: str, device: str) -> None:
    request = builder_pb2.BuildEngineRequest(source=source, name=name, max_batch_size=16,
                                             dtype="float32" if device == "cpu" else "bfloat16")
    with grpc.insecure_channel(address) as channel, tqdm(total=100, desc=f"engine {name}", unit="%") as bar:
        try:
            for event in builder_pb2_grpc.BuilderServiceStub(channel).BuildEngine(request, timeout=1800):
                bar.set_postfix_str(event.stage)
                bar.update(round(100 * event.fraction) - bar.n)
        except grpc.RpcError as err:
            raise ServiceFailed(f"building engine {name!r} failed: {err.code().name}: {err.details()}") from None


def _wait_for_workers(address: str, engine_name: str, started: list[ServiceProcess], timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    with Client(address) as client:
        while time.monotonic() < deadline:
            for service in started:
                service.check_alive()
            with contextlib.suppress(InferlineError):
                if any(m.name == engine_name and m.workers > 0 for m in client.list_models()):
                    return
            time.sleep(0.5)
    raise ServiceFailed(f"no worker came up for {engine_name!r} within {timeout_s:.0f} s")


def _ask(address: str, engine_name: str, prompt: str) -> None:
    typer.echo(f"> {prompt}")
    request = Request(model=engine_name, messages=[{"role": "user", "content": prompt}], max_tokens=128)
    with Client(address) as client:
        for chunk in client.generate_stream(request, timeout=300):
            typer.echo(chunk.text_delta, nl=False)
    typer.echo("")
