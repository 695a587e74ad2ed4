"""GGUF files (llama.cpp's format): metadata becomes a ModelConfig, tensors are dequantized to
float32 and renamed to HF names. llama.cpp stores Llama q/k projections with rows permuted for its
RoPE layout; they are permuted back here."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from engine.errors import ModelNotFoundError, UnsupportedModelError
from engine.loader.checkpoint import Checkpoint
from engine.models.config import ModelConfig

_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
# GGUF architectures we read, and whether llama.cpp permuted their q/k rows.
_ARCHITECTURES = {"llama": True, "qwen2": False}


def _hf_name(gguf_name: str) -> str:
    parts = gguf_name.split(".")
    if parts[0] == "blk":
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{parts[3]}"
    return f"{_GLOBAL_NAMES[parts[0]]}.{parts[1]}"


def _unpermute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def _config(reader) -> ModelConfig:
    arch = _field(reader, "general.architecture")
    if arch not in _ARCHITECTURES:
        raise UnsupportedModelError(f"GGUF architecture {arch!r} is not supported "
                                    f"(supported: {sorted(_ARCHITECTURES)})")
    names = {t.name for t in reader.tensors}
    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    hidden = int(_field(reader, f"{arch}.embedding_length"))
    heads = int(_field(reader, f"{arch}.attention.head_count"))
    return ModelConfig(
        architecture=arch,
        vocab_size=int(embd.shape[1]),
        hidden_size=hidden,
        intermediate_size=int(_field(reader, f"{arch}.feed_forward_length")),
        num_layers=int(_field(reader, f"{arch}.block_count")),
        num_heads=heads,
        num_kv_heads=int(_field(reader, f"{arch}.attention.head_count_kv", heads)),
        head_dim=int(_field(reader, f"{arch}.attention.key_length", hidden // heads)),
        rms_norm_eps=float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)),
        rope_theta=float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        rope_scaling=None,
        max_position_embeddings=int(_field(reader, f"{arch}.context_length", 4096)),
        tie_word_embeddings="output.weight" not in names,
        qkv_bias="blk.0.attn_q.bias" in names,
        o_proj_bias="blk.0.attn_output.bias" in names,
        mlp_bias="blk.0.ffn_down.bias" in names,
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_ids=tuple(int(x) for x in [_field(reader, "tokenizer.ggml.eos_token_id")] if x is not None),
        torch_dtype=None,
    )


def open_gguf(path: Path) -> Checkpoint:
    from gguf import GGUFReader
    from gguf.quants import dequantize

    try:
        reader = GGUFReader(str(path))
    except Exception as e:  # the gguf package raises bare ValueErrors on bad magic / truncation
        raise ModelNotFoundError(f"{path} is not a readable GGUF file: {e}") from e
    config = _config(reader)
    permuted = _ARCHITECTURES[config.architecture]

    def read_weights() -> Iterator[tuple[str, torch.Tensor]]:
        for t in reader.tensors:
            array = np.array(dequantize(t.data, t.tensor_type), dtype=np.float32)  # a writable copy off the memmap
            w = torch.from_numpy(array).reshape(tuple(int(d) for d in reversed(t.shape)))
            name = _hf_name(t.name)
            if permuted and name.endswith("q_proj.weight"):
                w = _unpermute(w, config.num_heads)
            elif permuted and name.endswith("k_proj.weight"):
                w = _unpermute(w, config.num_kv_heads)
            yield name, w

    return Checkpoint(config=config, path=path, format="gguf", read_weights=read_weights)
