"""What every linear layer class shares (unquantized in linear.py, quantized in quantization/)."""
from __future__ import annotations

import torch
from torch import nn

from engine.layers.activation import silu_and_mul


class LinearBase(nn.Module):
    """A layer implements `project` (x @ W^T + b, by whatever kernel its format takes) and, where its
    decode GEMV can compute silu(gate) * up as its epilogue, `gated_gemv`."""

    def forward(self, x: torch.Tensor, gated: bool = False) -> torch.Tensor:
        """x: [tokens, in] -> [tokens, out]; gated (out = [gate, up], Llama's fused gate/up projection):
        silu(gate) * up, [tokens, out / 2], in one launch where the layer's GEMV does it (the same bits)."""
        if not gated:
            return self.project(x)
        fused = self.gated_gemv(x)
        return fused if fused is not None else silu_and_mul(self.project(x))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def gated_gemv(self, x: torch.Tensor) -> torch.Tensor | None:
        """silu(gate) * up of the projection in one launch, or None where x takes no such path."""
        return None
