"""Rotary position embeddings (RoPE), with the scaling schemes Llama-family checkpoints use."""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from engine.errors import UnsupportedModelError


def _default_inv_freq(dim: int, theta: float, scaling: dict) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def _linear_inv_freq(dim: int, theta: float, scaling: dict) -> torch.Tensor:
    return _default_inv_freq(dim, theta, scaling) / float(scaling["factor"])


def _llama3_inv_freq(dim: int, theta: float, scaling: dict) -> torch.Tensor:
    # Llama 3.1's frequency-dependent scaling: long wavelengths are divided by `factor`, short ones
    # kept, the band between interpolated smoothly.
    inv_freq = _default_inv_freq(dim, theta, scaling)
    factor = float(scaling["factor"])
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old_len = float(scaling["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(is_medium, smoothed, scaled)


INV_FREQ_BY_ROPE_TYPE: dict[str, Callable[[int, float, dict], torch.Tensor]] = {
    "default": _default_inv_freq,
    "linear": _linear_inv_freq,
    "llama3": _llama3_inv_freq,
}


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class RotaryEmbedding(nn.Module):
    """Applies RoPE in the rotate-half layout of HF checkpoints (GGUF weights are un-permuted on load)."""

    def __init__(self, head_dim: int, max_positions: int, theta: float, scaling: dict | None):
        super().__init__()
        scaling = scaling or {}
        rope_type = scaling.get("rope_type", scaling.get("type", "default"))
        if rope_type not in INV_FREQ_BY_ROPE_TYPE:
            raise UnsupportedModelError(f"rope scaling type {rope_type!r} is not supported "
                                        f"(supported: {sorted(INV_FREQ_BY_ROPE_TYPE)})")
        inv_freq = INV_FREQ_BY_ROPE_TYPE[rope_type](head_dim, theta, scaling)
        freqs = torch.arange(max_positions, dtype=torch.int64).float()[:, None] * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)  # [positions, head_dim]
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # positions: [tokens]; q: [tokens, heads, head_dim]; k: [tokens, kv_heads, head_dim]
        if q.is_cuda:  # one Triton kernel rotates q and k in place (views of the fused qkv output)
            from engine.layers.triton.rotary import apply_rope_

            apply_rope_(q, k, positions, self.cos, self.sin)
            return q, k
        cos = self.cos[positions].unsqueeze(1).to(q.dtype)
        sin = self.sin[positions].unsqueeze(1).to(q.dtype)
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
