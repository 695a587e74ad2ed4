"""RMSNorm, optionally fused with the residual add that precedes it. CUDA runs one Triton kernel per
call; elsewhere the same arithmetic in PyTorch."""
from __future__ import annotations

import torch
from torch import nn

from engine.layers.fp8_activations import Fp8Activations


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in float32 and cast back (as HF Llama does, which exactness needs)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, fp8_output: bool | torch.Tensor = False):
        """norm(x) -> out; with `residual`: (norm(x + residual), x + residual). On CUDA the sum is
        written over x (a branch output nobody reads again); `residual` is never modified.
        `fp8_output` (the fp8_input() of the linear layer the norm feeds): on CUDA, out comes quantized
        by the norm's kernel, as Fp8Activations: per token (True) or under that static scale (a tensor)."""
        # x, residual: [tokens, dim]
        if x.is_cuda:
            from engine.layers.triton import rms_norm as kernels

            if fp8_output is not False:  # (not truthiness: a scale tensor's would sync the GPU)
                static = fp8_output if isinstance(fp8_output, torch.Tensor) else None
                if residual is None:
                    return Fp8Activations(*kernels.rms_norm_fp8(x, self.weight, self.eps, static), x.dtype)
                quantized, total = kernels.fused_add_rms_norm_fp8(residual, x, self.weight, self.eps, static)
                return Fp8Activations(*quantized, x.dtype), total
            if residual is None:
                return kernels.rms_norm(x, self.weight, self.eps)
            return kernels.fused_add_rms_norm(residual, x, self.weight, self.eps)  # its second argument takes the sum
        if residual is None:
            return self._norm(x)
        total = x + residual
        return self._norm(total), total

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)
