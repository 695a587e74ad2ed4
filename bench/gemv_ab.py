"""A/B of a decode GEMV against an earlier version of its module, on the 7B shapes, under CUDA graphs.

    git show REF:engine/layers/quantization/triton/w4a16_gemv.py > /tmp/w4a16_gemv_old.py
    python bench/gemv_ab.py --old /tmp/w4a16_gemv_old.py [--m 1] [--sweep] [--old-plain-order]

The old file is loaded as a module of its own (its imports resolve against the current engine), so both
versions run on the same tensors in the same process. Each line is one wrapper call as the engine makes
it (its default launch), programmatic dependent launch off, so the times are the kernels' own; --sweep
also times the current version over its launch space (bench/quant_gemm_sweep.py's).
"""
from __future__ import annotations

import argparse
import importlib.util

import torch

from engine.layers.quantization import int4
from engine.layers.quantization.triton.w4a16_gemv import w4a16_gemv
from engine.layers.triton.pdl import set_programmatic_launch
from quant_gemm_sweep import GROUP, SHAPES, shape_header, sweep_gemv, time_call, w4_args


def load_module(path: str):
    spec = importlib.util.spec_from_file_location("gemv_old", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="an earlier w4a16_gemv.py (git show REF:path > file)")
    parser.add_argument("--m", type=int, default=1)
    parser.add_argument("--sweep", action="store_true", help="also sweep the current kernel's launches")
    parser.add_argument("--old-plain-order", action="store_true",
                        help="the old file reads the plain nibble order (before int4.KERNEL_ORDER, session 10)")
    opts = parser.parse_args()
    set_programmatic_launch(False)
    old = load_module(opts.old)
    for shape, (n, k) in SHAPES.items():
        x = shape_header(shape, n, k, opts.m)
        args, nbytes = w4_args(opts.m, n, k)
        q, s, z = args[1], args[2], args[3]  # random bytes: the current kernels' order
        q_old = int4.from_kernel_order(q, k) if opts.old_plain_order else q
        y_old, y_new = old.w4a16_gemv(x, q_old, s, z, GROUP), w4a16_gemv(x, q, s, z, GROUP)
        torch.cuda.synchronize()
        err = ((y_old.float() - y_new.float()).abs().max() / y_old.float().abs().max()).item()
        time_call("old default", lambda: old.w4a16_gemv(x, q_old, s, z, GROUP), nbytes)
        time_call(f"new default (max |new - old| / max |old| = {err:.1e})", lambda: w4a16_gemv(x, q, s, z, GROUP), nbytes)
        if opts.sweep:
            space = {"BLOCK_N": [32, 64, 128], "BLOCK_W": [16, 32, 64], "num_warps": [4, 8], "SPLIT_K": [None]}
            if n <= 8192:
                space.update(BLOCK_N=[16, 32, 64], num_warps=[4], SPLIT_K=[None, 2, 4, 8])
            sweep_gemv("new", lambda b: w4a16_gemv(x, q, s, z, GROUP, blocks=b), nbytes, space)


if __name__ == "__main__":
    main()
