"""`inferline generate "prompt"`: stream an answer from a running gateway."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from inferline.client import Client, InferlineError, Request
from inferline.cli.errors import fail


def generate(
    prompt: Annotated[str, typer.Argument(help="What to ask.")],
    address: Annotated[str, typer.Option(envvar="INFERLINE_ADDRESS", help="Gateway HOST:PORT.")] = "127.0.0.1:50051",
    model: Annotated[str, typer.Option(help="Engine name (see the gateway's ListModels).")] = "smollm2-135m",
    max_tokens: Annotated[int, typer.Option(help="Tokens to generate at most.")] = 256,
    chat: Annotated[bool, typer.Option(help="Send the prompt as a user message (chat template) or raw.")] = True,
    temperature: Annotated[Optional[float], typer.Option(help="0 = greedy (the server's default).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Sampling seed.")] = None,
    api_key: Annotated[Optional[str], typer.Option(envvar="INFERLINE_API_KEY", help="Bearer key, if the gateway asks.")] = None,
    timeout: Annotated[float, typer.Option(help="Deadline of the whole call, seconds.")] = 300.0,
) -> None:
    """Stream the model's answer to stdout as it is generated."""
    request = Request(model=model, max_tokens=max_tokens, temperature=temperature, seed=seed,
                      **({"messages": [{"role": "user", "content": prompt}]} if chat else {"prompt": prompt}))
    with Client(address, api_key=api_key) as client:
        try:
            for chunk in client.generate_stream(request, timeout=timeout):
                typer.echo(chunk.text_delta, nl=False)
        except InferlineError as err:
            typer.echo("")
            raise fail(f"{err.code.name.lower()}: {err.message}", code=1) from None
    typer.echo("")
