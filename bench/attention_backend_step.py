"""Time one layer of the Triton attention backend (RoPE, the KV store and attention, as the model calls it)
on engine-like steps, with the step's fresh prompts attended apart over their own K/V (prompt_attention.py;
AttentionMetadata.fresh, as the engine builds it) and without (every sequence through the paged kernels):

    python bench/attention_backend_step.py      # CUDA only; Baichuan2-7B's attention (32 heads of 128)
"""
from __future__ import annotations

import numpy as np
import torch
import triton

from attention_sweep import make_pool  # bench/, this script's folder
from engine.layers.attention import AttentionMetadata, TritonPagedAttention
from engine.layers.rotary import RotaryEmbedding
from engine.step_inputs import fresh_prompts

HEADS, KV_HEADS, HEAD_DIM, BLOCK_SIZE = 32, 32, 128, 16
# (new tokens, context after the step) per sequence, in the scheduler's order: decodes, a prompt's later
# chunk, new prompts. One 8,192-token step of the 2048/128 and 128/128 runs.
STEPS = {
    "prefill 4 x 2048": [(2048, 2048)] * 4,
    "prefill 64 x 128": [(128, 128)] * 64,
    "56 decodes x 2100 + 4 x 2048": [(1, 2100)] * 56 + [(2048, 2048)] * 4,
    "56 decodes + a 1000-token chunk + 3 x 2048 + a 1048 first chunk":
        [(1, 2100)] * 56 + [(1000, 2048)] + [(2048, 2048)] * 3 + [(1048, 1048)],
    "256 decodes x 160 + 32 x 128": [(1, 160)] * 256 + [(128, 128)] * 32,
}


def make_step(seqs: list[tuple[int, int]], cache_dtype: torch.dtype):
    """The backend's operands for one step: fused qkv views, a head-major pool, metadata with and without
    the fresh prompts (found as the engine finds them), positions."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    pool, tables = make_pool(seqs, KV_HEADS, HEAD_DIM, cache_dtype, BLOCK_SIZE, True, gen)
    host_tables = tables.tolist()
    slots, positions = [], []
    for row, (n, ctx) in zip(host_tables, seqs):
        positions += range(ctx - n, ctx)
        slots += [row[p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE for p in range(ctx - n, ctx)]
    lens = [n for n, _ in seqs]
    query_start = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    leading = next((i for i, n in enumerate(lens) if n != 1), len(lens))
    fresh = fresh_prompts(lens, [c for _, c in seqs], query_start, leading)

    def meta(with_fresh: bool) -> AttentionMetadata:
        return AttentionMetadata(
            slot_mapping=torch.tensor(slots, device="cuda"), block_tables=tables,
            context_lens=torch.tensor([c for _, c in seqs], dtype=torch.int32, device="cuda"),
            query_start=torch.from_numpy(query_start).cuda(), max_query_len=max(lens),
            max_context_len=max(c for _, c in seqs), leading_decodes=leading, fresh=fresh if with_fresh else None)

    tokens = sum(lens)
    qkv = torch.randn(tokens, (HEADS + 2 * KV_HEADS) * HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=gen)
    q = qkv[:, :HEADS * HEAD_DIM].view(tokens, HEADS, HEAD_DIM)
    k = qkv[:, HEADS * HEAD_DIM:(HEADS + KV_HEADS) * HEAD_DIM].view(tokens, KV_HEADS, HEAD_DIM)
    v = qkv[:, (HEADS + KV_HEADS) * HEAD_DIM:].view(tokens, KV_HEADS, HEAD_DIM)
    return (q, k, v, pool), meta, torch.tensor(positions, device="cuda"), fresh


def main() -> None:
    print(torch.cuda.get_device_name(), "| torch", torch.__version__, "| triton", triton.__version__)
    backend = TritonPagedAttention(HEADS, KV_HEADS, HEAD_DIM, HEAD_DIM ** -0.5)
    rotary = RotaryEmbedding(HEAD_DIM, 8192, 10000.0, None).cuda()
    for name, seqs in STEPS.items():
        for cache_dtype in (torch.bfloat16, torch.float8_e4m3fn):
            (q, k, v, pool), meta, positions, fresh = make_step(seqs, cache_dtype)
            scales = (0.5, 0.5) if cache_dtype == torch.float8_e4m3fn else (1.0, 1.0)
            times = {}
            for label in ("paged", "fresh apart", "paged", "fresh apart"):  # alternating, the second of each kept
                m = meta(label == "fresh apart")
                times[label] = triton.testing.do_bench(
                    lambda: backend(q, k, v, pool, m, *scales, rotary=rotary, positions=positions),
                    warmup=20, rep=200, return_mode="median")
            print(f"{name:66s} {str(cache_dtype):22s} fresh {fresh.seqs:2d} | paged {1e3 * times['paged']:8.1f} us"
                  f" | fresh apart {1e3 * times['fresh apart']:8.1f} us")


if __name__ == "__main__":
    main()
