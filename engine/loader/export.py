"""Writes any checkpoint we can open as a Hugging Face folder (config.json + model.safetensors +
tokenizer files): one loading format for engines built from GGUF or HF sources alike."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from engine.loader.checkpoint import Checkpoint
from engine.models.config import ModelConfig


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
