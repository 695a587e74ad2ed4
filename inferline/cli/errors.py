"""Turning the engine's input errors into one clear line on stderr and a non-zero exit.

The engine names the offending field in its own terms (max_tokens, max_seq_len, ...); the user typed
CLI options, so the message names the option and, where it differs, the engine field too.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Iterator

import typer

from engine import InferlineError, InvalidParameterError

# engine field -> the option a CLI user set it through
OPTION_FOR_FIELD: dict[str, str] = {
    "model": "--model",
    "device": "--device",
    "dtype": "--dtype",
    "kv_cache_dtype": "--kv-cache-dtype",
    "max_tokens": "--max-output-len",
    "temperature": "--temperature",
    "top_k": "--top-k",
    "top_p": "--top-p",
    "seed": "--seed",
    "prompt": "--input-text",
    "messages": "--chat",
    "max_batch_size": "--batch-size",
}

EXIT_BAD_INPUT = 2  # like click's usage errors


def describe(err: InferlineError, overrides: dict[str, str] | None = None) -> str:
    if not isinstance(err, InvalidParameterError):
        return str(err)
    option = {**OPTION_FOR_FIELD, **(overrides or {})}.get(err.field, err.field)
    same = option.lstrip("-") == err.field.lstrip("-").replace("_", "-")
    label = option if same else f"{option} ({err.field})"
    return f"{label}: {err.problem}"


def fail(message: str, code: int = EXIT_BAD_INPUT) -> typer.Exit:
    # Single line on purpose: newlines in a problem text would look like a second error.
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    return typer.Exit(code)


@contextlib.contextmanager
def user_errors(overrides: dict[str, str] | None = None) -> Iterator[None]:
    """Report InferlineError as `error: <option>: <problem>`, no traceback; other exceptions are bugs
    and keep theirs."""
    try:
        yield
    except InferlineError as err:
        sys.stdout.flush()
        raise fail(describe(err, overrides)) from None
