"""Every scheme built from the bundled SmolLM2-135M through build_engine (the builder's own path), then
served by a real worker process on CPU: the quality gates of issue #4 on the real model, the same
inputs giving the same fingerprint (no rebuild), and fp8 refused on a CPU with a clear reason."""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import redis

from builder.build import BuildSpec, build_engine
from builder.quantize.calibration import CalibrationSettings
from builder.quantize.settings import EvalSettings, QuantizeSettings
from engine import Engine, EngineConfig, SamplingParams
from inferline.engine_store import EngineStore, Manifest
from inferline.v1 import common_pb2, router_pb2
from tests.worker.processes import ServiceProcess, one_torch_thread, start_worker, wait_worker_ready
from tests.worker.test_worker_startup import EXIT_ENGINE_UNAVAILABLE, error_line
from tests.worker.workload import collect_events, enqueue

# Building six engines takes ~3 min on a 2-core machine (170 s measured in session 15), several times that
# on slower or shared ones: past the default 600 s per-test timeout the module fixture would run under.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

SERVED = ("int8_wo", "int4_wo", "awq", "gptq", "smoothquant")
# Smaller than the builder's defaults (32 x 256 calibration, 16 scored windows), to fit CI's two cores;
# AWQ's scale search runs ~20 block forwards per layer, so it calibrates on 2 sequences here (~1.5 min).
# The gates hold at these sizes and at larger ones: docs/quantization.md has both.
EVALUATION = EvalSettings(window=512, max_windows=2, greedy_tokens=8)
SETTINGS = {scheme: QuantizeSettings(calibration=CalibrationSettings(num_samples=2 if scheme == "awq" else 8,
                                                                     seq_len=256), evaluation=EVALUATION)
            for scheme in (*SERVED, "fp8")}


def spec(source: Path, scheme: str) -> BuildSpec:
    # The exported HF folder, not the GGUF: the same weights, loaded in a second instead of ~10.
    return BuildSpec.parse(source=str(source), name=f"smol-{scheme.replace('_', '-')}", quantization=scheme,
                           max_batch_size=4, max_seq_len=256)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> EngineStore:
    return EngineStore(tmp_path_factory.mktemp("quantized-store"))


@pytest.fixture(scope="module")
def built(store, smollm2_dir) -> dict[str, Manifest]:
    return {scheme: build_engine(spec(smollm2_dir, scheme), store, (smollm2_dir.parent,), quantize=settings)
            for scheme, settings in SETTINGS.items()}


def quality(manifest: Manifest) -> dict:
    return manifest.quantization["quality"]


def test_int8_weight_only_costs_under_1_percent_perplexity(built):
    q = quality(built["int8_wo"])
    assert abs(q["perplexity_change"]) < 0.01, q  # within 1%, either way (on 1,022 tokens it can come out better)
    assert q["greedy_agreement"] > 0.8 and q["weight_bytes"] < 0.5 * q["reference_weight_bytes"]


def test_smoothquant_costs_under_3_percent_perplexity(built):
    assert abs(quality(built["smoothquant"])["perplexity_change"]) < 0.03, quality(built["smoothquant"])


@pytest.mark.parametrize("scheme", ["awq", "gptq"])
def test_calibrated_int4_beats_round_to_nearest_at_the_same_group_size(built, scheme):
    ours, rtn = quality(built[scheme]), quality(built["int4_wo"])
    assert built[scheme].quantization["group_size"] == built["int4_wo"].quantization["group_size"] == 128
    # GPTQ's default act_order: without it GPTQ is no better than round to nearest on this model
    # (docs/quantization.md has the numbers).
    assert built[scheme].quantization["act_order"] is True
    assert ours["perplexity"] < rtn["perplexity"], (ours, rtn)
    assert ours["calibration_fingerprint"] and not rtn["calibration_fingerprint"]


def test_every_report_says_what_it_measured(built):
    reference = {quality(m)["reference_perplexity"] for m in built.values()}
    assert len(reference) == 1  # one source, one evaluation text: scored once, cached
    for scheme, manifest in built.items():
        q = quality(manifest)
        assert q["eval_tokens"] == 2 * 511 and 0 < q["greedy_agreement"] <= 1
        assert q["peak_build_memory_bytes"] > 0 and q["weight_bytes"] > 0
        assert manifest.quantization["scheme"] == scheme


def test_the_same_inputs_build_the_same_fingerprint_without_rebuilding(built, store, smollm2_dir):
    before = (store.path("smol-gptq") / "model.safetensors").stat().st_mtime_ns
    again = build_engine(spec(smollm2_dir, "gptq"), store, (smollm2_dir.parent,), quantize=SETTINGS["gptq"])
    assert again.fingerprint == built["gptq"].fingerprint
    assert (store.path("smol-gptq") / "model.safetensors").stat().st_mtime_ns == before


def test_every_scheme_is_served_by_a_worker_as_the_engine_generates_it(built, store, redis_url, tmp_path):
    prompt = [1, 504, 3458, 282, 4649, 314]  # token ids: the worker gets ids from the router anyway
    client = redis.Redis.from_url(redis_url)
    workers = {scheme: start_worker(tmp_path, redis_url, built[scheme].name, f"q-{scheme}-{uuid.uuid4().hex[:4]}",
                                    None, store_dir=store.root) for scheme in SERVED}
    try:
        for worker in workers.values():
            wait_worker_ready(client, worker, timeout=180)
        router = f"router-{uuid.uuid4().hex[:6]}"
        rids = {}
        for scheme in SERVED:
            rids[scheme] = f"q-{scheme}"
            enqueue(client, router_pb2.RouteRequest(
                request_id=rids[scheme], model=built[scheme].name, prompt_token_ids=prompt,
                parameters=common_pb2.SamplingParameters(max_tokens=8)), router)
        events = collect_events(client, router, set(rids.values()), timeout=180)
    finally:
        for worker in workers.values():
            worker.stop()
        client.close()
    with one_torch_thread():
        for scheme in SERVED:
            engine = Engine(EngineConfig(model=str(store.path(built[scheme].name)), max_seq_len=256, max_batch_size=1))
            want = engine.generate([prompt], SamplingParams(max_tokens=8))[0].token_ids
            got = [t for e in events[rids[scheme]] for t in e.token_ids]
            assert got == want, scheme


def test_an_fp8_engine_is_refused_on_cpu_saying_why(built, store, tmp_path):
    assert json.loads((store.path("smol-fp8") / "config.json").read_text())["quantization_config"]["scheme"] == "fp8"
    worker = ServiceProcess("worker-fp8", "worker", ["--engine", "smol-fp8", "--store-dir", str(store.root),
                                                     "--device", "cpu", "--redis-url", "redis://127.0.0.1:1/0"],
                            tmp_path)
    code = worker.proc.wait(timeout=120)
    worker.stop()
    assert code == EXIT_ENGINE_UNAVAILABLE
    line = error_line(worker.log_text())
    assert "fp8 needs a CUDA GPU of compute capability >= 8.9" in line["error"]


def test_fp8_on_cpu_still_gets_a_quality_report(built):
    q = quality(built["fp8"])
    assert abs(q["perplexity_change"]) < 0.05 and q["weight_bytes"] < 0.5 * q["reference_weight_bytes"]
