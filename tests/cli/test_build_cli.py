"""`inferline build` against a local store: a quantized build prints its record, quality report
included, as one JSON object; the same build again is the same engine; bad input is one error line."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from inferline.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_with_tokenizer(tmp_path_factory, smollm2_dir) -> Path:
    """A tiny random Llama with SmolLM2's tokenizer (its vocabulary size, so every token id fits)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=1, eos_token_id=2, tie_word_embeddings=True)
    folder = tmp_path_factory.mktemp("tiny-tok")
    LlamaForCausalLM(config).float().eval().save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (smollm2_dir / name).exists():
            shutil.copy(smollm2_dir / name, folder / name)
    return folder


def build(*args: str):
    return runner.invoke(app, ["build", *args])


def test_a_quantized_build_prints_its_record_with_the_quality_report(tiny_with_tokenizer, tmp_path):
    args = ["--source", str(tiny_with_tokenizer), "--name", "tiny-int8", "--quantization", "int8_wo",
            "--store-dir", str(tmp_path), "--calibration-samples", "2", "--eval-windows", "1", "--json"]
    first = build(*args)
    assert first.exit_code == 0, first.stderr
    record = json.loads(first.stdout)
    assert (record["name"], record["quantization"], record["status"]) == ("tiny-int8", "int8_wo", "stored")
    quality = record["quality"]
    assert quality["eval_tokens"] == 511 and 0 <= quality["greedy_agreement"] <= 1
    assert float(quality["perplexity"]) > 0 and float(quality["reference_perplexity"]) > 0
    assert int(quality["weight_bytes"]) < int(quality["reference_weight_bytes"])
    assert record["quantization_options"]["group_size"] == 128
    again = json.loads(build(*args).stdout)
    assert again["fingerprint"] == record["fingerprint"] and again["created_at"] == record["created_at"]


@pytest.mark.parametrize("extra,needle", [
    (["--quantization", "int3"], "error: --quantization: unknown scheme 'int3'"),
    (["--quantization", "awq", "--group-size", "48"], "quantization_options.group_size"),
    (["--quantization", "int8_wo", "--device", "tpu"], "--device"),
])
def test_bad_input_is_one_error_line(tiny_with_tokenizer, tmp_path, extra, needle):
    result = build("--source", str(tiny_with_tokenizer), "--name", "bad", "--store-dir", str(tmp_path), *extra)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and needle in lines[-1], result.stderr
    assert result.stdout == ""
