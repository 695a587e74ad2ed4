"""Imported first by every Triton kernel test module. Without CUDA the kernels run in Triton's
interpreter on small shapes, and bfloat16 runs on CUDA only (the interpreter's bfloat16 is unreliable)."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported: it reads it when a kernel is defined
pytest.importorskip("triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(torch.float16, id="float16"),
          pytest.param(torch.bfloat16, id="bfloat16", marks=pytest.mark.gpu)]
