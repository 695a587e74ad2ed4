"""Scratch, session 21: the inferline CLI with torch's BLAS backend picked first. From the repository root:
PYTHONPATH=. python3 docs/benchmarks/gpu_7b_h100/session21/lt.py cublaslt --log-level warning bench ...
"""
import runpy
import sys

import torch

torch.backends.cuda.preferred_blas_library(sys.argv.pop(1))
runpy.run_module("inferline.cli", run_name="__main__", alter_sys=True)
