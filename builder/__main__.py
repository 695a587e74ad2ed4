"""`python -m builder [--flags]`: run the builder service until SIGTERM or SIGINT.

Settings come from flags, then INFERLINE_BUILDER_* variables, then defaults (builder/settings.py;
`--help` lists them). On SIGTERM the builder drains: health turns NOT_SERVING, new builds are refused,
running builds finish and stream to the end, then it exits 0. Exit 2: invalid settings; 1: it could
not start (Redis unreachable, store not writable, port taken).
"""
from __future__ import annotations

import asyncio
import signal
import sys

import structlog
from pydantic import ValidationError
from pydantic_settings import CliApp

from builder.app import StartupError, serve
from builder.settings import BuilderSettings
from inferline.logs import configure_service_logging
from inferline.metrics import start_metrics_server


def main(argv: list[str] | None = None) -> int:
    try:
        settings = CliApp.run(BuilderSettings, cli_args=sys.argv[1:] if argv is None else argv)
    except ValidationError as e:
        problems = "\n".join(f"  {'.'.join(map(str, err['loc'])) or 'settings'}: {err['msg']}" for err in e.errors())
        print(f"python -m builder: invalid settings\n{problems}", file=sys.stderr)
        return 2
    configure_service_logging("builder", settings.log_level)
    try:
        asyncio.run(_run(settings))
    except StartupError as e:
        structlog.get_logger("builder").error("builder_start_failed", error=str(e))
        return 1
    return 0


async def _run(settings: BuilderSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    metrics_server = start_metrics_server(settings.metrics_port, settings.host, service="builder")
    try:
        await serve(settings, stop)
    finally:
        if metrics_server is not None:
            metrics_server.stop()


if __name__ == "__main__":
    sys.exit(main())
