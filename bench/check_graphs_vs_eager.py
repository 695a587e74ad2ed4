"""An engine's greedy tokens with CUDA graphs against the same engine run eagerly, at batch 1 and 4: a
quick end-to-end check of a kernel change on a model too large for the test suite (a random 7B engine).

    python bench/check_graphs_vs_eager.py /tmp/inferline-bench/engines/b7-int4_wo [--tokens 24]

Prints whether the tokens agree; exits 1 where they differ.
"""
from __future__ import annotations

import argparse
import sys

import torch

from engine import Engine, EngineConfig, SamplingParams

PROMPT_LENGTHS = (5, 33, 100, 130)


def greedy_tokens(model: str, cuda_graphs: bool, prompts: list[list[int]], params: SamplingParams):
    engine = Engine(EngineConfig(model=model, device="cuda", max_batch_size=len(prompts),
                                 max_seq_len=max(PROMPT_LENGTHS) + params.max_tokens + 8, cuda_graphs=cuda_graphs))
    single = [out.token_ids for out in engine.generate(prompts[:1], params)]
    batch = [out.token_ids for out in engine.generate(prompts, params)]
    del engine
    torch.cuda.empty_cache()
    return single, batch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--tokens", type=int, default=24)
    opts = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(100, 30000, (n,), generator=gen).tolist() for n in PROMPT_LENGTHS]
    params = SamplingParams(max_tokens=opts.tokens, min_tokens=opts.tokens, detokenize=False)
    single_g, batch_g = greedy_tokens(opts.model, True, prompts, params)
    single_e, batch_e = greedy_tokens(opts.model, False, prompts, params)
    print(f"batch 1: graphs == eager: {single_g == single_e} | batch {len(prompts)}: graphs == eager: {batch_g == batch_e}")
    return 0 if single_g == single_e and batch_g == batch_e else 1


if __name__ == "__main__":
    sys.exit(main())
