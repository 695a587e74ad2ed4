"""`inferline load`: a gRPC load generator for the gateway (grpc.aio), a Python stand-in for ghz.

`--concurrency` callers send requests (Generate or GenerateStream) until `--total` requests have been
sent or `--duration` seconds have passed (calls in flight then finish and count): back to back (a
closed loop), or, with `--rps`, no faster than that many requests per second across all callers (ghz's
`--rps`, a constant load schedule: request k goes no earlier than k / rps seconds after the start, so
callers that fell behind catch up). Latency is measured per request from its send.
The JSON report has the shape of ghz's `-O json` (durations in nanoseconds), so bench/ghz/run.sh's
summary reads both; a short summary (requests/s, p50/p90/p99, errors) goes to stderr.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import grpc
import typer
from google.protobuf import json_format

from inferline.cli.errors import fail
from inferline.cli.load_report import Results, ghz_report, human_summary
from inferline.client import Request
from inferline.v1 import common_pb2, generate_pb2, generate_pb2_grpc

SERVICE = "inferline.v1.InferenceService"


class Call(str, Enum):
    unary = "unary"
    stream = "stream"


def load(
    address: Annotated[str, typer.Option(envvar="INFERLINE_ADDRESS", help="Gateway HOST:PORT.")] = "127.0.0.1:50051",
    call: Annotated[Call, typer.Option(help="unary: Generate; stream: GenerateStream (latency = until the last chunk).")] = Call.unary,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1, help="Callers sending at once.")] = 10,
    total: Annotated[Optional[int], typer.Option("--total", "-n", min=1, help="Requests to send (default 200 unless --duration).")] = None,
    duration: Annotated[Optional[float], typer.Option("--duration", "-z", min=0.001, help="Send for this many seconds instead of --total.")] = None,
    model: Annotated[str, typer.Option(help="Engine name (see the gateway's ListModels).")] = "smollm2-135m",
    prompt: Annotated[str, typer.Option(help="The request's prompt.")] = "Hello",
    chat: Annotated[bool, typer.Option(help="Send the prompt as a user message (chat template) rather than raw.")] = False,
    max_tokens: Annotated[int, typer.Option(min=1, help="max_tokens of every request.")] = 16,
    ignore_eos: Annotated[bool, typer.Option(help="Generate max_tokens even past eos (fixed-length outputs).")] = False,
    api_key: Annotated[Optional[str], typer.Option(envvar="INFERLINE_API_KEY", help="Bearer key, if the gateway asks.")] = None,
    timeout: Annotated[float, typer.Option(min=0.001, help="Deadline of each call, seconds.")] = 20.0,
    connections: Annotated[int, typer.Option(min=1, help="gRPC channels the callers share round-robin.")] = 1,
    rps: Annotated[int, typer.Option("--rps", "-r", min=0, help="Requests per second across all callers, at most "
                                     "(ghz's --rps); 0 = no limit (back to back).")] = 0,
    warmup: Annotated[int, typer.Option(min=0, help="Requests sent (at --concurrency and --rps) before the clock starts; "
                                        "not counted.")] = 0,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the JSON report here instead of stdout.")] = None,
) -> None:
    """Load-test a gateway; JSON report (ghz -O json shape) on stdout or --output, summary on stderr."""
    if total is not None and duration is not None:
        raise fail("give --total or --duration, not both")
    if total is None and duration is None:
        total = 200
    request = Request(model=model, max_tokens=max_tokens, ignore_eos=ignore_eos,
                      **({"messages": [{"role": "user", "content": prompt}]} if chat else {"prompt": prompt})).to_proto()
    metadata = (("authorization", f"Bearer {api_key}"),) if api_key else None
    options = {"host": address, "call": f"{SERVICE}/{'Generate' if call is Call.unary else 'GenerateStream'}",
               "insecure": True, "total": total or 0, "concurrency": concurrency, "connections": connections,
               "duration": int((duration or 0) * 1e9), "timeout": int(timeout * 1e9), "rps": rps,
               "data": json.loads(_to_json(request)), "CPUs": 1}
    try:
        report = asyncio.run(run_load(address, call, request, metadata, concurrency, total, duration, timeout,
                                      connections, warmup, options, rps))
    except TimeoutError:
        raise fail(f"no gRPC server answered on {address} within {timeout:g} s", code=1) from None
    text = json.dumps(report, indent=2)
    if output is None:
        typer.echo(text)
    else:
        output.write_text(text + "\n")
    typer.echo(human_summary(report), err=True)


def _to_json(message) -> str:
    return json_format.MessageToJson(message, preserving_proto_field_name=True, indent=None)


async def run_load(address: str, call: Call, request: generate_pb2.GenerateRequest,
                   metadata: tuple[tuple[str, str], ...] | None, concurrency: int, total: int | None,
                   duration: float | None, timeout: float, connections: int = 1, warmup: int = 0,
                   options: dict | None = None, rps: int = 0) -> dict:
    """Run the load (`rps` > 0: paced to that many requests per second); the ghz-shaped report."""
    channels = [grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(connections)]
    stubs = [generate_pb2_grpc.InferenceServiceStub(ch) for ch in channels]
    try:
        for ch in channels:
            await asyncio.wait_for(ch.channel_ready(), timeout)
        if warmup:
            await _drive(stubs, call, request, metadata, concurrency, warmup, None, timeout, Results(), rps)
        results = Results()
        started = time.perf_counter_ns()
        await _drive(stubs, call, request, metadata, concurrency, total, duration, timeout, results, rps)
        total_ns = time.perf_counter_ns() - started
    finally:
        for ch in channels:
            await ch.close()
    return ghz_report(results, total_ns, options or {})


class Pacer:
    """ghz's constant load schedule: request `ticket` (0, 1, ...) is due `ticket / rps` seconds after
    `start` (perf_counter seconds); rps 0 = no limit, every request due at once. A caller that takes a
    ticket whose time has passed sends at once, so a run that fell behind catches up, as ghz's does."""

    def __init__(self, rps: float, start: float):
        self.rps = rps
        self.start = start

    def due(self, ticket: int) -> float:
        return self.start + ticket / self.rps if self.rps > 0 else self.start


async def _drive(stubs, call: Call, request, metadata, concurrency: int, total: int | None, duration: float | None,
                 timeout: float, results: Results, rps: int = 0) -> None:
    tickets = itertools.count()
    start = time.perf_counter()
    pacer = Pacer(rps, start)
    deadline = start + duration if duration is not None else None
    one = _unary if call is Call.unary else _stream

    async def caller(i: int) -> None:
        stub = stubs[i % len(stubs)]
        while True:
            ticket = next(tickets)
            if deadline is None and ticket >= total:
                return
            due = pacer.due(ticket)
            if deadline is not None and max(due, time.perf_counter()) >= deadline:
                return
            if (wait := due - time.perf_counter()) > 0:
                await asyncio.sleep(wait)
            await one(stub, request, metadata, timeout, results)  # latency from here: the send

    await asyncio.gather(*(caller(i) for i in range(concurrency)))


async def _unary(stub, request, metadata, timeout: float, results: Results) -> None:
    start = time.perf_counter_ns()
    try:
        response = await stub.Generate(request, timeout=timeout, metadata=metadata)
    except grpc.aio.AioRpcError as err:
        results.failed(time.perf_counter_ns() - start, err.code(), err.details() or "")
        return
    results.ok(time.perf_counter_ns() - start, response.usage.completion_tokens)


async def _stream(stub, request, metadata, timeout: float, results: Results) -> None:
    start = time.perf_counter_ns()
    tokens, first = 0, None
    try:
        async for chunk in stub.GenerateStream(request, timeout=timeout, metadata=metadata):
            if first is None:
                first = time.perf_counter_ns() - start
            if chunk.finish_reason != common_pb2.FINISH_REASON_UNSPECIFIED:
                tokens = chunk.usage.completion_tokens
    except grpc.aio.AioRpcError as err:
        results.failed(time.perf_counter_ns() - start, err.code(), err.details() or "")
        return
    results.ok(time.perf_counter_ns() - start, tokens)
    if first is not None:
        results.first_chunk_ns.append(first)
