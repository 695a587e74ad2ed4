"""The gated activation of Llama's MLP: silu(gate) * up, one Triton kernel on CUDA."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.layers.fp8_activations import Fp8Activations


def silu_and_mul(gate_up: torch.Tensor, fp8_output: bool = False) -> torch.Tensor | Fp8Activations:
    # gate_up: [tokens, 2 * intermediate] -> [tokens, intermediate]; fp8_output: quantized per token, on
    # CUDA (fp8 layers run nowhere else; elsewhere the next layer quantizes)
    if gate_up.is_cuda:
        from engine.layers.triton.activation import silu_and_mul as fused, silu_and_mul_fp8

        if fp8_output:
            return Fp8Activations(*silu_and_mul_fp8(gate_up), gate_up.dtype)
        return fused(gate_up)
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up
