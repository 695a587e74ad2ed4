"""Token embeddings behind one interface: the float table, or int8 rows with one scale each.

The embedding is a lookup, not a matmul: quantizing it costs no kernel work and halves the largest
single tensor of a big-vocabulary model (Baichuan2-7B: 125,696 x 4,096 = 1.03 GB in bf16), which is
what keeps an int4 7B engine's batch-1 footprint under 5 GB."""
from __future__ import annotations

import torch
from torch import nn

from engine.layers.quantization import QuantizationConfig


class Int8Embedding(nn.Module):
    """Rows stored as int8 with a symmetric float32 scale per row (the int8_wo format, a row being an
    output channel); looked-up rows are dequantized into the model's dtype."""

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.dtype = torch.get_default_dtype()  # the model's: models are built under it (load_model)
        self.qweight = nn.Parameter(torch.empty(num_embeddings, embedding_dim, dtype=torch.int8), requires_grad=False)
        self.scales = nn.Parameter(torch.empty(num_embeddings, dtype=torch.float32), requires_grad=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # input_ids: [tokens] -> [tokens, embedding_dim]; dequantized in float32, then cast once
        rows = self.qweight[input_ids].float() * self.scales[input_ids, None]
        return rows.to(self.dtype)


def make_embedding(num_embeddings: int, embedding_dim: int, quantization: QuantizationConfig | None) -> nn.Module:
    if quantization is not None and quantization.embedding:
        return Int8Embedding(num_embeddings, embedding_dim)
    return nn.Embedding(num_embeddings, embedding_dim)
