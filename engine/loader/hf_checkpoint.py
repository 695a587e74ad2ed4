"""Hugging Face checkpoint folders: config.json plus model.safetensors or a sharded index."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open

from engine.errors import ModelNotFoundError
from engine.loader.checkpoint import Checkpoint
from engine.models.config import model_config_from_hf


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
    config = model_config_from_hf(json.loads(config_file.read_text()))
    files = _safetensors_files(folder)

    def read_weights() -> Iterator[tuple[str, torch.Tensor]]:
        for file in files:
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)

    return Checkpoint(config=config, path=folder, format="hf", read_weights=read_weights)
