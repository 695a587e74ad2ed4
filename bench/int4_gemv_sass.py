"""The int4 GEMV (engine/layers/quantization/triton/w4a16_gemv.py) compiled for an H100 (sm_90) without a GPU:
registers a thread, and the instructions of the main loop by kind, for one launch: a kernel change's cost
in registers and instructions, read before any device time is spent on it.
Triton compiles for a target it is told of (ASTSource + GPUTarget) and ships ptxas and cuobjdump; the
arguments are specialized as a launch on a 7B qkv layer would specialize them (16-byte aligned pointers
and multiples of 16 marked divisible, ints equal to 1 made constants), so the code is the launch's own.

    python bench/int4_gemv_sass.py [--block-n 64 --block-w 16 --split-k 4 --num-stages 1 --num-warps 4]

Use the Triton of the GPU machine (3.6.0 there) for numbers that hold there: another version compiles
differently. Prints registers, spills, shared memory and the main loop's loads, FMAs and length in
instructions.
"""
from __future__ import annotations

import argparse
import collections
import pathlib
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from engine.layers.quantization.triton.w4a16_gemv import _w4a16_gemv_kernel

POINTERS = {"x_ptr": "*bf16", "q_ptr": "*i32", "s_ptr": "*bf16", "z_ptr": "*u8", "y_ptr": "*bf16",
            "part_ptr": "*fp32", "count_ptr": "*i32"}
INTS = ["N", "stride_xm", "stride_qn", "stride_sn", "stride_zn", "stride_ym"]  # multiples of 16 on 7B shapes
ONES = ["M", "stride_sg", "stride_zg"]  # batch 1, and the groups' unit strides


def compile_launch(block_n: int, block_w: int, split: int, stages: int, warps: int,
                   k: int = 4096, group_size: int = 128) -> bytes:
    fn = _w4a16_gemv_kernel
    constants = {"K": k, "GROUP_SIZE": group_size, "BLOCK_M": 1, "BLOCK_N": block_n, "BLOCK_W": block_w,
                 "SPLIT_K": split, "GATED": False, "USE_PDL": True, "PAIRED": True, "NUM_STAGES": stages,
                 **{name: 1 for name in ONES}}
    signature = {name: POINTERS.get(name, "i32") for name in fn.arg_names}
    signature.update({name: "constexpr" for name in constants})
    attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in [*POINTERS, *INTS]}
    src = ASTSource(fn=fn, signature=signature, constexprs=constants, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps}).asm["cubin"]


def tool(name: str) -> str:
    return str(pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def describe(cubin: bytes) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([tool("cuobjdump"), "-res-usage", f.name], capture_output=True, text=True).stdout
        sass = subprocess.run([tool("cuobjdump"), "-sass", f.name], capture_output=True, text=True).stdout
    resources = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", usage)
    code = re.findall(r"/\*([0-9a-f]{4,})\*/\s+(@!?P\d\s+)?([A-Z][A-Z0-9_.]*)([^;]*);", sass)
    # The main loop: the longest backward branch's span (the K loop; the split-K sum's is shorter).
    loops = [(int(addr, 16), int(m.group(1), 16)) for addr, _, op, rest in code if op == "BRA"
             for m in [re.match(r"\s*0x([0-9a-f]+)", rest)] if m and int(m.group(1), 16) < int(addr, 16)]
    start, end = max(loops, key=lambda span: span[0] - span[1])[::-1] if loops else (0, 0)
    body = [op for addr, _, op, _ in code if start <= int(addr, 16) <= end]
    kinds = collections.Counter("load" if op.startswith(("LDG", "LDS")) else "fma" if "FMA" in op else "other"
                                for op in body)
    loads = collections.Counter(op for op in body if op.startswith(("LDG", "LDS")))
    return (f"registers {resources.group(1)}, spills (local bytes) {resources.group(4)}, shared {resources.group(3)} B; "
            f"main loop {len(body)} instructions: {kinds['load']} loads ({dict(loads)}), {kinds['fma']} FMAs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--block-n", type=int, default=64)
    parser.add_argument("--block-w", type=int, default=16)
    parser.add_argument("--split-k", type=int, default=4)
    parser.add_argument("--num-stages", type=int, default=1)
    parser.add_argument("--num-warps", type=int, default=4)
    args = parser.parse_args()
    print(f"Triton {triton.__version__}, sm_90; BLOCK_N {args.block_n}, BLOCK_W {args.block_w}, SPLIT_K {args.split_k}, "
          f"NUM_STAGES {args.num_stages}, {args.num_warps} warps (K 4096, group 128, batch 1, bf16 pairs)")
    print(describe(compile_launch(args.block_n, args.block_w, args.split_k, args.num_stages, args.num_warps)))


if __name__ == "__main__":
    main()
