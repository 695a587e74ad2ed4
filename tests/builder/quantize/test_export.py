"""A quantized model written by export_model loads back (engine loader, scheme from config.json) into a
model computing exactly what the builder's in-memory model computed, for every scheme, with the
lm_head quantized or not, tied embeddings or not, the embedding int8 or float."""
from __future__ import annotations

import json

import pytest
import torch

from builder.quantize import quantize_model
from engine.errors import InvalidParameterError
from engine.layers.embedding import Int8Embedding
from engine.layers.quantization import QuantizationConfig, is_quantized_linear
from engine.loader import open_checkpoint
from engine.loader.export import export_model
from engine.model_runner import load_model
from tests.builder.quantize.test_gptq import hidden_states, tiny_llama


@pytest.mark.parametrize("scheme,lm_head,tied,embedding", [
    ("int8_wo", False, True, False), ("int8_wo", True, True, False), ("int4_wo", True, False, False),
    ("awq", False, True, False), ("gptq", False, False, False), ("smoothquant", True, True, False),
    ("fp8", False, True, False), ("int4_wo", True, True, True), ("awq", False, False, True),
])
def test_exported_engine_loads_back_and_computes_the_same(tmp_path, scheme, lm_head, tied, embedding):
    model = tiny_llama()
    if not tied:  # give the head its own tensor
        model.cfg = type(model.cfg)(**{**model.cfg.__dict__, "tie_word_embeddings": False})
        model.lm_head = torch.nn.Linear(128, 256, bias=False)
        model.lm_head.weight.data.copy_(torch.randn(256, 128) / 12)
    config = QuantizationConfig(scheme=scheme, group_size=32, lm_head=lm_head, embedding=embedding)
    calibration = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    quantize_model(model, config, calibration)
    export_model(model, None, tmp_path, torch.float32, config)

    saved = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert saved["quant_method"] == "inferline" and saved["scheme"] == scheme
    ckpt = open_checkpoint(str(tmp_path))
    assert ckpt.quantization == config
    if scheme == "fp8":  # Hopper/Ada only: refused on this CPU before any allocation
        with pytest.raises(InvalidParameterError, match="compute capability >= 8.9"):
            load_model(ckpt, torch.float32, torch.device("cpu"), 64, "torch_paged")
        return
    loaded = load_model(ckpt, torch.float32, torch.device("cpu"), 64, "torch_paged")
    assert all(is_quantized_linear(loaded.get_submodule(f"layers.0.{n}"))
               for n in ("attn.qkv_proj", "attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"))
    assert is_quantized_linear(loaded.lm_head) == lm_head
    assert isinstance(loaded.embed_tokens, Int8Embedding) == embedding
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model.compute_logits(hidden_states(model, ids))
        got = loaded.compute_logits(hidden_states(loaded, ids))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_a_checkpoint_quantized_by_another_tool_is_refused(tmp_path):
    model = tiny_llama()
    export_model(model, None, tmp_path, torch.float32, QuantizationConfig(scheme="int8_wo"))
    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "awq", "bits": 4}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="quantized by another tool"):
        open_checkpoint(str(tmp_path))
