"""`inferline load`'s report arithmetic, errors and pacing (--rps, against an in-process stand-in for the
gateway), and bench/ghz's configs and scripts."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from concurrent import futures
from pathlib import Path
from typing import Iterator

import grpc
import pytest
from google.protobuf import json_format
from typer.testing import CliRunner

from inferline.cli import app
from inferline.cli.load import Pacer
from inferline.cli.load_report import Results, ghz_report, histogram, human_summary, latency_distribution
from inferline.local_redis import free_port
from inferline.v1 import generate_pb2, generate_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
GHZ_DIR = REPO / "bench" / "ghz"
runner = CliRunner()


def test_percentiles_follow_ghz():
    values = list(range(1, 101))  # 1..100 ns
    dist = {row["percentage"]: row["latency"] for row in latency_distribution(values)}
    assert dist == {10: 10, 25: 25, 50: 50, 75: 75, 90: 90, 95: 95, 99: 99}
    assert latency_distribution([7]) == [{"percentage": p, "latency": 7} for p in (10, 25, 50, 75, 90, 95, 99)]
    assert latency_distribution([]) == []


def test_histogram_has_ten_buckets_plus_the_slowest_in_seconds():
    buckets = histogram([1_000_000 * i for i in range(1, 12)])  # 1..11 ms
    assert len(buckets) == 11 and buckets[0]["mark"] == pytest.approx(0.001) and buckets[-1]["mark"] == 0.011
    assert sum(b["count"] for b in buckets) == 11 and sum(b["frequency"] for b in buckets) == pytest.approx(1)


def test_report_counts_errors_like_ghz():
    results = Results()
    for ns in (2_000_000, 4_000_000, 6_000_000):
        results.ok(ns, completion_tokens=16)
    results.failed(1_000_000, grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full")
    report = ghz_report(results, total_ns=2_000_000_000, options={"call": "x"})
    assert report["count"] == 4 and report["rps"] == 2.0 and report["total"] == 2_000_000_000
    assert report["average"] == 3_250_000 and report["fastest"] == 2_000_000 and report["slowest"] == 6_000_000
    assert report["statusCodeDistribution"] == {"OK": 3, "ResourceExhausted": 1}
    assert report["errorDistribution"] == {"rpc error: code = ResourceExhausted desc = queue full": 1}
    assert report["inferline"]["completionTokens"] == 48
    json.dumps(report)  # plain JSON
    text = human_summary(report)
    assert "2.0 requests/s" in text and "p50 4.0 ms" in text and "errors: 1" in text


def test_total_and_duration_exclude_each_other():
    result = runner.invoke(app, ["load", "--total", "5", "--duration", "1"])
    assert result.exit_code == 2 and "--total or --duration" in result.output


def test_no_server_is_one_clear_error():
    result = runner.invoke(app, ["load", "--address", f"127.0.0.1:{free_port()}", "--timeout", "0.5", "-n", "1"])
    assert result.exit_code == 1 and "no gRPC server answered" in result.output


class CountingGateway(generate_pb2_grpc.InferenceServiceServicer):
    """Answers every Generate at once with max_tokens tokens, and counts them."""

    def __init__(self):
        self.calls = 0
        self._lock = threading.Lock()

    def Generate(self, request, context):
        with self._lock:
            self.calls += 1
        n = request.parameters.max_tokens
        return generate_pb2.GenerateResponse(token_ids=list(range(n)), finish_reason=1,
                                             usage={"prompt_tokens": 1, "completion_tokens": n})


@pytest.fixture
def gateway() -> Iterator[tuple[str, CountingGateway]]:
    servicer = CountingGateway()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    generate_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(None)


def test_pacer_spaces_requests_one_over_rps_apart():
    pacer = Pacer(200, start=10.0)
    assert [pacer.due(k) for k in (0, 1, 2, 200)] == pytest.approx([10.0, 10.005, 10.01, 11.0])
    assert Pacer(0, start=10.0).due(1000) == 10.0  # no limit: every request due at once


def test_a_paced_run_sends_every_request_and_no_faster_than_the_limit(gateway, tmp_path):
    address, servicer = gateway
    out = tmp_path / "report.json"
    result = runner.invoke(app, ["load", "--address", address, "--rps", "300", "-c", "10", "-n", "30", "--warmup", "5",
                                 "--max-tokens", "3", "-o", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["count"] == 30 and report["statusCodeDistribution"] == {"OK": 30}
    assert servicer.calls == 35 and report["inferline"]["completionTokens"] == 90  # warm-up sent, not counted
    assert report["options"]["rps"] == 300 and "(--rps 300)" in result.output
    # Request k goes no earlier than k / rps s after the start: the 30th at 29/300 s at the soonest.
    assert report["rps"] <= 300 * 30 / 29


def test_a_paced_run_for_a_duration_sends_only_what_is_due_within_it(gateway, tmp_path):
    address, servicer = gateway
    out = tmp_path / "report.json"
    result = runner.invoke(app, ["load", "--address", address, "-r", "40", "-c", "5", "--duration", "0.5",
                                 "--max-tokens", "1", "-o", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    # Due times 0, 1/40, ... s: 20 of them fall within 0.5 s.
    assert 0 < report["count"] <= 20 and report["statusCodeDistribution"] == {"OK": report["count"]}
    assert servicer.calls == report["count"]


def test_no_limit_is_the_default(gateway, tmp_path):
    address, servicer = gateway
    out = tmp_path / "report.json"
    result = runner.invoke(app, ["load", "--address", address, "-c", "4", "-n", "12", "--max-tokens", "1",
                                 "-o", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["count"] == 12 and report["options"]["rps"] == 0 and "--rps" not in result.output


def configs() -> list[Path]:
    found = sorted(GHZ_DIR.glob("*.json"))
    assert {p.stem for p in found} == {f"{call}_c{c}" for call in ("unary", "stream") for c in (10, 50, 100)} | {
        "unary_c50_rps1000"}
    return found


@pytest.mark.parametrize("path", configs(), ids=lambda p: p.stem)
def test_ghz_configs_name_a_real_method_and_a_valid_request(path):
    cfg = json.loads(path.read_text())
    assert cfg["insecure"] is True and "proto" not in cfg and "protoset" not in cfg  # reflection only
    service_name, method_name = cfg["call"].split("/")
    service = generate_pb2.DESCRIPTOR.pool.FindServiceByName(service_name)
    method = service.methods_by_name[method_name]
    assert method.server_streaming == path.stem.startswith("stream")
    assert method.input_type.full_name == "inferline.v1.GenerateRequest"
    json_format.ParseDict(cfg["data"], generate_pb2.GenerateRequest())  # every field name real
    concurrency, _, rps = path.stem.rsplit("_c", 1)[1].partition("_rps")
    assert cfg["concurrency"] == int(concurrency) and cfg.get("rps", 0) == int(rps or 0)


def test_run_sh_runs_every_config_and_summarises(tmp_path):
    """A stand-in ghz writes a canned report where the resolved config says; run.sh summarises it."""
    canned = Results()
    for ns in (10_000_000, 20_000_000):
        canned.ok(ns, 16)
    (tmp_path / "canned.json").write_text(json.dumps(ghz_report(canned, 1_000_000_000, {})))
    fake = tmp_path / "ghz"
    fake.write_text(f"""#!{sys.executable}
import json, shutil, sys
assert sys.argv[1] == "--config"
cfg = json.load(open(sys.argv[2]))
assert cfg["host"] == "gw:1234" and cfg["format"] == "json" and cfg["data"]["model"] == "m"
assert cfg["metadata"] == {{"authorization": "Bearer k"}}
shutil.copy({str(tmp_path / "canned.json")!r}, cfg["output"])
""")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    assert os.access(GHZ_DIR / "run.sh", os.X_OK)
    env = {**os.environ, "TARGET": "gw:1234", "MODEL": "m", "API_KEY": "k", "GHZ": str(fake),
           "OUT": str(tmp_path / "out"), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(GHZ_DIR / "run.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines()[1:]]
    assert sorted(r[0] for r in rows) == sorted(p.stem for p in configs())
    assert all(r[1:] == ["2", "2.0", "10.0", "20.0", "0"] for r in rows)


def test_run_sh_says_when_ghz_is_missing(tmp_path):
    env = {**os.environ, "GHZ": str(tmp_path / "no-ghz")}
    proc = subprocess.run(["bash", str(GHZ_DIR / "run.sh")], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 127 and "not found" in proc.stderr
