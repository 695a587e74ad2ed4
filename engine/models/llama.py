"""The Llama-family decoder (Llama 2/3, Mistral, Qwen2, SmolLM2, Baichuan2-7B), written plainly.

Tokens of all sequences in a step are flattened into one [tokens, hidden] batch; attention is the
only place that needs to know which sequence a token belongs to, via AttentionMetadata.
"""
from __future__ import annotations

import math
import re
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from engine.layers.embedding import make_embedding
from engine.layers.fp8_activations import Fp8Activations
from engine.layers.attention import ATTENTION_BACKENDS, AttentionMetadata
from engine.layers.attention.kv_quant import KV_FP8
from engine.layers.linear import make_linear
from engine.layers.linear_base import LinearBase
from engine.layers.quantization import QuantizationConfig
from engine.layers.norm import RMSNorm
from engine.layers.rotary import RotaryEmbedding
from engine.models.config import ModelConfig


# vLLM / llm-compressor's per-layer fp8 KV-cache scales: model.layers.{i}.self_attn.{k,v}_scale
KV_SCALE_NAME = re.compile(r"layers\.(\d+)\.self_attn\.([kv])_scale")


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, rotary: RotaryEmbedding, attention_backend: str,
                 quant: QuantizationConfig | None):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_size = cfg.num_heads * cfg.head_dim
        self.kv_size = cfg.num_kv_heads * cfg.head_dim
        self.qkv_proj = make_linear(cfg.hidden_size, self.q_size + 2 * self.kv_size, bias=cfg.qkv_bias,
                                    quantization=quant)
        self.o_proj = make_linear(self.q_size, cfg.hidden_size, bias=cfg.o_proj_bias, quantization=quant)
        self.rotary = rotary
        self.attn = ATTENTION_BACKENDS[attention_backend](cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                                                          scale=cfg.head_dim ** -0.5)
        # An fp8 KV cache holds K / k_scale and V / v_scale. Python floats, fixed once loaded: the kernels
        # take them as scalar arguments, which CUDA graphs capture as constants. 1.0 (vLLM's default
        # without calibration) unless the checkpoint has them.
        self.k_scale, self.v_scale = 1.0, 1.0
        self.kv_scales_loaded = False

    def load_kv_scale(self, which: str, scale: torch.Tensor) -> None:
        """A checkpoint's `k_scale` or `v_scale` (which: "k" or "v") for this layer's fp8 KV cache."""
        if scale.numel() != 1:
            raise ValueError(f"{which}_scale: one scale per layer is supported, got shape {tuple(scale.shape)}")
        value = float(scale.float().reshape(()))
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{which}_scale: must be finite and > 0, got {value}")
        setattr(self, f"{which}_scale", value)
        self.kv_scales_loaded = True

    def forward(self, x: torch.Tensor | Fp8Activations, positions: torch.Tensor, kv_cache: torch.Tensor,
                meta: AttentionMetadata) -> torch.Tensor:
        # x: [tokens, hidden]
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        # The scales describe an fp8 cache; a cache in the model's dtype holds K and V as they are.
        k_scale, v_scale = (self.k_scale, self.v_scale) if kv_cache.dtype == KV_FP8 else (1.0, 1.0)
        # RoPE is applied by the attention backend: the Triton one rotates q and k as it stores K/V.
        out = self.attn(q, k, v, kv_cache, meta, k_scale, v_scale, rotary=self.rotary,
                        positions=positions)  # [tokens, heads, head_dim]
        return self.o_proj(out.reshape(-1, self.q_size))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, quant: QuantizationConfig | None):
        super().__init__()
        self.intermediate_size = cfg.intermediate_size
        self.gate_up_proj = make_linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=cfg.mlp_bias,
                                        quantization=quant)
        self.down_proj = make_linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias, quantization=quant)

    def forward(self, x: torch.Tensor | Fp8Activations) -> torch.Tensor:
        # x: [tokens, hidden]
        # silu(gate) * up: at decode sizes the gate_up GEMV's epilogue (engine/layers/triton/activation.py)
        act = self.gate_up_proj(x, gated=True, fp8_output=self.down_proj.fp8_input())
        return self.down_proj(act)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, rotary: RotaryEmbedding, attention_backend: str,
                 quant: QuantizationConfig | None = None):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = Attention(cfg, rotary, attention_backend, quant)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg, quant)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None, positions: torch.Tensor,
                kv_cache: torch.Tensor, meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
        # x, residual: [tokens, hidden]; the residual stream is x + residual (x alone when residual is
        # None). Returns (mlp output, residual stream before it): their sum is left to the next norm,
        # which adds and normalises in one pass. `residual` is never modified in place.
        # Each norm hands its projection fp8 activations where that takes them (fp8_activations.py).
        qkv_fp8, gate_up_fp8 = self.attn.qkv_proj.fp8_input(), self.mlp.gate_up_proj.fp8_input()
        if residual is None:
            h, residual = self.attn_norm(x, fp8_output=qkv_fp8), x
        else:
            h, residual = self.attn_norm(x, residual=residual, fp8_output=qkv_fp8)
        attn_out = self.attn(h, positions, kv_cache, meta)
        h, residual = self.mlp_norm(attn_out, residual=residual, fp8_output=gate_up_fp8)
        return self.mlp(h), residual


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig, max_positions: int, attention_backend: str = "torch_paged",
                 quantization: QuantizationConfig | None = None):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = make_embedding(cfg.vocab_size, cfg.hidden_size, quantization)
        rotary = RotaryEmbedding(cfg.head_dim, max_positions, cfg.rope_theta, cfg.rope_scaling)
        self.layers = nn.ModuleList(DecoderLayer(cfg, rotary, attention_backend, quantization)
                                    for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        # A quantized lm_head is its own tensor even when the checkpoint ties it to the embedding.
        self.lm_head_quantized = quantization is not None and quantization.lm_head
        if self.lm_head_quantized:
            self.lm_head = make_linear(cfg.hidden_size, cfg.vocab_size, quantization=quantization)
        elif cfg.tie_word_embeddings:
            if not isinstance(self.embed_tokens, nn.Embedding):
                raise ValueError("a quantized embedding cannot serve as the tied lm_head: quantize the lm_head too")
            with torch.device("meta"):  # its weight is the embedding's: allocate nothing for it
                self.lm_head = make_linear(cfg.hidden_size, cfg.vocab_size)
            self.lm_head.weight = self.embed_tokens.weight
        else:
            self.lm_head = make_linear(cfg.hidden_size, cfg.vocab_size)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list[torch.Tensor],
                meta: AttentionMetadata) -> torch.Tensor:
        # input_ids, positions: [tokens] -> hidden states [tokens, hidden]
        x, residual = self.embed_tokens(input_ids), None
        for layer, kv_cache in zip(self.layers, kv_caches):
            x, residual = layer(x, residual, positions, kv_cache, meta)
        return self.norm(x, residual=residual)[0]

    @property
    def dtype(self) -> torch.dtype:
        """The activations' dtype (the embedding's table may be int8)."""
        return self.norm.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.norm.weight.device

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        # hidden: [seqs, hidden] -> [seqs, vocab] float32
        if isinstance(self.lm_head, LinearBase):
            return self.lm_head.logits(hidden)
        return self.lm_head(hidden).float()  # a plain nn.Linear (the builder's float models may hold one)

    # -- loading -------------------------------------------------------------------------------

    # HF name fragment -> (our parameter name fragment, shard index within the fused parameter)
    _FUSED = {
        "self_attn.q_proj": ("attn.qkv_proj", 0),
        "self_attn.k_proj": ("attn.qkv_proj", 1),
        "self_attn.v_proj": ("attn.qkv_proj", 2),
        "mlp.gate_proj": ("mlp.gate_up_proj", 0),
        "mlp.up_proj": ("mlp.gate_up_proj", 1),
    }
    _RENAMED = {
        "self_attn.W_pack": "attn.qkv_proj",
        "self_attn.o_proj": "attn.o_proj",
        "mlp.down_proj": "mlp.down_proj",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "mlp_norm",
    }

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load HF-named tensors, fusing q/k/v and gate/up as they arrive. Raises on missing tensors."""
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for hf_name, tensor in weights:
            if (kv_scale := KV_SCALE_NAME.fullmatch(hf_name.removeprefix("model."))) is not None:
                self.layers[int(kv_scale[1])].attn.load_kv_scale(kv_scale[2], tensor)
                continue
            name, shard = self._our_name(hf_name)
            if name is None:
                continue
            if name == "lm_head.weight" and self.cfg.norm_head:
                tensor = F.normalize(tensor.float(), dim=-1)
            param = params[name]
            with torch.no_grad():
                if shard is None:
                    param.copy_(tensor.view_as(param))
                elif name.endswith(".input_scale"):  # one per fused input, carried by every part: their max
                    first = not any(f"{name}#{i}" in loaded for i in range(3))
                    scale = tensor.to(param.device).view_as(param)
                    param.copy_(scale if first else torch.maximum(param, scale))
                else:
                    offset, size = self._shard_range(name, shard)
                    param.narrow(0, offset, size).copy_(tensor)
            loaded.add(f"{name}#{shard}")
        self._check_complete(loaded, params)

    def _our_name(self, hf_name: str) -> tuple[str | None, int | None]:
        name = hf_name.removeprefix("model.")
        if "rotary_emb" in name:
            return None, None
        if name.startswith("lm_head.") and self.cfg.tie_word_embeddings and not self.lm_head_quantized:
            return None, None
        for hf, (ours, shard) in self._FUSED.items():
            if f".{hf}." in name:
                return name.replace(hf, ours), shard
        for hf, ours in self._RENAMED.items():
            if f".{hf}." in name:
                return name.replace(hf, ours), None
        return name, None

    def _shard_range(self, name: str, shard: int) -> tuple[int, int]:
        cfg = self.cfg
        if "qkv_proj" in name:
            q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
            return [(0, q), (q, kv), (q + kv, kv)][shard]
        return shard * cfg.intermediate_size, cfg.intermediate_size

    def _check_complete(self, loaded: set[str], params: dict[str, nn.Parameter]) -> None:
        fused_shards = {".qkv_proj.": 3, ".gate_up_proj.": 2}  # any of their tensors: weight, qweight, scales...
        missing = []
        for name in params:
            shards = next((n for part, n in fused_shards.items() if part in name), None)
            if shards is None:
                ok = f"{name}#None" in loaded
            else:
                ok = f"{name}#None" in loaded or all(f"{name}#{i}" in loaded for i in range(shards))
            if not ok:
                missing.append(name)
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} tensors, e.g. {missing[:4]}")
