"""GPTQ (Frantar et al., 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers", Algorithm 1): quantize a linear layer's weight one input column at a time, and after each
column spread its rounding error over the columns not yet quantized so that the layer's output on the
calibration inputs X moves as little as possible. With H = 2/n X^T X (the Hessian of ||X W^T - X Ŵ^T||²)
and U the upper Cholesky factor of H^-1, rounding column j with error e = (w_j - ŵ_j) / U[j, j] is
compensated by W[:, j:] -= e U[j, j:]. Updates are applied lazily: within a block of columns at once,
to the columns after the block with one matmul.

The result is stored in the ordinary int4 format (engine/layers/quantization/int4.py, min/max scale and
zero point per group of input channels): only the choice of the int4 values differs from round to
nearest, so the engine multiplies GPTQ and int4_wo weights alike.

Choices:
  - true sequential: each linear is calibrated on inputs computed with the linears before it already
    quantized (qkv, then o_proj, then gate_up, then down), as the reference's `true_sequential`. It
    costs three extra forward passes of the layer, small next to the Hessians and the column loops.
  - dampening: 1% of the mean Hessian diagonal (the paper's `percdamp`), raised tenfold while the
    Cholesky factorisation fails.
  - group parameters: without act_order, each group's scale and zero point come from the group's
    current, error-updated weights when the loop reaches its first column (the reference's default).
    With act_order, columns are visited by decreasing H[j, j] but the groups stay contiguous runs of
    input channels (no g_idx in the stored format), so their parameters are fixed up front from the
    original weight (the reference's `static_groups`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from builder.quantize.common import to_quantized
from builder.quantize.layerwise import LINEARS, Batch, capture_inputs, replace_submodule, run_layer, submodule
from engine.layers.quantization import QuantizationConfig, int4

PERCDAMP = 0.01  # dampening, a fraction of the mean Hessian diagonal
BLOCK_COLUMNS = 128  # columns per lazy batch update (speed only: the result does not depend on it)
HESSIAN_CHUNK = 4096  # tokens per step when accumulating X^T X, to bound float32 copies of X


@dataclass
class GPTQResult:
    q: torch.Tensor  # [out, in] integer values 0..15 (float)
    scales: torch.Tensor  # [out, groups] float32, already representable in the layer's dtype
    zeros: torch.Tensor  # [out, groups] integer-valued float 0..15
    weight: torch.Tensor  # [out, in] float32: (q - zeros) * scales, what the error compensation assumed

    def tensors(self) -> dict[str, torch.Tensor]:
        return int4.to_tensors(self.q, self.scales, self.zeros)


def hessian(x: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """H = 2/n X^T X [in, in] float32 for inputs x [n, in], accumulated over chunks of tokens."""
    n, features = x.shape
    device = device or x.device
    h = torch.zeros(features, features, dtype=torch.float32, device=device)
    for start in range(0, n, HESSIAN_CHUNK):
        chunk = x[start:start + HESSIAN_CHUNK].to(device=device, dtype=torch.float32)  # [chunk, in]
        h.addmm_(chunk.T, chunk)
    return h.mul_(2.0 / max(n, 1))


def inverse_hessian_factor(h: torch.Tensor, percdamp: float = PERCDAMP, tries: int = 4) -> torch.Tensor:
    """U [in, in] upper triangular with U^T U = (H + damp I)^-1: row j of U holds, up to the factor
    U[j, j], how the error of column j is spread over the columns after it once those before it are
    fixed. Dampening keeps H invertible (few tokens, correlated channels); raised if still singular."""
    diag = torch.arange(h.shape[0], device=h.device)
    mean_diag = h.diagonal().mean()
    for attempt in range(tries):
        damped = h.clone()
        damped[diag, diag] += percdamp * 10 ** attempt * mean_diag
        lower, info = torch.linalg.cholesky_ex(damped)
        if info.item() == 0:
            # H^-1 = L^-T L^-1 (torch.cholesky_inverse computes the same, but is slow on CPU)
            lower_inv = torch.linalg.solve_triangular(lower, torch.eye(*h.shape, device=h.device), upper=False)
            upper, info = torch.linalg.cholesky_ex(lower_inv.T @ lower_inv, upper=True)
            if info.item() == 0:
                return upper
    raise torch.linalg.LinAlgError(f"Hessian not positive definite even with dampening "
                                   f"{percdamp * 10 ** (tries - 1)} x mean diagonal")


def storable_scales(scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Scales rounded to the dtype the quantized layer stores them in, back in float32: the loop must
    round with the scales the engine will multiply by. A scale that would underflow to 0 (an all-zero
    group in float16) is kept: the stored 0 then only drops weights the loop had as ~1e-7 or less."""
    rounded = scales.to(dtype).float()
    return torch.where(rounded > 0, rounded, scales.float())


def group_params(weight: torch.Tensor, group_size: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    # weight: [out, in] -> scales, zeros [out, ceil(in / group_size)]; int4's own rule, so formats agree
    scales, zeros = int4.group_params(weight, group_size)
    return storable_scales(scales, dtype), zeros


def block_columns(group_size: int) -> int:
    """A multiple of group_size near BLOCK_COLUMNS: every group then lies inside one block, so when the
    loop reaches a group's first column the block copy holds the group's fully error-updated weights."""
    return group_size * max(1, BLOCK_COLUMNS // group_size)


@torch.no_grad()
def gptq(weight: torch.Tensor, h: torch.Tensor, group_size: int, act_order: bool = False,
         scale_dtype: torch.dtype | None = None, percdamp: float = PERCDAMP) -> GPTQResult:
    """GPTQ of weight [out, in] against the Hessian h [in, in] of its inputs; float32 on weight's device.
    `scale_dtype`: the dtype the scales will be stored in (default: the weight's)."""
    scale_dtype = scale_dtype or weight.dtype
    w = weight.detach().float().clone()  # [out, in], error-updated as the loop goes
    h = h.to(device=w.device, dtype=torch.float32).clone()  # [in, in]
    out, n = w.shape
    groups = -(-n // group_size)

    # Channels that never fire carry no information: their weight is set to 0 (quantized exactly) and
    # H gets a 1 there so that it stays invertible.
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0

    if act_order:
        scales, zeros = group_params(w, group_size, scale_dtype)  # static groups, from the original weight
        perm = torch.argsort(h.diagonal(), descending=True)  # the most active channels first
        w, h = w[:, perm], h[perm][:, perm]
        group_of = (perm // group_size).tolist()  # permuted position -> its column's group
    else:
        scales = torch.zeros(out, groups, device=w.device)
        zeros = torch.zeros(out, groups, device=w.device)
        perm = None
        group_of = [j // group_size for j in range(n)]

    u = inverse_hessian_factor(h, percdamp)  # [in, in] upper
    q = torch.zeros_like(w)  # [out, in] integer values
    w_hat = torch.zeros_like(w)  # [out, in] their dequantized weights
    block = block_columns(group_size)
    for i1 in range(0, n, block):
        i2 = min(i1 + block, n)
        w1 = w[:, i1:i2].clone()  # [out, b]: this block, kept current column by column
        err1 = torch.zeros_like(w1)  # [out, b]: scaled errors, applied to columns >= i2 afterwards
        u1 = u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            j, g = i1 + i, group_of[i1 + i]
            if not act_order and j % group_size == 0:  # a new group: params from its current weights
                s, z = group_params(w1[:, i:i + group_size], group_size, scale_dtype)
                scales[:, g:g + 1], zeros[:, g:g + 1] = s, z
            col = w1[:, i]  # [out]
            qj = int4.quantize_with(col[:, None], scales[:, g:g + 1], zeros[:, g:g + 1], group_size)[:, 0]
            dq = (qj - zeros[:, g]) * scales[:, g]  # exactly int4.dequantize's arithmetic
            q[:, j], w_hat[:, j] = qj, dq
            e = (col - dq) / u1[i, i]  # [out]
            w1[:, i:] -= e[:, None] * u1[i, i:][None, :]
            err1[:, i] = e
        w[:, i2:] -= err1 @ u[i1:i2, i2:]  # the block's errors, compensated in the later columns at once

    if perm is not None:
        inverse = torch.argsort(perm)
        q, w_hat = q[:, inverse], w_hat[:, inverse]
    return GPTQResult(q=q, scales=scales, zeros=zeros, weight=w_hat)


def linear_input(layer: nn.Module, name: str, x: torch.Tensor, batch: Batch) -> torch.Tensor:
    """What linear `name` sees [tokens, in] when the layer, as quantized so far, runs on x."""
    with capture_inputs(layer, (name,)) as seen:
        run_layer(layer, x, batch)
    return seen[name]


@torch.no_grad()
def quantize_layer(layer: nn.Module, x: torch.Tensor, batch: Batch, config: QuantizationConfig) -> None:
    # True sequential: one pass per linear (in data-flow order), each after the previous ones are
    # quantized, so each linear's GPTQ also compensates the errors of the linears feeding it.
    for name in LINEARS:
        linear = submodule(layer, name)
        h = hessian(linear_input(layer, name, x, batch), linear.weight.device)
        result = gptq(linear.weight, h, config.group_size, config.act_order)
        del h
        replace_submodule(layer, name, to_quantized(linear, config, result.tensors()))
