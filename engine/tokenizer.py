"""Tokenizers come from the checkpoint itself (tokenizer.json in a folder, or the vocabulary inside a
GGUF file), through transformers, offline. A checkpoint without one still runs on token ids."""
from __future__ import annotations

import os
from typing import Any

from engine.loader.checkpoint import Checkpoint


def load_tokenizer(ckpt: Checkpoint) -> Any | None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers import AutoTokenizer

    if ckpt.format == "gguf":
        return AutoTokenizer.from_pretrained(str(ckpt.path.parent), gguf_file=ckpt.path.name, local_files_only=True)
    if not any((ckpt.path / f).exists() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
        return None
    return AutoTokenizer.from_pretrained(str(ckpt.path), local_files_only=True)
