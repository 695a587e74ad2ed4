"""Fixtures for driving our decoder by hand (model runner level) and for tiny random HF checkpoints."""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from engine import Engine, EngineConfig
from engine.block_manager import BlockManager
from engine.kv_cache import allocate_kv_cache
from engine.loader import open_checkpoint
from engine.model_runner import ModelRunner, load_model
from engine.sampling_params import SamplingParams
from engine.scheduler import ScheduledSequence
from engine.sequence import Sequence

CPU = torch.device("cpu")


class PagedDecoder:
    """Our decoder on a paged KV pool, stepped by hand the way Engine.step does it.

    The pool is filled with `kv_fill` first: freed blocks hold stale K/V of other sequences, so slots a
    sequence has not written must never influence its attention (a large finite value makes leaks loud).
    """

    def __init__(self, folder: Path, dtype: torch.dtype = torch.float32, num_blocks: int = 32,
                 block_size: int = 4, max_positions: int = 64, kv_fill: float = 1e3):
        ckpt = open_checkpoint(str(folder))
        self.config = ckpt.config
        self.model = load_model(ckpt, dtype, CPU, max_positions, "torch_paged")
        self.kv_caches = allocate_kv_cache(ckpt.config, num_blocks, block_size, dtype, CPU)
        for cache in self.kv_caches:
            cache.fill_(kv_fill)
        self.blocks = BlockManager(num_blocks, block_size)
        self.runner = ModelRunner(self.model, block_size, CPU, self.kv_caches)
        self._ids = itertools.count()

    def sequence(self, prompt: list[int]) -> Sequence:
        return Sequence(f"seq-{next(self._ids)}", list(prompt), SamplingParams(max_tokens=32), max_total_tokens=64)

    def step(self, *work: tuple[Sequence, int]) -> torch.Tensor:
        """One execute() over (sequence, tokens to compute) pairs. Returns the logits rows of the
        sequences whose chunk reaches their last token, in batch order."""
        batch = []
        for seq, n in work:
            self.blocks.allocate(seq, seq.num_computed_tokens + n)
            batch.append(ScheduledSequence(seq, n))
        logits = self.runner.execute(batch)
        for item in batch:
            item.seq.num_computed_tokens += item.num_tokens
        return logits

    def prefill(self, seq: Sequence, chunks: tuple[int, ...]) -> torch.Tensor:
        """Prefill `seq` in the given chunk sizes; only the last chunk may return logits."""
        assert sum(chunks) == seq.num_tokens
        for n in chunks[:-1]:
            assert self.step((seq, n)).shape[0] == 0, "a chunk short of the last token must not sample"
        return self.step((seq, chunks[-1]))[0]

    def decode(self, seq: Sequence, token: int) -> torch.Tensor:
        """Append `token` as if sampled and compute it; returns the logits that follow it."""
        seq.output_token_ids.append(token)
        return self.step((seq, 1))[0]


@pytest.fixture
def paged_decoder():
    return PagedDecoder


def _eager_and_graphed_tokens(model: Path, prompts: list[list[int]], params: list[SamplingParams],
                              **config) -> dict[bool, list[list[int]]]:
    """Generated tokens of a float32 CUDA engine without CUDA graphs (False) and with them (True), one
    engine at a time; config: the rest of both engines' EngineConfig."""
    results = {}
    for graphs in (False, True):
        engine = Engine(EngineConfig(model=str(model), device="cuda", dtype="float32", cuda_graphs=graphs, **config))
        results[graphs] = [o.token_ids for o in engine.generate(prompts, params)]
        del engine
    return results


@pytest.fixture
def eager_and_graphed_tokens():
    return _eager_and_graphed_tokens
