"""What every linear layer class shares (unquantized in linear.py, quantized in quantization/)."""
from __future__ import annotations

import torch
from torch import nn

from engine.layers.activation import silu_and_mul
from engine.layers.fp8_activations import Fp8Activations


class LinearBase(nn.Module):
    """A layer implements `project` (x @ W^T + b, by whatever kernel its format takes) and, where its
    decode GEMV can compute silu(gate) * up as its epilogue, `gated_gemv`."""

    def fp8_input(self) -> bool | torch.Tensor:
        """What the layer producing this one's input hands over (fp8_activations.py): False, the
        activations; True, Fp8Activations quantized per token; a float32 tensor of one element (the
        layer's static input scale), Fp8Activations quantized under that scale. Passed on as `fp8_output`."""
        return False

    def forward(self, x: torch.Tensor | Fp8Activations, gated: bool = False,
                fp8_output: bool | torch.Tensor = False) -> torch.Tensor | Fp8Activations:
        """x: [tokens, in] -> [tokens, out]; gated (out = [gate, up], Llama's fused gate/up projection):
        silu(gate) * up, [tokens, out / 2], in one launch where the layer's GEMV does it (the same bits);
        with `fp8_output` (the next layer's fp8_input()), silu_and_mul quantizes it."""
        if not gated:
            return self.project(x)
        fused = self.gated_gemv(x)
        return fused if fused is not None else silu_and_mul(self.project(x), fp8_output=fp8_output)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """x: [tokens, in] -> float32 [tokens, out]: the lm_head's scores for the sampler, rounded to the
        layer's dtype first (as HF computes them) unless the layer's GEMM writes float32 itself."""
        return self.project(x).float()

    def gated_gemv(self, x: torch.Tensor) -> torch.Tensor | None:
        """silu(gate) * up of the projection in one launch, or None where x takes no such path."""
        return None
