"""Model implementations by architecture; every supported HF family maps to one decoder class."""
from engine.models.config import ModelConfig, model_config_from_hf
from engine.models.llama import LlamaForCausalLM

MODEL_CLASSES = {arch: LlamaForCausalLM for arch in ("llama", "mistral", "qwen2", "baichuan")}

__all__ = ["MODEL_CLASSES", "ModelConfig", "model_config_from_hf", "LlamaForCausalLM"]
