"""`python -m gateway`: serve InferenceService until SIGTERM/SIGINT, then drain and exit 0.

Settings come from INFERLINE_GATEWAY_* (see settings.py); flags override them.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from typing import Any

import structlog

from gateway.server import create_gateway
from gateway.settings import GatewaySettings
from inferline.heap import freeze_long_lived
from inferline.logs import configure_service_logging
from inferline.metrics import start_metrics_server

log = structlog.get_logger("gateway")


def parse_args(argv: list[str]) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m gateway", description="The inferline public gRPC gateway.")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--metrics-port", type=int)
    p.add_argument("--router-address")
    p.add_argument("--router-streams", type=int)
    p.add_argument("--router-write-interval-ms", type=float)
    p.add_argument("--store-dir")
    p.add_argument("--redis-url")
    p.add_argument("--max-tokens-limit", type=int)
    p.add_argument("--max-prompt-bytes", type=int)
    p.add_argument("--shutdown-grace-s", type=float)
    p.add_argument("--log-level")
    # Only flags given on the command line override the environment.
    return {k: v for k, v in vars(p.parse_args(argv)).items() if v is not None}


async def serve(settings: GatewaySettings) -> None:
    gateway = create_gateway(settings)
    await gateway.start()
    freeze_long_lived()
    metrics_server = start_metrics_server(settings.metrics_port, settings.host, service="gateway")
    log.info(f"gateway listening on {settings.host}:{gateway.port}", router=settings.router_address,
             store=str(settings.store_dir), auth=bool(settings.api_keys), redis=bool(settings.redis_url))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("gateway stopping", grace_s=settings.shutdown_grace_s)
    await gateway.stop(settings.shutdown_grace_s)
    if metrics_server is not None:
        metrics_server.stop()
    log.info("gateway stopped")


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    settings = GatewaySettings(**parse_args(sys.argv[1:] if argv is None else argv))
    configure_service_logging("gateway", settings.log_level, json=settings.log_json)
    try:
        asyncio.run(serve(settings))
    except FileNotFoundError as e:  # a missing store: a configuration error, not a crash
        log.error("gateway cannot start", error=str(e))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
