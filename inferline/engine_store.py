"""The engine store: a directory of built engines, one folder each, written by the builder and read
by workers.

    <root>/<name>/manifest.json     what the engine is, and the sha256 of every other file
    <root>/<name>/config.json, model.safetensors, tokenizer files ...
    <root>/.staging/<name>-<random>/ a build in progress; renamed into place atomically

An engine's checksum is the sha256 of its manifest. `verify` recomputes every file's sha256, so a
worker never serves a corrupt or half-written engine.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class EngineStoreError(Exception):
    """Base of the store's errors."""


class EngineNotFoundError(EngineStoreError):
    def __init__(self, name: str):
        super().__init__(f"engine {name!r} is not in the store")
        self.name = name


class EngineCorruptError(EngineStoreError):
    def __init__(self, name: str, problem: str):
        super().__init__(f"engine {name!r} is corrupt: {problem}")
        self.name = name


@dataclass(frozen=True)
class Manifest:
    name: str
    fingerprint: str  # sha256 of the build inputs
    architecture: str
    dtype: str
    quantization: dict  # {"scheme": "none", ...}; later schemes add group size, calibration fingerprint
    max_batch_size: int
    max_seq_len: int
    source: str
    files: dict[str, dict] = field(default_factory=dict)  # relative path -> {"sha256", "bytes"}
    created_at: float = 0.0
    format_version: int = FORMAT_VERSION

    @property
    def size_bytes(self) -> int:
        return sum(f["bytes"] for f in self.files.values())

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_name(name: str) -> None:
    if not NAME_PATTERN.match(name or ""):
        raise ValueError(f"engine name {name!r} must match {NAME_PATTERN.pattern}")


class EngineStore:
    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        check_name(name)
        return self.root / name

    def exists(self, name: str) -> bool:
        return (self.path(name) / MANIFEST).is_file()

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if (p / MANIFEST).is_file() and NAME_PATTERN.match(p.name))

    def manifest(self, name: str) -> Manifest:
        file = self.path(name) / MANIFEST
        if not file.is_file():
            raise EngineNotFoundError(name)
        try:
            return Manifest(**json.loads(file.read_bytes()))
        except (ValueError, TypeError) as e:
            raise EngineCorruptError(name, f"unreadable manifest: {e}") from e

    def checksum(self, name: str) -> str:
        return hashlib.sha256((self.path(name) / MANIFEST).read_bytes()).hexdigest()

    def verify(self, name: str) -> Manifest:
        """Recompute every file's sha256 against the manifest; raise EngineCorruptError on any difference."""
        manifest = self.manifest(name)
        folder = self.path(name)
        for rel, meta in manifest.files.items():
            file = folder / rel
            if not file.is_file():
                raise EngineCorruptError(name, f"{rel} is missing")
            if file.stat().st_size != meta["bytes"] or sha256_file(file) != meta["sha256"]:
                raise EngineCorruptError(name, f"{rel} does not match its sha256 in the manifest")
        return manifest

    def new_staging_dir(self, name: str) -> Path:
        check_name(name)
        staging = self.root / ".staging" / f"{name}-{uuid.uuid4().hex[:8]}"
        staging.mkdir(parents=True)
        return staging

    def commit(self, staging: Path, manifest: Manifest) -> Manifest:
        """Hash every file in `staging`, write the manifest, and move it into place atomically."""
        files = {str(p.relative_to(staging)): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
                 for p in sorted(staging.rglob("*")) if p.is_file() and p.name != MANIFEST}
        final = Manifest(**{**asdict(manifest), "files": files, "created_at": manifest.created_at or time.time()})
        (staging / MANIFEST).write_bytes(final.to_json())
        target = self.path(manifest.name)
        if target.exists():  # replace: move the old one aside first so the rename stays atomic
            old = self.root / ".staging" / f"{manifest.name}-old-{uuid.uuid4().hex[:8]}"
            os.rename(target, old)
            os.rename(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, target)
        return final

    def clean_staging(self) -> list[Path]:
        """Remove what crashed builds or deletes left in .staging; only safe with one builder per store."""
        staging = self.root / ".staging"
        leftovers = sorted(staging.iterdir()) if staging.is_dir() else []
        for path in leftovers:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        return leftovers

    def delete(self, name: str) -> Manifest | None:
        """Remove an engine; returns its manifest, or None when the manifest was unreadable."""
        if not self.path(name).is_dir():
            raise EngineNotFoundError(name)
        try:
            manifest: Manifest | None = self.manifest(name)
        except EngineCorruptError:
            manifest = None
        trash = self.root / ".staging" / f"{name}-deleted-{uuid.uuid4().hex[:8]}"
        trash.parent.mkdir(exist_ok=True)
        os.rename(self.path(name), trash)
        shutil.rmtree(trash, ignore_errors=True)
        return manifest
