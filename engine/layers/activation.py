"""The gated activation of Llama's MLP: silu(gate) * up, one Triton kernel on CUDA."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    # gate_up: [tokens, 2 * intermediate] -> [tokens, intermediate]
    if gate_up.is_cuda:
        from engine.layers.triton.activation import silu_and_mul as fused

        return fused(gate_up)
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up
