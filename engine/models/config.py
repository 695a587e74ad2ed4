"""The one model config the engine's decoder reads, built from a HF config.json or GGUF metadata."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from engine.errors import UnsupportedModelError


@dataclass(frozen=True)
class ModelConfig:
    architecture: str  # which HF family it came from: llama, mistral, qwen2, baichuan
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int  # == num_heads: MHA, 1: MQA, a divisor: GQA
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool = False  # Qwen2, and Llama with attention_bias
    o_proj_bias: bool = False  # Llama with attention_bias (HF puts it on o_proj too)
    mlp_bias: bool = False  # Llama with mlp_bias: gate/up/down
    norm_head: bool = False  # Baichuan2's NormHead: lm_head rows are L2-normalised
    sliding_window: int | None = None
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    torch_dtype: str | None = None

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise UnsupportedModelError(f"num_attention_heads={self.num_heads} is not a multiple of "
                                        f"num_key_value_heads={self.num_kv_heads}")


def _eos_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    return tuple(value) if isinstance(value, (list, tuple)) else (int(value),)


def _rope(cfg: dict) -> tuple[float, dict | None]:
    # transformers >= 5 writes `rope_parameters` (theta inside); older versions `rope_theta` + `rope_scaling`.
    params = cfg.get("rope_parameters") or {}
    theta = float(cfg.get("rope_theta", params.get("rope_theta", 10000.0)))
    scaling = cfg.get("rope_scaling") or params or None
    if scaling is not None:
        scaling = {k: v for k, v in scaling.items() if k != "rope_theta"}
        if scaling.get("rope_type", scaling.get("type", "default")) == "default":
            scaling = None
    return theta, scaling


def _llama_like(cfg: dict, architecture: str, **overrides: Any) -> ModelConfig:
    num_heads = cfg["num_attention_heads"]
    theta, scaling = _rope(cfg)
    sliding = cfg.get("sliding_window") if cfg.get("use_sliding_window", True) else None
    fields = dict(
        architecture=architecture,
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_layers=cfg["num_hidden_layers"],
        num_heads=num_heads,
        num_kv_heads=cfg.get("num_key_value_heads") or num_heads,
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // num_heads,
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        max_position_embeddings=cfg.get("max_position_embeddings", 4096),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        qkv_bias=bool(cfg.get("attention_bias", False)),
        o_proj_bias=bool(cfg.get("attention_bias", False)),
        mlp_bias=bool(cfg.get("mlp_bias", False)),
        sliding_window=sliding,
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_ids=_eos_ids(cfg.get("eos_token_id")),
        torch_dtype=cfg.get("torch_dtype") or cfg.get("dtype"),
    )
    fields.update(overrides)
    return ModelConfig(**fields)


# model_type in config.json -> how to read it. All are served by the one Llama decoder.
HF_CONFIG_READERS: dict[str, Callable[[dict], ModelConfig]] = {
    "llama": lambda c: _llama_like(c, "llama"),
    "mistral": lambda c: _llama_like(c, "mistral"),
    "qwen2": lambda c: _llama_like(c, "qwen2", qkv_bias=True, o_proj_bias=False, mlp_bias=False),
    # Baichuan2-7B: Llama layout with a fused W_pack projection and NormHead; MHA, RoPE.
    "baichuan": lambda c: _llama_like(
        c, "baichuan", norm_head=True,
        max_position_embeddings=c.get("model_max_length", c.get("max_position_embeddings", 4096))),
}


def model_config_from_hf(cfg: dict) -> ModelConfig:
    model_type = cfg.get("model_type")
    if model_type not in HF_CONFIG_READERS:
        raise UnsupportedModelError(f"model_type {model_type!r} is not supported "
                                    f"(supported: {sorted(HF_CONFIG_READERS)})")
    if model_type == "baichuan" and cfg.get("hidden_size") == 5120:
        raise UnsupportedModelError("Baichuan2-13B uses ALiBi attention, which is not supported; Baichuan2-7B is")
    return HF_CONFIG_READERS[model_type](cfg)
