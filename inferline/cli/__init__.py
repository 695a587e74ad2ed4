"""The `inferline` console script: a typer app with one module per command."""
from __future__ import annotations

from typing import Annotated

import typer

from inferline.cli.bench import MEMORY_HELP, bench
from inferline.cli.bench_plots import bench_plot
from inferline.cli.build import build
from inferline.cli.generate import generate
from inferline.cli.load import load
from inferline.cli.logs import LEVELS, configure_logging
from inferline.cli.run import run
from inferline.cli.up import up

app = typer.Typer(
    name="inferline",
    help="inferline's command line: run or benchmark a model offline, start a local stack, query a gateway.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals can be whole tensors
)
app.command("run")(run)
app.command("bench", epilog=MEMORY_HELP)(bench)
app.command("bench-plot")(bench_plot)
app.command("up")(up)
app.command("generate")(generate)
app.command("load")(load)
app.command("build")(build)


@app.callback()
def _setup(
    log_level: Annotated[str, typer.Option(help=f"Log level of the stderr log: {', '.join(LEVELS)}.")] = "info",
) -> None:
    # Runs before every command, so logs are routed to stderr however the app is invoked (script or CliRunner).
    if log_level not in LEVELS:
        raise typer.BadParameter(f"must be one of {', '.join(LEVELS)}", param_hint="--log-level")
    configure_logging(log_level)


def main() -> None:
    app()


__all__ = ["app", "main"]
