"""Hugging Face checkpoint folders: config.json plus model.safetensors or a sharded index."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open

from engine.errors import InvalidParameterError, ModelNotFoundError
from engine.layers.quantization import QuantizationConfig
from engine.loader.checkpoint import Checkpoint
from engine.models.config import model_config_from_hf

QUANT_METHOD = "inferline"  # config.json quantization_config.quant_method of engines our builder quantized


def _safetensors_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [folder / s for s in shards]
    else:
        files = sorted(folder.glob("*.safetensors"))
    missing = [f.name for f in files if not f.exists()]
    if not files or missing:
        raise ModelNotFoundError(f"{folder} has no complete set of .safetensors weights"
                                 + (f" (missing {missing})" if missing else ""))
    return files


def open_hf_folder(folder: Path) -> Checkpoint:
    config_file = folder / "config.json"
    if not config_file.exists():
        raise ModelNotFoundError(f"{folder} has no config.json")
    raw = json.loads(config_file.read_text())
    config = model_config_from_hf(raw)
    quantization = quantization_of(raw)
    files = _safetensors_files(folder)

    def read_weights() -> Iterator[tuple[str, torch.Tensor]]:
        for file in files:
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)

    return Checkpoint(config=config, path=folder, format="hf", read_weights=read_weights, quantization=quantization)


def quantization_of(raw_config: dict) -> QuantizationConfig | None:
    """Our builder's quantization_config, or None for plain weights. Checkpoints quantized by other
    tools (AutoAWQ, AutoGPTQ, ...) are refused: their layouts are not ours."""
    section = raw_config.get("quantization_config")
    if not section:
        return None
    method = section.get("quant_method")
    if method != QUANT_METHOD:
        raise InvalidParameterError("model", f"the checkpoint is quantized by another tool ({method!r}); give the "
                                             "unquantized checkpoint and let the builder quantize it")
    return QuantizationConfig.from_dict(section)
