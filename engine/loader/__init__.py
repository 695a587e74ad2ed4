"""Opening checkpoints: Hugging Face folders (config.json + safetensors, sharded or not), GGUF files,
and names of models bundled with a pip package. Every loader yields HF-named tensors, so the model
has one loading path."""
from __future__ import annotations

from pathlib import Path

from engine.errors import ModelNotFoundError
from engine.loader.bundled import BUNDLED_MODELS, bundled_model_path
from engine.loader.checkpoint import Checkpoint
from engine.loader.gguf_checkpoint import open_gguf
from engine.loader.hf_checkpoint import open_hf_folder


def open_checkpoint(model: str) -> Checkpoint:
    """`model` is a bundled model's name, a HF checkpoint folder or a .gguf file."""
    if model in BUNDLED_MODELS:
        return open_checkpoint(str(bundled_model_path(model)))
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return open_gguf(path)
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").exists() and len(ggufs) == 1:
            return open_gguf(ggufs[0])
        return open_hf_folder(path)
    raise ModelNotFoundError(f"{model!r} is neither a bundled model ({', '.join(BUNDLED_MODELS)}), "
                             "a checkpoint folder nor a .gguf file")


__all__ = ["BUNDLED_MODELS", "Checkpoint", "open_checkpoint", "bundled_model_path"]
