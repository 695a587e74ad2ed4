from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

# Tests must never reach a hub; everything they load is local.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Without CUDA the Triton kernels run in Triton's interpreter, which must be chosen before any module that
# defines a kernel is imported (Triton reads it when a kernel is defined): here, before test collection
# imports anything, so the order in which test modules import the engine does not matter.
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

STORE_MODEL = "smollm2-135m"  # the engine name in the engine_store_dir fixture
STORE_MAX_SEQ_LEN = 256

CHAT_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about GPUs.",
    "Explain what a KV cache is in one sentence.",
    "List three prime numbers.",
    "Translate 'good morning' into Spanish.",
    "What is 12 times 7?",
    "Give me a tip for writing clean Python code.",
    "Who wrote Romeo and Juliet?",
]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """The bundled SmolLM2-135M exported once as a HF folder (float32): engines load it in a second,
    where the GGUF takes ~10 s to parse and dequantize."""
    from engine.loader import open_checkpoint
    from engine.loader.export import export_hf_folder
    from engine.tokenizer import load_tokenizer

    ckpt = open_checkpoint("smollm2-135m")
    return export_hf_folder(ckpt, load_tokenizer(ckpt), tmp_path_factory.mktemp("smollm2"))


@pytest.fixture(scope="session")
def make_engine(smollm2_dir):
    from engine import Engine, EngineConfig

    def make(**overrides):
        return Engine(EngineConfig(**{"model": str(smollm2_dir), "max_seq_len": 512, "max_batch_size": 8, **overrides}))

    return make


@pytest.fixture(scope="session")
def smollm2_engine(make_engine):
    return make_engine()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> str:
    """A real redis-server of the test session's own, on a free port."""
    from tests.servers import redis_server

    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


def store_with_smollm2(root: Path, smollm2_dir: Path, name: str, max_batch_size: int, max_seq_len: int) -> Path:
    """An engine store at `root` holding the bundled model as engine `name` (files hard-linked)."""
    from inferline.engine_store import EngineStore, Manifest

    store = EngineStore(root)
    staging = store.new_staging_dir(name)
    for f in smollm2_dir.iterdir():
        try:  # hard links: the 540 MB of weights need not be copied (the gateway never reads them)
            os.link(f, staging / f.name)
        except OSError:
            shutil.copy2(f, staging / f.name)
    store.commit(staging, Manifest(name=name, fingerprint="test", architecture="llama", dtype="float32",
                                   quantization={"scheme": "none"}, max_batch_size=max_batch_size,
                                   max_seq_len=max_seq_len, source="smollm2-135m"))
    return store.root


@pytest.fixture(scope="session")
def engine_store_dir(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An engine store holding the bundled model as engine STORE_MODEL."""
    return store_with_smollm2(tmp_path_factory.mktemp("engines"), smollm2_dir, STORE_MODEL, max_batch_size=4,
                              max_seq_len=STORE_MAX_SEQ_LEN)
