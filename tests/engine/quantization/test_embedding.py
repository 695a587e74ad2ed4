"""The int8 embedding: rows quantized per row, looked up and dequantized into the model's dtype."""
from __future__ import annotations

import pytest
import torch

from builder.quantize import int8_embedding
from engine.layers.embedding import Int8Embedding, make_embedding
from engine.layers.quantization import QuantizationConfig
from engine.model_runner import default_dtype


def _float_table(dtype: torch.dtype = torch.float32) -> torch.nn.Embedding:
    table = torch.nn.Embedding(300, 64, dtype=dtype)
    with torch.no_grad():
        table.weight.copy_(torch.randn(300, 64, generator=torch.Generator().manual_seed(0)))
        table.weight[7] *= 1000  # rows with very different ranges keep their own scale
    return table


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lookup_is_within_half_a_step_of_each_row_and_in_the_model_dtype(dtype):
    table = _float_table(dtype)
    quantized = int8_embedding(table)
    ids = torch.tensor([0, 7, 299, 7, 42])
    got = quantized(ids)
    assert got.dtype == dtype and got.shape == (5, 64)
    want = table(ids).float()
    step = want.abs().amax(dim=1, keepdim=True) / 127  # each row's quantization step
    # Half a step of rounding, plus the cast to the model's dtype (bf16: 2^-8 relative).
    slack = 0.5 * step + (want.abs() * 2 ** -8 if dtype == torch.bfloat16 else 0)
    assert ((got.float() - want).abs() <= slack + 1e-6).all()
    assert quantized.qweight.dtype == torch.int8 and quantized.qweight.nbytes * 2 <= table.weight.nbytes


def test_made_from_the_quantization_config_and_in_the_default_dtype():
    assert isinstance(make_embedding(10, 8, None), torch.nn.Embedding)
    assert isinstance(make_embedding(10, 8, QuantizationConfig(scheme="int4_wo")), torch.nn.Embedding)
    with default_dtype(torch.bfloat16):
        module = make_embedding(10, 8, QuantizationConfig(scheme="int4_wo", lm_head=True, embedding=True))
    assert isinstance(module, Int8Embedding) and module.dtype == torch.bfloat16
    assert module.scales.dtype == torch.float32  # scales stay float32 whatever the model's dtype
