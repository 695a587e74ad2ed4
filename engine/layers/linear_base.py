"""What every linear layer class shares (unquantized in linear.py, quantized in quantization/)."""
from __future__ import annotations

import torch
from torch import nn

from engine.layers.activation import silu_and_mul
from engine.layers.fp8_activations import Fp8Activations


class LinearBase(nn.Module):
    """A layer implements `project` (x @ W^T + b, by whatever kernel its format takes) and, where its
    decode GEMV can compute silu(gate) * up as its epilogue, `gated_gemv`."""

    # Whether `project` takes Fp8Activations (on CUDA) as well as a tensor: then the layer producing its
    # input quantizes it (fp8_activations.py).
    takes_fp8_activations = False

    def forward(self, x: torch.Tensor | Fp8Activations, gated: bool = False,
                fp8_output: bool = False) -> torch.Tensor | Fp8Activations:
        """x: [tokens, in] -> [tokens, out]; gated (out = [gate, up], Llama's fused gate/up projection):
        silu(gate) * up, [tokens, out / 2], in one launch where the layer's GEMV does it (the same bits);
        with `fp8_output` (for a next layer that takes_fp8_activations), silu_and_mul quantizes it."""
        if not gated:
            return self.project(x)
        fused = self.gated_gemv(x)
        return fused if fused is not None else silu_and_mul(self.project(x), fp8_output=fp8_output)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def gated_gemv(self, x: torch.Tensor) -> torch.Tensor | None:
        """silu(gate) * up of the projection in one launch, or None where x takes no such path."""
        return None
