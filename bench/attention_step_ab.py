"""Time paged_attention's default launches on whole-prompt prefill steps and mixed steps (decodes first, then
prompts) over a bf16 and an fp8 cache, as one layer of such an engine step runs them. Run it from the root of
each tree to compare two (session 17 did, the other tree unpacked with `git archive`):

    python bench/attention_step_ab.py      # CUDA only

A tree whose paged_attention takes decode_seqs gets the step's leading decodes counted, as the engine does.
"""
from __future__ import annotations

import inspect

import torch
import triton

from attention_sweep import make_step  # bench/, this script's folder
from engine.layers.attention.triton import paged_attention as pa

# (query tokens, context) per sequence: one 8,192-token step of the 2048/128 and 128/128 runs, alone and with
# the decodes that share such a step under in-flight batching.
STEPS = {
    "prefill 4 x 2048": [(2048, 2048)] * 4,
    "prefill 64 x 128": [(128, 128)] * 64,
    "mixed 56 decodes x 2100 + 4 x 2048": [(1, 2100)] * 56 + [(2048, 2048)] * 4,
    "mixed 256 decodes x 160 + 32 x 128": [(1, 160)] * 256 + [(128, 128)] * 32,
}


def main() -> None:
    takes_decode_seqs = "decode_seqs" in inspect.signature(pa.paged_attention).parameters
    print(torch.cuda.get_device_name(), "decode_seqs" if takes_decode_seqs else "no decode_seqs")
    for name, seqs in STEPS.items():
        for dtype in (torch.bfloat16, torch.float8_e4m3fn):
            args = make_step(seqs, 32, 32, cache_dtype=dtype, head_major=True)
            options = dict(k_scale=0.5, v_scale=0.5) if dtype == torch.float8_e4m3fn else {}
            if takes_decode_seqs:
                options["decode_seqs"] = next((i for i, (n, _) in enumerate(seqs) if n != 1), len(seqs))
            ms = triton.testing.do_bench(lambda: pa.paged_attention(*args, **options), warmup=20, rep=200,
                                         return_mode="median")
            print(f"{name:40s} {str(dtype):22s} {1e3 * ms:8.1f} us")


if __name__ == "__main__":
    main()
