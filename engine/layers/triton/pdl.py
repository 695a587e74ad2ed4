"""Programmatic dependent launch (PDL, Hopper and later) for the decode step's Triton kernels.

A batch-1 decode step is ~230 short kernels in a row (per layer: norm, qkv, attention with RoPE and the
KV store inside it, o_proj, norm, gate_up with SiLU-mul as its epilogue, down_proj). Launched plainly, a
kernel's programs are scheduled only once the previous kernel has drained, so every boundary costs the
next launch's latency and its programs' start-up. Launched with PDL, a kernel is scheduled as soon as
every program of the one before has passed `gdc_launch_dependents`, and its programs wait at `gdc_wait`
until that kernel has finished and its writes are visible: the start-up overlaps the previous kernel's
tail. On an H100 this took the 7B decode step from 5.52 to 5.34 ms (bf16) and 3.41 to 3.23 ms (int8_wo)
of GPU time (bench/gpu_7b.sh profile, docs/benchmarks.md). Asking L2 for the first weight tiles before
the wait was tried too and lost (5.39 / 3.46 ms), and so did loading them into registers there (int8_wo
2.80 against 2.70 ms, H200): the GEMVs wait with nothing in hand.

The contract, which every kernel launched through `pdl_launch` keeps: it calls `wait_for_previous`
before touching memory that an earlier kernel of the step writes, and before finishing,
so a chain of such kernels stays ordered exactly as a plain stream is (each waits for the one before,
which finished only after waiting in turn). Before the wait a kernel may read only what no kernel of
the step writes: weights, the batch's metadata that the host copied in before the step (positions,
slots, context lengths, block tables, query starts), and the cached K/V of earlier steps' positions.
Those loads then overlap the previous kernel instead of following it (split attention's metadata and
first key tile, RoPE's tables, norm weights, int8 scales: int8_wo 7B decode 3.211 -> 3.099 ms, H100).
Kernels launched without PDL (torch's, the prefill GEMMs) are ordered as usual.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from engine.layers.kernel_checks import interpreting

_enabled = True


def set_programmatic_launch(enabled: bool) -> None:
    """Turns PDL on (the default where the GPU has it) or off for launches from now on: for A/B
    benchmarks (bench/profile_step.py --pdl off). CUDA graphs captured earlier keep how they were
    launched."""
    global _enabled
    _enabled = bool(enabled)


@functools.cache
def _device_has_pdl(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9


def pdl_launch(device: torch.device) -> dict[str, bool]:
    """Keyword arguments for a launch of a kernel that takes USE_PDL: PDL on a Hopper-or-later GPU, else
    a plain launch (older GPUs, Triton's CPU interpreter)."""
    if _enabled and not interpreting() and _device_has_pdl(device):
        return {"USE_PDL": True, "launch_pdl": True}
    return {"USE_PDL": False}


@triton.jit
def wait_for_previous(USE_PDL: tl.constexpr):
    """Waits until the previous kernel in the stream has finished and its writes are visible, then lets
    the next kernel be scheduled (its programs wait in turn). A no-op without PDL."""
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def prefetch_l2(ptrs, mask):
    """Asks L2 for the line of each pointer where mask is set, holding no registers for the data (PTX
    prefetch.global.L2); for loads before the wait whose data would otherwise have to stay live. CUDA
    only: a caller under Triton's interpreter must not reach it (call it under `if USE_PDL:`)."""
    tl.inline_asm_elementwise("{ .reg .pred p; setp.ne.b32 p, $2, 0; @p prefetch.global.L2 [$1]; mov.u32 $0, 0; }",
                              "=r,l,r", [ptrs, mask.to(tl.int32)], dtype=tl.int32, is_pure=False, pack=1)
