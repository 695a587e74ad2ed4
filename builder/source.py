"""Which source a request names, whether the builder may read it, and what its content is.

A source is a bundled model name or an absolute path: a Hugging Face folder, a .gguf file, or a folder
holding one .gguf and no config.json (the rule engine.loader.open_checkpoint follows). Paths are
resolved (symlinks followed, `..` removed) before they are checked against the allowed roots, and so
is every file the build reads: a link inside an allowed folder cannot pull in a file from elsewhere.
The allowed-roots check comes before any existence check: a path outside is refused whether it exists or not.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from builder.errors import BuildInputError, SourceNotAllowedError
from engine.errors import InvalidParameterError
from engine.loader import BUNDLED_MODELS, bundled_model_path
from inferline.engine_store import sha256_file

# Files of a HF folder that identify it: weights, configs, tokenizer files. Anything else (a README,
# .bin/.pt weights we never read) does not change what gets built, so it must not force a rebuild.
IDENTITY_SUFFIXES = (".safetensors", ".json", ".model", ".txt", ".jinja", ".tiktoken")


@dataclass(frozen=True)
class Source:
    request: str  # as the request named it
    kind: str  # "bundled", "hf" or "gguf"
    path: Path  # resolved: the HF folder or the .gguf file; open_checkpoint(str(path)) loads it
    files: tuple[Path, ...]  # the files whose content identifies the source (HF: top level of the folder)

    def identity(self) -> dict[str, Any]:
        """Name, size and sha256 of every identifying file, computed now: nothing is cached, since a
        file may be replaced between two builds (even by one of the same size and mtime)."""
        files = [{"name": f.name, "bytes": f.stat().st_size, "sha256": sha256_file(f)} for f in self.files]
        out: dict[str, Any] = {"format": "gguf" if self.kind == "bundled" else self.kind, "files": files}
        if self.kind == "bundled":
            out["bundled"] = self.request
        return out

    def own_dtype(self) -> str | None:
        """The dtype the checkpoint declares (HF config.json), without loading it; None for GGUF,
        whose tensors are quantized or dequantized to float32."""
        if self.kind != "hf":
            return None
        try:
            cfg = json.loads((self.path / "config.json").read_text())
        except ValueError as e:
            raise BuildInputError("source", f"{self.request}: config.json is not valid JSON ({e})") from e
        return cfg.get("torch_dtype") or cfg.get("dtype")  # transformers >= 5 writes "dtype"


def resolve_source(request: str, allowed_roots: Sequence[Path]) -> Source:
    roots = [Path(r).resolve() for r in allowed_roots]
    if not request:
        raise BuildInputError("source", f"is empty; give a bundled model name ({_bundled_names()}) or an absolute "
                                        "path to a HF checkpoint folder or .gguf file")
    if request in BUNDLED_MODELS:
        try:
            path = bundled_model_path(request)
        except InvalidParameterError as e:
            raise BuildInputError("source", e.problem) from e
        return Source(request, "bundled", path, (path,))
    path = Path(request)
    if not path.is_absolute():
        # The builder's working directory means nothing to a remote caller.
        raise BuildInputError("source", f"{request!r} is neither a bundled model ({_bundled_names()}) nor an "
                                        "absolute path")
    real = _allowed(request, path, roots)
    if not real.exists():
        raise BuildInputError("source", f"{request} does not exist")
    if real.is_file():
        if real.suffix != ".gguf":
            raise BuildInputError("source", f"{request} is a file but not a .gguf file")
        return Source(request, "gguf", real, (real,))
    ggufs = sorted(real.glob("*.gguf"))
    if not (real / "config.json").is_file():
        if len(ggufs) == 1:
            gguf = _allowed(request, ggufs[0], roots)
            return Source(request, "gguf", gguf, (gguf,))
        raise BuildInputError("source", f"{request} has no config.json (nor exactly one .gguf file)")
    files = []
    for f in sorted(real.iterdir()):
        if f.suffix in IDENTITY_SUFFIXES and not f.name.startswith(".") and f.is_file():
            _allowed(request, f, roots)  # HF cache snapshots are links into ../blobs: check the target
            files.append(f)
    return Source(request, "hf", real, tuple(files))


def _allowed(request: str, path: Path, roots: Sequence[Path]) -> Path:
    real = path.resolve()
    if any(real == root or real.is_relative_to(root) for root in roots):
        return real
    where = f"; it resolves to {real}" if real != path else ""
    allowed = ", ".join(map(str, roots)) if roots else "none are configured, so only bundled models can be built"
    raise SourceNotAllowedError(f"{path} is outside the builder's allowed roots ({allowed}){where}"
                                + ("" if str(path) == request else f" (source {request})"))


def _bundled_names() -> str:
    return ", ".join(BUNDLED_MODELS)
