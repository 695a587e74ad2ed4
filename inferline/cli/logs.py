"""Logging for the CLI: every log line goes to stderr, so stdout carries only results.

structlog's default logger prints to stdout, which would corrupt `run --json` and the benchmark
lines; configuring it here fixes that for the engine's loggers too (they are lazy proxies, bound
on first use).
"""
from __future__ import annotations

import logging
import os
import sys

import structlog

LEVELS = ("debug", "info", "warning", "error")


def configure_logging(level: str) -> None:
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False),
            structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        # sys.stderr is looked up per logger, not captured now: a test harness may swap and close it.
        logger_factory=lambda *_: structlog.PrintLogger(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Offline tools: the tokenizer's thread pool only adds fork warnings here.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
