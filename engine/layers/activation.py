"""The gated activation of Llama's MLP: silu(gate) * up, one Triton kernel on CUDA."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.layers.fp8_activations import Fp8Activations


def silu_and_mul(gate_up: torch.Tensor, fp8_output: bool | torch.Tensor = False) -> torch.Tensor | Fp8Activations:
    # gate_up: [tokens, 2 * intermediate] -> [tokens, intermediate]; fp8_output (the next layer's
    # LinearBase.fp8_input()): quantized per token (True) or under that static scale (a tensor), on CUDA
    # (fp8 layers run nowhere else; elsewhere the next layer quantizes)
    if gate_up.is_cuda:
        from engine.layers.triton.activation import silu_and_mul as fused, silu_and_mul_fp8

        if fp8_output is not False:  # (not truthiness: a scale tensor's would sync the GPU)
            static = fp8_output if isinstance(fp8_output, torch.Tensor) else None
            return Fp8Activations(*silu_and_mul_fp8(gate_up, static), gate_up.dtype)
        return fused(gate_up)
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up
