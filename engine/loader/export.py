"""Writes any checkpoint we can open as a Hugging Face folder (config.json + model.safetensors +
tokenizer files): one loading format for engines built from GGUF or HF sources alike. Quantized
engines are written from the quantized model itself (export_model): HF tensor names with the
format's suffixes (q_proj.qweight, q_proj.scales, ...) and a quantization_config in config.json."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from engine.layers.quantization import QuantizationConfig
from engine.loader.checkpoint import Checkpoint
from engine.loader.hf_checkpoint import QUANT_METHOD
from engine.models.config import ModelConfig

# Our fused parameter -> the HF tensors it splits back into (rows, in order).
_UNFUSED = {"attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
            "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj")}
_HF_NAMES = {"attn.o_proj": "self_attn.o_proj", "mlp.down_proj": "mlp.down_proj", "attn_norm": "input_layernorm",
             "mlp_norm": "post_attention_layernorm"}


def hf_config_dict(cfg: ModelConfig, dtype: torch.dtype) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model_type": "llama" if cfg.architecture == "baichuan" else cfg.architecture,
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": cfg.rope_scaling,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "attention_bias": cfg.qkv_bias and cfg.o_proj_bias,
        "mlp_bias": cfg.mlp_bias,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": list(cfg.eos_token_ids) if len(cfg.eos_token_ids) > 1 else next(iter(cfg.eos_token_ids), None),
        "torch_dtype": str(dtype).removeprefix("torch."),
    }
    if cfg.architecture == "qwen2":
        out["architectures"] = ["Qwen2ForCausalLM"]
    return out


def export_hf_folder(ckpt: Checkpoint, tokenizer: Any | None, dest: Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write `ckpt` to `dest` in HF layout, tensors cast to `dtype`. Baichuan's NormHead is applied
    here, so the result is a plain Llama checkpoint."""
    import torch.nn.functional as F

    dest.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    q = ckpt.config.num_heads * ckpt.config.head_dim
    kv = ckpt.config.num_kv_heads * ckpt.config.head_dim
    for name, tensor in ckpt.read_weights():
        if name.endswith("W_pack.weight"):
            for proj, part in zip(("q_proj", "k_proj", "v_proj"), tensor.split([q, kv, kv])):
                tensors[name.replace("W_pack", proj)] = part.to(dtype).contiguous()
            continue
        if name == "lm_head.weight" and ckpt.config.norm_head:
            tensor = F.normalize(tensor.float(), dim=-1)
        tensors[name] = tensor.to(dtype).contiguous()
    save_file(tensors, str(dest / "model.safetensors"), metadata={"format": "pt"})
    (dest / "config.json").write_text(json.dumps(hf_config_dict(ckpt.config, dtype), indent=2))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(dest))
    return dest


def export_model(model: torch.nn.Module, tokenizer: Any | None, dest: Path, dtype: torch.dtype,
                 quantization: QuantizationConfig) -> Path:
    """Write a (quantized) LlamaForCausalLM as an HF folder the engine loads back: float tensors in
    `dtype`, scales in float32, quantized values as they are."""
    cfg: ModelConfig = model.cfg
    dest.mkdir(parents=True, exist_ok=True)
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    split_rows = {"attn.qkv_proj": [q, kv, kv], "mlp.gate_up_proj": [cfg.intermediate_size] * 2}
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if name.startswith("lm_head.") and not getattr(model, "lm_head_quantized", False) and cfg.tie_word_embeddings:
            continue  # the embedding's own tensor
        tensor = _stored(name, tensor, dtype)
        if not name.startswith("layers."):
            tensors[name if name.startswith("lm_head.") else f"model.{name}"] = tensor
            continue
        _, index, rest = name.split(".", 2)
        module, _, leaf = rest.rpartition(".")
        prefix = f"model.layers.{index}."
        if module in _UNFUSED:
            # A static input scale belongs to the fused input, which every part shares (modelopt's
            # convention: each of q/k/v_proj carries it; loading takes their max).
            parts = ([tensor.clone() for _ in _UNFUSED[module]] if leaf == "input_scale"
                     else tensor.split(split_rows[module]))
            for hf, part in zip(_UNFUSED[module], parts):
                tensors[f"{prefix}{hf}.{leaf}"] = part.contiguous()
        else:
            tensors[f"{prefix}{_HF_NAMES.get(module, module)}.{leaf}"] = tensor
    save_file(tensors, str(dest / "model.safetensors"), metadata={"format": "pt"})
    config = hf_config_dict(cfg, dtype)
    config["quantization_config"] = {"quant_method": QUANT_METHOD, **quantization.to_dict()}
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(dest))
    return dest


def _stored(name: str, tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if name.endswith(("scales", "input_scale")):
        return tensor.float().contiguous()
    if tensor.is_floating_point() and tensor.dtype.itemsize > 1:  # not int8/uint8/fp8 payloads
        return tensor.to(dtype).contiguous()
    return tensor.contiguous()
