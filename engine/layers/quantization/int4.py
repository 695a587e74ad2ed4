"""W4A16: int4 weights in groups of `group_size` input channels, each group with its own scale and
integer zero point (asymmetric); activations stay in the model dtype. int4_wo, AWQ and GPTQ all store
this format: they differ in how the int4 values are chosen, not in how they are multiplied.

Stored: `qweight` uint8 [out, ceil(in/2)] (two values per byte, even column in the low nibble),
`scales` [out, groups] and `zeros` uint8 [out, groups], groups = ceil(in / group_size) (the last group
may be short: SmolLM2's 576 = 4.5 x 128). w[o, i] = (q[o, i] - zeros[o, g]) * scales[o, g], g = i // group_size.

CUDA multiplies with the Triton W4A16 kernels: a GEMV for decode's few rows (1-4; it splits K where N
alone does not fill the GPU), else a tensor-core GEMM; both read the nibbles of each 32-bit word in
KERNEL_ORDER (below), into which a CUDA layer reorders its weights once after loading. CPU uses torch's
tinygemm int4 kernel (weights repacked once after loading) for bfloat16 activations; for float32 that
kernel is ~100x slower than dequantize-then-matmul, so float32 dequantizes (see int8_wo.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.layers.linear_base import LinearBase
from engine.layers.quantization.config import QuantizationConfig

CPU_INNER_K_TILES = 2


def pack(q: torch.Tensor) -> torch.Tensor:
    """[out, in] values 0..15 -> uint8 [out, ceil(in/2)], even column in the low nibble."""
    if q.shape[1] % 2:
        q = F.pad(q, (0, 1))
    q = q.to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack(packed: torch.Tensor, in_features: int) -> torch.Tensor:
    """uint8 [out, ceil(in/2)] -> uint8 [out, in] values 0..15."""
    q = torch.stack([packed & 0x0F, packed >> 4], dim=-1).view(packed.shape[0], -1)
    return q[:, :in_features]


# The CUDA kernels read each 32-bit word (8 columns) with its nibbles in pairs: position p (bits 4p)
# holds the word's column 2p and position p + 4 (bits 16 + 4p) column 2p + 1, so one and-or with
# 0x000F000F lifts two adjacent columns into the low bits of a bf16 pair that multiplies two adjacent
# activations at once (triton/w4a16_gemv.py). KERNEL_ORDER[position] = column within the word. Stored
# engines keep the plain order; a CUDA layer reorders its own copy once after loading.
KERNEL_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
_FROM_KERNEL_ORDER = tuple(KERNEL_ORDER.index(c) for c in range(8))
_REORDER_ROWS = 4096  # rows per step: the unpacked temporaries stay small next to a 7B lm_head


def has_kernel_order(in_features: int) -> bool:
    """Whether the CUDA kernels take weights of this width in KERNEL_ORDER: rows of whole words (every
    real model's widths); others keep the plain order everywhere."""
    return in_features % 8 == 0


def _reorder(packed: torch.Tensor, in_features: int, order: tuple[int, ...],
             out: torch.Tensor | None = None) -> torch.Tensor:
    """out may be packed itself: each block of rows is unpacked (copied) before it is written back."""
    if not has_kernel_order(in_features):
        raise ValueError(f"in_features: the kernel order needs whole 8-column words, got {in_features}")
    out = torch.empty_like(packed) if out is None else out
    for r in range(0, packed.shape[0], _REORDER_ROWS):
        q = unpack(packed[r:r + _REORDER_ROWS], in_features)
        out[r:r + _REORDER_ROWS] = pack(q.view(q.shape[0], -1, 8)[:, :, list(order)].reshape(q.shape))
    return out


def to_kernel_order(packed: torch.Tensor, in_features: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Plain packed rows (as stored) -> the CUDA kernels' KERNEL_ORDER (into out, which may be packed)."""
    return _reorder(packed, in_features, KERNEL_ORDER, out)


def from_kernel_order(packed: torch.Tensor, in_features: int) -> torch.Tensor:
    return _reorder(packed, in_features, _FROM_KERNEL_ORDER)


def group_index(in_features: int, group_size: int, device: torch.device | None = None) -> torch.Tensor:
    return torch.arange(in_features, device=device) // group_size


def quantize_with(weight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                  group_size: int) -> torch.Tensor:
    """Integer values 0..15 [out, in] of `weight` for given per-group scales and zero points (GPTQ
    calls this column by column with its own error-compensated weights)."""
    g = group_index(weight.shape[1], group_size, weight.device)
    return (torch.round(weight.float() / scales[:, g].float()) + zeros[:, g].float()).clamp(0, 15)


def group_params(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric min/max scale and zero point per group: ([out, groups] float, [out, groups] float 0..15)."""
    out, n = weight.shape
    groups = -(-n // group_size)
    w = F.pad(weight.float(), (0, groups * group_size - n)).view(out, groups, group_size)
    # Padding (a short last group) must not widen the group's range.
    real = (torch.arange(groups * group_size, device=weight.device) < n).view(groups, group_size)
    w_min = torch.where(real, w, torch.inf).amin(-1)
    w_max = torch.where(real, w, -torch.inf).amax(-1)
    w_min, w_max = w_min.clamp(max=0), w_max.clamp(min=0)  # zero stays exactly representable
    scales = (w_max - w_min).clamp(min=1e-8) / 15.0
    zeros = torch.round(-w_min / scales).clamp(0, 15)
    return scales, zeros


def quantize(weight: torch.Tensor, config: QuantizationConfig) -> dict[str, torch.Tensor]:
    # weight: [out, in] float -> round to nearest within each group
    scales, zeros = group_params(weight, config.group_size)
    q = quantize_with(weight, scales, zeros, config.group_size)
    return to_tensors(q, scales, zeros)


def to_tensors(q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"qweight": pack(q), "scales": scales.float(), "zeros": zeros.to(torch.uint8)}


def dequantize(tensors: dict[str, torch.Tensor], config: QuantizationConfig, in_features: int | None = None
               ) -> torch.Tensor:
    packed, scales, zeros = tensors["qweight"], tensors["scales"], tensors["zeros"]
    n = in_features or packed.shape[1] * 2
    g = group_index(n, config.group_size, packed.device)
    return (unpack(packed, n).float() - zeros[:, g].float()) * scales[:, g].float()


class Int4WeightOnlyLinear(LinearBase):
    def __init__(self, in_features: int, out_features: int, bias: bool, config: QuantizationConfig):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.config = config
        self.group_size = config.group_size
        groups = -(-in_features // config.group_size)
        self.qweight = nn.Parameter(torch.empty(out_features, -(-in_features // 2), dtype=torch.uint8),
                                    requires_grad=False)
        self.scales = nn.Parameter(torch.empty(out_features, groups), requires_grad=False)
        self.zeros = nn.Parameter(torch.empty(out_features, groups, dtype=torch.uint8), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None
        self._cpu_packed: torch.Tensor | None = None  # tinygemm layout, made by prepare()
        self._cpu_scales_zeros: torch.Tensor | None = None
        self.kernel_order = False  # qweight in KERNEL_ORDER (CUDA, after prepare)

    @torch.no_grad()
    def prepare(self) -> None:
        """After loading: on CUDA, reorder qweight in place for the Triton kernels (KERNEL_ORDER; the
        state dict still gives the stored order); on CPU, repack for the bf16 kernel (tinygemm: k padded
        to whole groups, its own layout, w = (q - 8) * scale + offset with offset = (8 - zero) * scale)."""
        if self.qweight.is_cuda:
            if not self.kernel_order and has_kernel_order(self.in_features):
                to_kernel_order(self.qweight, self.in_features, out=self.qweight)  # in place: no 2nd copy
                self.kernel_order = True
            return
        if self.scales.dtype != torch.bfloat16:
            return
        groups = self.scales.shape[1]
        k_padded = groups * self.group_size
        q = unpack(self.qweight, self.in_features).to(torch.int32)
        # Padded columns get q = zero point, i.e. weight 0, so padding x with zeros changes nothing.
        pad_q = self.zeros[:, -1:].to(torch.int32).expand(-1, k_padded - self.in_features)
        q = torch.cat([q, pad_q], dim=1)
        self._cpu_packed = torch._convert_weight_to_int4pack_for_cpu(q, CPU_INNER_K_TILES)
        scales = self.scales.float()
        offsets = (8.0 - self.zeros.float()) * scales
        stacked = torch.stack([scales, offsets], dim=-1).transpose(0, 1)
        self._cpu_scales_zeros = stacked.contiguous().to(self.scales.dtype)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        # x: [tokens, in] -> [tokens, out]
        if x.is_cuda:
            from engine.layers.quantization.triton.w4a16 import w4a16_matmul
            from engine.layers.quantization.triton.w4a16_gemv import prefers_gemv, w4a16_gemv

            gemv = prefers_gemv(x.shape[0], self.in_features)
            y = (w4a16_gemv if gemv else w4a16_matmul)(x, self.qweight, self.scales, self.zeros, self.group_size)
        elif x.dtype != torch.bfloat16 or self._cpu_packed is None:
            return self.reference(x)
        else:
            k_padded = self.scales.shape[1] * self.group_size
            if k_padded != self.in_features:
                x = F.pad(x, (0, k_padded - self.in_features))
            y = torch._weight_int4pack_mm_for_cpu(x, self._cpu_packed, self.group_size,
                                                  self._cpu_scales_zeros.to(x.dtype))
        return y if self.bias is None else y + self.bias

    def gated_gemv(self, x: torch.Tensor) -> torch.Tensor | None:
        if x.is_cuda and self.bias is None:
            from engine.layers.quantization.triton.w4a16_gemv import prefers_gemv, w4a16_gemv

            if prefers_gemv(x.shape[0], self.in_features):
                return w4a16_gemv(x, self.qweight, self.scales, self.zeros, self.group_size, gated=True)
        return None

    def stored_qweight(self) -> torch.Tensor:
        """qweight in the stored (plain) order, whatever order the kernels hold it in."""
        return from_kernel_order(self.qweight, self.in_features) if self.kernel_order else self.qweight

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.kernel_order:  # an exported engine stores the plain order
            destination[prefix + "qweight"] = self.stored_qweight()

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        w = dequantize({"qweight": self.stored_qweight(), "scales": self.scales, "zeros": self.zeros}, self.config,
                       self.in_features)
        return F.linear(x, w.to(x.dtype), self.bias)
