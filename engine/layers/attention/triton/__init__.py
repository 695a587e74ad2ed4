"""Triton kernels of the CUDA attention backend: paged attention over the block-table KV cache
(paged_attention) and the scatter of this step's K/V into it (kv_store)."""
