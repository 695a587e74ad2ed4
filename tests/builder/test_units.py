"""Builder pieces without a server: settings, request validation, sources and fingerprints."""
from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from pydantic import ValidationError

from builder.build import BuildSpec, fingerprint
from builder.quantize.calibration import CalibrationSettings
from builder.quantize.settings import EvalSettings, QuantizeSettings
from builder.errors import BuildInputError, SourceNotAllowedError
from builder.settings import BuilderSettings
from builder.source import resolve_source


def test_settings_defaults_env_and_redis_url_alias(monkeypatch, tmp_path):
    for var in ("REDIS_URL", "INFERLINE_BUILDER_REDIS_URL", "INFERLINE_BUILDER_PORT", "INFERLINE_BUILDER_ALLOWED_ROOTS"):
        monkeypatch.delenv(var, raising=False)
    assert BuilderSettings().port == 50053 and BuilderSettings().allowed_roots == []
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.setenv("REDIS_URL", "redis://shared:6379/0")
    monkeypatch.setenv("INFERLINE_BUILDER_ALLOWED_ROOTS", f"{tmp_path}/a,{tmp_path}/b")
    monkeypatch.setenv("INFERLINE_BUILDER_PORT", "6000")
    settings = BuilderSettings()
    assert (settings.redis_url, settings.port) == ("redis://shared:6379/0", 6000)
    assert settings.allowed_roots == [(tmp_path / "a").resolve(), (tmp_path / "b").resolve()]
    monkeypatch.setenv("INFERLINE_BUILDER_REDIS_URL", "redis://own:6379/1")  # the builder's own wins
    assert BuilderSettings().redis_url == "redis://own:6379/1"
    monkeypatch.setenv("INFERLINE_BUILDER_ALLOWED_ROOTS", f'["{tmp_path}/a"]')
    assert BuilderSettings().allowed_roots == [(tmp_path / "a").resolve()]


@pytest.mark.parametrize("fields, field", [
    (dict(port=70000), "port"),
    (dict(redis_url="http://x"), "redis_url"),
    (dict(allowed_roots=["/no/such/dir"]), "allowed_roots"),
    (dict(log_level="chatty"), "log_level"),
])
def test_bad_settings_are_refused_naming_the_setting(fields, field):
    with pytest.raises(ValidationError) as info:
        BuilderSettings(**fields)
    assert info.value.errors()[0]["loc"][0] == field


def spec(**fields) -> BuildSpec:
    return BuildSpec.parse(**{"source": "smollm2-135m", "name": "e", "max_batch_size": 1, **fields})


def test_spec_normalises_quantization_and_keeps_the_rest():
    assert spec(quantization="").quantization is spec(quantization="none").quantization is None
    assert spec(quantization="").scheme == "none"
    int4 = spec(quantization="gptq", group_size=64).quantization
    assert (int4.scheme, int4.group_size, int4.act_order, int4.alpha) == ("gptq", 64, True, 0.5)
    assert spec(quantization="gptq", gptq_act_order=False).quantization.act_order is False
    with pytest.raises(BuildInputError) as info:
        spec(name="x" * 65)
    assert info.value.field == "name"


def test_fingerprint_changes_with_every_input_and_only_with_them():
    identity = {"format": "hf", "files": [{"name": "config.json", "bytes": 2, "sha256": "0" * 64}]}
    q = QuantizeSettings()
    base = fingerprint(identity, "float32", spec(), q)
    assert fingerprint(dict(identity), "float32", spec(), q) == base
    assert fingerprint(identity, "float32", spec(name="other"), q) == base  # the name is not an input of the build
    assert fingerprint(identity, "float32", spec(), replace(q, calibration=CalibrationSettings(4, 64))) == base
    awq = spec(quantization="awq")
    others = {fingerprint({**identity, "files": []}, "float32", spec(), q), fingerprint(identity, "bfloat16", spec(), q),
              fingerprint(identity, "float32", spec(max_batch_size=2), q),
              fingerprint(identity, "float32", spec(max_seq_len=64), q),
              fingerprint(identity, "float32", awq, q), fingerprint(identity, "float32", spec(quantization="gptq"), q),
              fingerprint(identity, "float32", spec(quantization="awq", group_size=64), q),
              # calibration and evaluation settings decide a quantized engine's values and report
              fingerprint(identity, "float32", awq, replace(q, calibration=CalibrationSettings(4, 64))),
              fingerprint(identity, "float32", awq, replace(q, evaluation=EvalSettings(max_windows=2)))}
    assert base not in others and len(others) == 9


def test_source_identity_is_content_not_location(tmp_path, tiny_llama_dir):
    a = resolve_source(str(tiny_llama_dir), [tiny_llama_dir.parent])
    copy = tmp_path / "copy"
    shutil.copytree(tiny_llama_dir, copy)
    (copy / "README.md").write_text("edited: not an identity file\n")
    b = resolve_source(str(copy), [tmp_path])
    assert a.identity() == b.identity()
    assert {f["name"] for f in a.identity()["files"]} == {"config.json", "generation_config.json", "model.safetensors"}
    config = copy / "config.json"
    config.write_text(config.read_text().replace('"rms_norm_eps"', '"rms_norm_eps" ', 1))
    assert resolve_source(str(copy), [tmp_path]).identity() != a.identity()


def test_bundled_names_need_no_allowed_root():
    source = resolve_source("smollm2-135m", [])
    assert source.kind == "bundled" and source.path.suffix == ".gguf"
    assert source.identity()["bundled"] == "smollm2-135m"


def test_a_gguf_alone_in_a_folder_is_that_file(tmp_path):
    gguf = resolve_source("smollm2-135m", []).path
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.gguf").symlink_to(gguf)
    with pytest.raises(SourceNotAllowedError, match="model.gguf"):  # the link leaves the root
        resolve_source(str(tmp_path / "m"), [tmp_path])
    source = resolve_source(str(tmp_path / "m"), [tmp_path, gguf.parent])
    assert (source.kind, source.path) == ("gguf", gguf)
    with pytest.raises(BuildInputError, match="not a .gguf"):
        resolve_source(str(gguf.parent / "__init__.py"), [gguf.parent])


def test_no_allowed_roots_means_bundled_only(tiny_llama_dir: Path):
    with pytest.raises(SourceNotAllowedError, match="only bundled models"):
        resolve_source(str(tiny_llama_dir), [])


def test_an_int8_embedding_needs_a_scheme_and_for_a_tied_model_the_lm_head(tmp_path):
    from builder.build import build_engine
    from inferline.engine_store import EngineStore

    assert spec(quantization="int4_wo", quantize_embedding=True).quantization.embedding is True
    with pytest.raises(BuildInputError) as info:
        spec(quantize_embedding=True)
    assert info.value.field == "quantization_options.quantize_embedding"
    # SmolLM2 ties its lm_head to the embedding: refused before anything is quantized or stored.
    with pytest.raises(BuildInputError, match="ties its lm_head to the embedding") as info:
        build_engine(spec(quantization="int8_wo", quantize_embedding=True), EngineStore(tmp_path / "store"))
    assert info.value.field == "quantization_options.quantize_embedding"
    assert not any((tmp_path / "store").glob("**/*.safetensors"))
