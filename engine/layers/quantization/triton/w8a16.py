"""W8A16 GEMM: y = x @ (q * s[:, None]).T, int8 weights q [N, K] in nn.Linear layout, one scale per
output channel. Each int8 tile is converted to x's dtype for tl.dot (exact: |q| <= 127 fits fp16 and
bf16); the scale is applied once per output column after the K loop rather than to every tile.

A launch either multiplies x @ q.T or, with SWAP_AB, computes y.T = q @ x.T: the weights are then the
first operand, which Hopper's wgmma reads from registers, so the converted tile goes straight from the
conversion into the MMA instead of through shared memory (the second operand must sit there). That is
the faster layout for prefill-sized M on an H100 (bench/quant_gemm_sweep.py --prefill: 7B layer at
M=128 201 -> 192 us autotuned, M=2048 -15%), the plain one for decode-sized M; the autotuner picks per
M bucket."""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from engine.layers.quantization.triton import check_int8_operands, interpreting, m_bucket

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages)
CONFIGS = [
    # Decode (M <= 16) only streams weights: without split-K, narrow N tiles are what gives the 132 SMs
    # of an H100 enough programs (N=4096 / 32 = 128), and deep K tiles keep enough loads in flight.
    (16, 32, 256, 4, 4),
    (16, 32, 512, 4, 3),
    (16, 64, 128, 4, 4),
    (16, 64, 256, 4, 4),
    (16, 128, 128, 4, 4),
    (16, 128, 256, 8, 3),
    (32, 64, 128, 4, 4),
    (32, 128, 128, 4, 4),
    (64, 64, 128, 4, 4),
    (64, 128, 64, 4, 4),
    (64, 128, 128, 8, 3),
    (128, 128, 64, 8, 3),
    (128, 256, 64, 8, 3),
]
# Weights as the register operand (SWAP_AB), the H100 sweep's best tiles at M = 64-2048.
SWAPPED_CONFIGS = [
    (64, 64, 128, 4, 3),
    (128, 64, 128, 4, 3),
    (128, 128, 128, 8, 3),
    (256, 128, 64, 8, 4),
]
# The interpreter runs every program in numpy: small tiles exercise the edge masks, and autotuning
# there would only multiply the run time.
INTERPRET_BLOCKS = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32}
FLOAT32_BLOCKS = {"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 32}


@triton.jit
def _w8a16_kernel(x_ptr, q_ptr, s_ptr, y_ptr, M, N, M_BUCKET,
                  stride_xm, stride_qn, stride_s, stride_ym,
                  K: tl.constexpr, DOT_PRECISION: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  SWAP_AB: tl.constexpr = False):
    # K is a compile-time constant: a model has only a few, and Triton 3.6's interpreter cannot loop to
    # a run-time bound under numpy >= 2.4. M_BUCKET is only the autotune key. Axis 0 walks M fastest,
    # so the programs that read one weight tile run together and all but the first find it in L2.
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok = offs_m < M
    n_ok = offs_n < N
    if SWAP_AB:
        x_ptrs = x_ptr + offs_m[None, :] * stride_xm + offs_k[:, None]  # [BLOCK_K, BLOCK_M]: x transposed
        q_ptrs = q_ptr + offs_n[:, None] * stride_qn + offs_k[None, :]  # [BLOCK_N, BLOCK_K]
        acc_t = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)  # y.T
        for k0 in range(0, K, BLOCK_K):
            k_ok = k0 + offs_k < K
            x_t = tl.load(x_ptrs, mask=k_ok[:, None] & m_ok[None, :], other=0.0)
            q = tl.load(q_ptrs, mask=n_ok[:, None] & k_ok[None, :], other=0)
            acc_t = tl.dot(q.to(x_t.dtype), x_t, acc_t, input_precision=DOT_PRECISION)
            x_ptrs += BLOCK_K
            q_ptrs += BLOCK_K
        acc = tl.trans(acc_t)
    else:
        x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :]  # [BLOCK_M, BLOCK_K]
        q_ptrs = q_ptr + offs_n[None, :] * stride_qn + offs_k[:, None]  # [BLOCK_K, BLOCK_N]: q transposed
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k_ok = k0 + offs_k < K
            x = tl.load(x_ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            q = tl.load(q_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0)
            acc = tl.dot(x, q.to(x.dtype), acc, input_precision=DOT_PRECISION)
            x_ptrs += BLOCK_K
            q_ptrs += BLOCK_K
    s = tl.load(s_ptr + offs_n * stride_s, mask=n_ok, other=0.0).to(tl.float32)
    y = acc * s[None, :]
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], y.to(y_ptr.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


def _prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    # Row tiles taller than the bucket only waste work (the 16-row tile is tl.dot's minimum).
    return [c for c in configs if c.kwargs["BLOCK_M"] <= max(16, named_args["M_BUCKET"])]


@functools.cache
def _autotuned() -> triton.runtime.Autotuner:
    configs = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
               for bm, bn, bk, w, s in CONFIGS]
    configs += [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "SWAP_AB": True}, num_warps=w, num_stages=s)
                for bm, bn, bk, w, s in SWAPPED_CONFIGS]
    return triton.autotune(configs=configs, key=["M_BUCKET", "N", "K"],
                           prune_configs_by={"early_config_prune": _prune})(_w8a16_kernel)


def w8a16_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, blocks: dict | None = None
                 ) -> torch.Tensor:
    """x: [M, K] float16/bfloat16/float32, qweight: int8 [N, K], scales: [N] float
    -> x @ (qweight * scales[:, None]).T: [M, N] in x.dtype. blocks: one launch ({"BLOCK_M", "BLOCK_N",
    "BLOCK_K"}, optionally "SWAP_AB", "num_warps", "num_stages") instead of the autotuned ones."""
    check_int8_operands(x, qweight, scales)
    n, k = qweight.shape
    if x.stride(1) != 1:
        x = x.contiguous()
    m = x.shape[0]
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    # fp32 without TF32, as torch's default: the result then matches a float32 reference closely.
    precision = "ieee" if x.dtype == torch.float32 else "tf32"
    args = (x, qweight, scales, y, m, n, m_bucket(m), x.stride(0), qweight.stride(0), scales.stride(0),
            y.stride(0), k, precision)
    if blocks is None and interpreting():
        blocks = INTERPRET_BLOCKS
    elif blocks is None and x.dtype == torch.float32:
        # float32 serves checks and the builder's scoring, not production: one fixed tile instead of
        # autotuning (17 compiles) for every new row bucket the scoring's varied lengths hit.
        blocks = {**FLOAT32_BLOCKS, "num_warps": 4, "num_stages": 3}
    if blocks is not None:
        _w8a16_kernel[(triton.cdiv(m, blocks["BLOCK_M"]), triton.cdiv(n, blocks["BLOCK_N"]))](*args, **blocks)
    else:
        _autotuned()[lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(n, meta["BLOCK_N"]))](*args)
    return y
