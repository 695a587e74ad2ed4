"""Imported first by every Triton kernel test module. Without CUDA the kernels run in Triton's
interpreter (tests/conftest.py turns it on) on small shapes, and bfloat16 runs on CUDA only (the
interpreter's bfloat16 is unreliable)."""
import pytest
import torch

pytest.importorskip("triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(torch.float16, id="float16"),
          pytest.param(torch.bfloat16, id="bfloat16", marks=pytest.mark.gpu)]
