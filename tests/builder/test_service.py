"""BuilderService through gRPC against a real server and Redis: builds, no-rebuilds, the store's
checksums, the registry, lookups, deletes, and refusals with the right status and field."""
from __future__ import annotations

import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from safetensors import safe_open

from builder.build import STAGES
from engine import Engine, EngineConfig, SamplingParams
from inferline.engine_store import MANIFEST, EngineCorruptError, EngineStore, sha256_file
from inferline.v1 import builder_pb2 as pb
from tests.builder.conftest import TINY_PROMPT

BUNDLED = pb.BuildEngineRequest(source="smollm2-135m", name="smollm2", max_batch_size=8, max_seq_len=2048)


def build(stub, **fields) -> list[pb.BuildEvent]:
    return list(stub.BuildEngine(pb.BuildEngineRequest(**fields), timeout=120))


def refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def assert_well_formed(events: list[pb.BuildEvent]) -> pb.EngineRecord:
    """Stages in pipeline order, fractions never going back and ending at 1.0, the record last."""
    order = [STAGES.index(e.stage) for e in events]
    assert order == sorted(order), [e.stage for e in events]
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert [e.HasField("engine") for e in events] == [False] * (len(events) - 1) + [True]
    assert events[-1].stage == "done" and events[-1].engine.status == "ready"
    return events[-1].engine


def assert_store_matches(record: pb.EngineRecord) -> dict:
    folder = Path(record.path)
    manifest_bytes = (folder / MANIFEST).read_bytes()
    assert record.checksum == hashlib.sha256(manifest_bytes).hexdigest()
    manifest = json.loads(manifest_bytes)
    assert manifest["fingerprint"] == record.fingerprint and manifest["files"]
    for rel, meta in manifest["files"].items():
        assert sha256_file(folder / rel) == meta["sha256"], rel
    assert record.size_bytes == sum(m["bytes"] for m in manifest["files"].values())
    return manifest


@pytest.fixture(scope="module")
def bundled_builds(stub) -> tuple[list[pb.BuildEvent], list[pb.BuildEvent]]:
    """The bundled model built once (~10 s) by two concurrent calls: one builds, the other waits for it."""
    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(lambda _: list(stub.BuildEngine(BUNDLED, timeout=180)), range(2))
    return first, second


def test_bundled_build_streams_progress_and_stores_a_verified_engine(bundled_builds, builder_server):
    builds = [[e for e in events if e.stage == "convert"] for events in bundled_builds]
    assert sorted(map(bool, builds)) == [False, True], "exactly one of two concurrent builds converts"
    for events in bundled_builds:
        record = assert_well_formed(events)
        assert (record.name, record.dtype, record.quantization, record.architecture) == \
               ("smollm2", "float32", "none", "llama")
        assert (record.max_batch_size, record.max_seq_len) == (8, 2048)
        manifest = assert_store_matches(record)
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(manifest["files"])
    assert bundled_builds[0][-1].engine == bundled_builds[1][-1].engine
    waiter = next(events for events in bundled_builds if not any(e.stage == "convert" for e in events))
    assert "waiting" in waiter[0].message
    EngineStore(builder_server.settings.store_dir).verify("smollm2")


def test_same_inputs_again_rebuild_nothing(stub, bundled_builds):
    record = bundled_builds[0][-1].engine
    folder = Path(record.path)
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    started = time.monotonic()
    events = list(stub.BuildEngine(BUNDLED, timeout=60))
    elapsed = time.monotonic() - started
    again = assert_well_formed(events)
    assert again == record  # same fingerprint, checksum, created_at: the same engine
    assert "convert" not in {e.stage for e in events}
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before
    assert elapsed < 8, f"a no-op build took {elapsed:.1f} s"


def test_registry_holds_the_engine(stub, bundled_builds, registry):
    record = bundled_builds[0][-1].engine
    assert registry.hgetall("inferline:engine:smollm2") == {
        "name": "smollm2", "fingerprint": record.fingerprint, "path": record.path, "checksum": record.checksum,
        "status": "ready"}
    assert registry.sismember("inferline:engines", "smollm2")


def test_hf_folder_engine_generates_what_the_source_generates(stub, tiny_llama_dir):
    record = assert_well_formed(build(stub, source=str(tiny_llama_dir), name="tiny", max_batch_size=2))
    manifest = assert_store_matches(record)
    assert (record.dtype, record.max_seq_len) == ("float32", 128)  # the checkpoint's own, its context
    assert "README.md" not in manifest["files"]
    params = SamplingParams(max_tokens=12, ignore_eos=True)
    outputs = [Engine(EngineConfig(model=model, max_batch_size=2, max_seq_len=64)).generate([TINY_PROMPT], params)[0]
               for model in (str(tiny_llama_dir), record.path)]
    assert outputs[0].token_ids == outputs[1].token_ids and len(outputs[0].token_ids) == 12


def test_new_inputs_under_a_name_replace_its_engine(stub, tiny_llama_dir, registry):
    first = assert_well_formed(build(stub, source=str(tiny_llama_dir), name="tiny-bf16", max_batch_size=2))
    second = assert_well_formed(build(stub, source=str(tiny_llama_dir), name="tiny-bf16", max_batch_size=2,
                                      dtype="bfloat16"))
    assert second.fingerprint != first.fingerprint and second.dtype == "bfloat16"
    assert_store_matches(second)
    with safe_open(str(Path(second.path) / "model.safetensors"), framework="pt") as f:
        assert str(f.get_tensor("model.norm.weight").dtype) == "torch.bfloat16"
    assert registry.hget("inferline:engine:tiny-bf16", "fingerprint") == second.fingerprint


def test_a_corrupt_engine_fails_verification_and_is_rebuilt(stub, tiny_llama_dir, builder_server):
    record = assert_well_formed(build(stub, source=str(tiny_llama_dir), name="tiny-corrupt", max_batch_size=2))
    weights = Path(record.path) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, one bit pattern changed: only the sha256 can tell
    weights.write_bytes(bytes(data))
    store = EngineStore(builder_server.settings.store_dir)
    with pytest.raises(EngineCorruptError, match="model.safetensors"):
        store.verify("tiny-corrupt")
    events = build(stub, source=str(tiny_llama_dir), name="tiny-corrupt", max_batch_size=2)
    assert "convert" in {e.stage for e in events}  # same fingerprint, but the files did not verify
    assert assert_well_formed(events).fingerprint == record.fingerprint
    store.verify("tiny-corrupt")


def test_get_list_delete(stub, tiny_llama_dir, registry, bundled_builds):
    record = assert_well_formed(build(stub, source=str(tiny_llama_dir), name="tiny-delete", max_batch_size=1))
    assert stub.GetEngine(pb.GetEngineRequest(name="tiny-delete")) == record
    listed = {e.name: e for e in stub.ListEngines(pb.ListEnginesRequest()).engines}
    assert listed["tiny-delete"] == record and listed["smollm2"] == bundled_builds[0][-1].engine
    deleted = stub.DeleteEngine(pb.DeleteEngineRequest(name="tiny-delete"))
    assert deleted.engine == record
    assert not Path(record.path).exists()
    assert not registry.exists("inferline:engine:tiny-delete")
    assert not registry.sismember("inferline:engines", "tiny-delete")
    for call in (lambda: stub.GetEngine(pb.GetEngineRequest(name="tiny-delete")),
                 lambda: stub.DeleteEngine(pb.DeleteEngineRequest(name="tiny-delete"))):
        assert refused(call).code() == grpc.StatusCode.NOT_FOUND
    assert "tiny-delete" not in {e.name for e in stub.ListEngines(pb.ListEnginesRequest()).engines}


@pytest.mark.parametrize("fields, field, says", [
    (dict(name="Bad Name"), "name", "must match"),
    (dict(name=""), "name", "must match"),
    (dict(dtype="float64"), "dtype", "float32, bfloat16, float16"),
    (dict(quantization="magic"), "quantization", "unknown scheme"),
    (dict(quantization="int8_wo"), "source", "has no tokenizer files"),
    (dict(quantization="int4_wo", quantization_options=pb.QuantizationOptions(group_size=48)),
     "quantization_options.group_size", "multiple of 32"),
    (dict(quantization="smoothquant", quantization_options=pb.QuantizationOptions(smoothquant_alpha=1.5)),
     "quantization_options.alpha", "[0, 1]"),
    (dict(quantization="fp8", quantization_options=pb.QuantizationOptions(fp8_granularity="row")),
     "quantization_options.fp8_granularity", "tensor"),
    (dict(quantization="fp8", quantization_options=pb.QuantizationOptions(fp8_activations="row")),
     "quantization_options.fp8_activations", "'token', 'tensor'"),
    (dict(quantization="fp8", quantization_options=pb.QuantizationOptions(fp8_activations="tensor",
                                                                         fp8_granularity="channel")),
     "quantization_options.fp8_activations", "needs fp8_granularity 'tensor'"),
    (dict(max_batch_size=0), "max_batch_size", ">= 1"),
    (dict(max_seq_len=1), "max_seq_len", ">= 2"),
    (dict(max_seq_len=100_000), "max_seq_len", "context length 128"),
    (dict(source="relative/tiny-llama"), "source", "absolute path"),
    (dict(source=""), "source", "is empty"),
    (dict(source="{root}/missing"), "source", "does not exist"),
])
def test_bad_fields_are_invalid_argument_naming_the_field(stub, tiny_llama_dir, model_root, fields, field, says):
    request = {"source": str(tiny_llama_dir), "name": "tiny-bad", "max_batch_size": 2, **fields}
    request["source"] = request["source"].format(root=model_root)
    error = refused(lambda: build(stub, **request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error.details().startswith(f"{field}: ") and says in error.details(), error.details()
    # Nothing was stored, and the server keeps serving (whichever engines other tests left in the store).
    assert "tiny-bad" not in {e.name for e in stub.ListEngines(pb.ListEnginesRequest()).engines}


def test_sources_outside_the_allowed_roots_are_permission_denied(stub, model_root, outside_dir):
    link = model_root / "link-to-outside"
    link.symlink_to(outside_dir, target_is_directory=True)
    for source in (outside_dir, link, model_root / ".." / outside_dir.parent.name / outside_dir.name,
                   outside_dir / "missing"):
        error = refused(lambda: build(stub, source=str(source), name="escape", max_batch_size=1))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error.details()
        assert error.details().startswith("source: ") and "allowed roots" in error.details()
    assert "escape" not in {e.name for e in stub.ListEngines(pb.ListEnginesRequest()).engines}


def test_a_file_linking_outside_an_allowed_folder_is_refused(stub, model_root, outside_dir, tiny_llama_dir):
    folder = model_root / "sneaky"
    folder.mkdir()
    for f in tiny_llama_dir.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "tokenizer.json").symlink_to(outside_dir / "config.json")
    error = refused(lambda: build(stub, source=str(folder), name="sneaky", max_batch_size=1))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED and "tokenizer.json" in error.details()


def test_unknown_engine_is_not_found_and_bad_names_invalid(stub):
    assert refused(lambda: stub.GetEngine(pb.GetEngineRequest(name="nope"))).code() == grpc.StatusCode.NOT_FOUND
    error = refused(lambda: stub.GetEngine(pb.GetEngineRequest(name="../etc")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith("name: ")
