from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from engine.layers.quantization import QuantizationConfig
from engine.models.config import ModelConfig


@dataclass(frozen=True)
class Checkpoint:
    config: ModelConfig
    path: Path  # the folder or the .gguf file
    format: str  # "hf" or "gguf"
    # Yields (HF tensor name, tensor) pairs; called once per load so nothing is held in memory.
    read_weights: Callable[[], Iterator[tuple[str, torch.Tensor]]]
    # Set for engines the builder quantized (config.json "quantization_config"); None: plain weights.
    quantization: QuantizationConfig | None = None
