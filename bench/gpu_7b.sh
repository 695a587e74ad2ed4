#!/usr/bin/env bash
# Issue 5's GPU benchmark: random-weight 7B/8B checkpoints, our engine next to HF transformers in the same
# run. From the repository root on a CUDA machine:
#   bench/gpu_7b.sh tests       GPU correctness tests (Triton kernels, CUDA graphs, SmolLM2 on CUDA vs CPU and HF)
#   bench/gpu_7b.sh latency     batch 1, 32->50 and 128->50, and the time to first token at 128 and 2048 prompt
#                               tokens: bf16 MHA (Baichuan2-7B shape), ours vs HF
#   bench/gpu_7b.sh throughput  fixed lengths 128/128 over batch sizes, ours vs HF
#   bench/gpu_7b.sh long        fixed lengths 128/2048 and 2048/128 at 96 concurrent requests (bf16 KV cache)
#   bench/gpu_7b.sh mixed       256 requests, output lengths 16..512 (uniform, then geometric): static vs
#                               in-flight batching
#   bench/gpu_7b.sh quant       int8_wo, int4_wo (the AWQ/GPTQ format) and fp8 engines: batch-1 latency and
#                               memory vs HF bf16; fp8 throughput
#   bench/gpu_7b.sh fp8_throughput  the fp8 engine with an fp8 KV cache: 128/128, 128/2048, 2048/128
#   bench/gpu_7b.sh fp8_long    the same, the long cases (128/2048, 2048/128) alone
#   bench/gpu_7b.sh long_fp8kv  bf16 weights with an fp8 KV cache: 128/2048 and 2048/128
#   bench/gpu_7b.sh gqa         the Llama-3-8B shape (GQA 32/8): batch-1 latency vs HF, 128/128 throughput
#   bench/gpu_7b.sh kernels     decode kernel sweeps: the int4/int8 and dense bf16 GEMVs, split-KV attention,
#                               the unsplit decode attention kernels' launches on the throughput shapes (--grid),
#                               one attention layer of engine steps with the fresh prompts apart or not
#   bench/gpu_7b.sh profile     where the batch-1 decode step's GPU time goes, per kernel: bf16, int8_wo, int4_wo,
#                               with programmatic dependent launch on and off; and the steady steps' timeline
#                               (the graph, what runs outside it, idle time: bench/step_timeline.py)
#   bench/gpu_7b.sh fp8_profile where the fp8 throughput runs' GPU time goes (128/128 and 2048/128, kernel
#                               families per prefill / decode step), and the fp8 GEMM's parts at those sizes
#   bench/gpu_7b.sh long_profile where the bf16 (bf16 KV) 2048/128 run's GPU time goes, as fp8_profile does
#   bench/gpu_7b.sh long_budgets the bf16 2048/128 run at step budgets of 2,048-16,384 tokens
#   bench/gpu_7b.sh all         every stage above, in that order
# Writes [BENCHMARK] lines, tables, JSON and PNG plots under $OUT (default bench-results/). Each stage
# builds the random checkpoint it needs first (~1 min), unless it is already there.
set -euo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONPATH="$(pwd):${PYTHONPATH:-}"
OUT=${OUT:-bench-results}
CKPTS=${CKPTS:-/tmp/inferline-bench}
mkdir -p "$OUT" "$CKPTS"
MHA=$CKPTS/baichuan2-7b-random
GQA=$CKPTS/llama3-8b-random
STORE=$CKPTS/engines
inferline() { python3 -m inferline.cli --log-level warning "$@"; }

checkpoint() {  # checkpoint SHAPE DIR
  [ -f "$2/model.safetensors" ] || python3 bench/random_checkpoint.py --shape "$1" --out "$2" \
    ${TOKENIZER_DIR:+--tokenizer "$TOKENIZER_DIR"} >/dev/null
}

bench() {  # bench NAME ARGS...: one `inferline bench` run, its lines on stdout and in NAME.txt
  local name=$1; shift
  inferline bench --device cuda --dtype bfloat16 --json "$OUT/$name.json" "$@" 2>"$OUT/$name.err" | tee "$OUT/$name.txt"
}

machine() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, transformers, triton; print('torch', torch.__version__, '| transformers', transformers.__version__, '| triton', triton.__version__)"
}

stage_tests() {
  python3 -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tee "$OUT/pytest_gpu.txt"
}

stage_latency() {
  checkpoint baichuan2-7b "$MHA"
  bench latency_bf16 --model "$MHA" --compare-hf --batch-size 1 --input-output-len "32,50;128,50;2048,8" --runs 5
}

stage_throughput() {
  checkpoint baichuan2-7b "$MHA"
  bench throughput_128_128 --model "$MHA" --compare-hf --batch-size 1,8,32,64,128,256 --input-output-len "128,128" \
    --runs 3 --plot-dir "$OUT"
  mv "$OUT/throughput_vs_batch.png" "$OUT/throughput_vs_batch_bf16.png"
  # Ours alone past HF's grid: on an H100 80GB 384 requests saturate the bf16 pool (12,300-12,400 tok/s
  # against 11,700-11,750 at 256, session 17; 448: 12,336; 512 leaves a tail waiting for blocks: 11,570).
  bench throughput_128_128_saturated --model "$MHA" --batch-size 256,384 --input-output-len "128,128" --runs 3
}

stage_long() {
  checkpoint baichuan2-7b "$MHA"
  # Long cases over a bf16 KV cache, whose pool holds ~50 whole 2,176-token sequences on an H100 80GB.
  # 128/2048: 96 requests under max_utilization (the newest are preempted and recomputed when blocks run
  # out) keep more sequences decoding than waves of whole ones do (session 17: 3,244 / 3,272 tok/s). 3 runs,
  # no warm-up: the median is a run that compiled nothing.
  bench throughput_long_128_2048 --model "$MHA" --batch-size 96 --input-output-len "128,2048" \
    --scheduler-policy max_utilization --warmup 0 --runs 3
  # 2048/128: whole sequences (guaranteed_no_evict) lose no prefill to preemption: 1,186 tok/s against
  # max_utilization's 1,170 in the same call (session 19, both with a warm-up run).
  bench throughput_long_2048_128 --model "$MHA" --batch-size 96 --input-output-len "2048,128" \
    --scheduler-policy guaranteed_no_evict --warmup 1 --runs 2
}

stage_mixed() {
  checkpoint baichuan2-7b "$MHA"
  # Uniform draws (every length equally likely), then a long tail (geometric: a fixed chance of ending per
  # token, as a sampled EOS gives), the same range.
  local dist
  for dist in uniform geometric; do
    bench "mixed_$dist" --model "$MHA" --workload mixed --requests 256 --input-len 128 --output-len-range 16,512 \
      --output-len-dist "$dist" --max-batch-size 64 --runs 3 --plot-dir "$OUT"
    mv "$OUT/latency_static_vs_inflight.png" "$OUT/latency_static_vs_inflight_$dist.png"
    # What the draws allow at most, counting steps (CPU): the measured ratio is read against it.
    python3 bench/mixed_bound.py --requests 256 --output-len-range 16,512 --dist "$dist" --max-batch-size 64 \
      --seeds 1 | tee "$OUT/mixed_bound_$dist.txt"
  done
}

quant_engine() {  # quant_engine SCHEME [NAME BUILD_OPTION...]: builds $STORE/b7-NAME (NAME: SCHEME) unless it is there
  local scheme=$1 name=${2:-$1}
  shift $(( $# < 2 ? $# : 2 ))
  checkpoint baichuan2-7b "$MHA"
  # The lm_head too: at batch 1 its 1 GB of bf16 is read every token; and the embedding as int8 rows
  # (its 1 GB is only looked up, but counts in the footprint). Tiny calibration and scoring: the
  # weights are random, only the engine's speed and size matter here.
  [ -d "$STORE/b7-$name" ] || inferline build --source "$MHA" --name "b7-$name" --quantization "$scheme" "$@" \
    --quantize-lm-head --quantize-embedding --dtype bfloat16 --device cuda --store-dir "$STORE" \
    --calibration-samples 8 --eval-windows 2 --json > "$OUT/build_$name.json" 2> "$OUT/build_$name.err"
}

stage_quant() {
  local engines=""
  for scheme in ${QUANT_SCHEMES:-int8_wo int4_wo fp8}; do
    quant_engine "$scheme"
    engines="$engines,$STORE/b7-$scheme"
  done
  bench latency_quant --model "${engines#,}" --hf-model "$MHA" --compare-hf --batch-size 1 \
    --input-output-len "32,50;128,50" --runs 5
  case " ${QUANT_SCHEMES:-fp8} " in *" fp8 "*) stage_fp8_throughput ;; esac
}

# fp8 as TensorRT-LLM's fp8 numbers run: static per-tensor activation scales (calibrated by the build) and
# per-tensor weights, an fp8 KV cache.
fp8_static_engine() { quant_engine fp8 fp8-static --fp8-activations tensor; }

stage_fp8_throughput() {
  fp8_static_engine
  bench throughput_fp8 --model "$STORE/b7-fp8-static" --kv-cache-dtype fp8 --batch-size 256,512 \
    --input-output-len "128,128" --runs 3
  stage_fp8_long
}

stage_fp8_long() {
  fp8_static_engine
  # As many long requests as the fp8 pool holds whole for 128/2048: 112 on an H100 80GB (an H200: ~205, set
  # FP8KV_LONG_REQUESTS). More than that runs in two waves, the second one small (session 16's 192 on an
  # H100: 5,978 tok/s at 128/2048, where 112 made 6,509 with the same code in session 17).
  # 3 runs, no warm-up: the median is a run that compiled nothing.
  bench throughput_fp8_long --model "$STORE/b7-fp8-static" --kv-cache-dtype fp8 --batch-size "${FP8KV_LONG_REQUESTS:-112}" \
    --input-output-len "128,2048;2048,128" --scheduler-policy guaranteed_no_evict --warmup 0 --runs 3
}

stage_long_fp8kv() {  # bf16 weights, fp8 KV cache: twice the sequences fit the pool
  checkpoint baichuan2-7b "$MHA"
  bench throughput_long_fp8kv --model "$MHA" --kv-cache-dtype fp8 --batch-size "${FP8KV_LONG_REQUESTS:-112}" \
    --input-output-len "128,2048;2048,128" --scheduler-policy guaranteed_no_evict --warmup 0 --runs 3
}

stage_gqa() {
  checkpoint llama3-8b "$GQA"
  bench latency_gqa --model "$GQA" --compare-hf --batch-size 1 --input-output-len "32,50;128,50" --runs 5
  bench throughput_gqa --model "$GQA" --batch-size 256 --input-output-len "128,128" --runs 3
}

stage_kernels() {
  python3 bench/quant_gemm_sweep.py --gemv --m 1 ${GEMV_SWEEP_ARGS:-} > "$OUT/gemv_sweep_m1.txt" 2>&1
  python3 bench/attention_sweep.py --split > "$OUT/attention_split_sweep.txt" 2>&1
  python3 bench/attention_sweep.py --grid > "$OUT/attention_grid.txt" 2>&1
  python3 bench/quant_gemm_sweep.py --dense --m 1 > "$OUT/dense_gemv_sweep_m1.txt" 2>&1
  python3 bench/attention_backend_step.py > "$OUT/attention_backend_step.txt" 2>&1
}

stage_profile() {  # PROFILE_SCHEMES (default "bf16 int8_wo int4_wo"), PROFILE_PDL (default "on off")
  local scheme pdl model
  checkpoint baichuan2-7b "$MHA"
  for scheme in ${PROFILE_SCHEMES:-bf16 int8_wo int4_wo}; do
    model=$MHA
    [ "$scheme" = bf16 ] || { quant_engine "$scheme"; model=$STORE/b7-$scheme; }
    for pdl in ${PROFILE_PDL:-on off}; do
      python3 bench/profile_step.py --model "$model" --dtype bfloat16 --batch-size 1 --input-len 128 --pdl "$pdl" \
        > "$OUT/profile_${scheme}_pdl_$pdl.txt"
      grep "decode" "$OUT/profile_${scheme}_pdl_$pdl.txt" | head -2
    done
    python3 bench/step_timeline.py --model "$model" --input-len 128 > "$OUT/timeline_${scheme}.txt" 2>&1
    grep "_us:" "$OUT/timeline_${scheme}.txt"
  done
}

stage_long_profile() {
  checkpoint baichuan2-7b "$MHA"
  # 96 whole sequences, as `long` runs them: two waves of ~48 on an H100 80GB.
  python3 bench/throughput_profile.py --model "$MHA" --requests 96 --input-len 2048 --output-len 128 \
    --scheduler-policy guaranteed_no_evict > "$OUT/throughput_profile_bf16_2048_128.txt" 2>&1
}

stage_long_budgets() {
  checkpoint baichuan2-7b "$MHA"
  local budget
  for budget in 8192 4096 16384 2048; do
    python3 bench/throughput_profile.py --model "$MHA" --requests 96 --input-len 2048 --output-len 128 \
      --scheduler-policy guaranteed_no_evict --max-num-tokens "$budget" --runs 3 --no-profile 2>/dev/null \
      | tee -a "$OUT/long_bf16_step_budgets.txt"
  done
}

stage_fp8_profile() {
  fp8_static_engine
  python3 bench/fp8_gemm_sweep.py --m 256,512,1024,8192 > "$OUT/fp8_gemm_sweep.txt" 2>&1
  python3 bench/throughput_profile.py --model "$STORE/b7-fp8-static" --kv-cache-dtype fp8 --requests 512 \
    --input-len 128 --output-len 128 > "$OUT/throughput_profile_fp8_128_128.txt" 2>&1
  python3 bench/throughput_profile.py --model "$STORE/b7-fp8-static" --kv-cache-dtype fp8 \
    --requests "${FP8KV_LONG_REQUESTS:-112}" --input-len 2048 --output-len 128 --scheduler-policy guaranteed_no_evict \
    > "$OUT/throughput_profile_fp8_2048_128.txt" 2>&1
}

machine | tee "$OUT/machine.txt"
case "${1:?stage: tests, latency, throughput, long, mixed, quant, gqa or all}" in
  all) for s in tests latency throughput long long_fp8kv mixed quant gqa; do "stage_$s"; done ;;
  tests|latency|throughput|long|long_fp8kv|long_profile|long_budgets|mixed|quant|fp8_throughput|fp8_long|fp8_profile|gqa|kernels|profile)
    "stage_$1" ;;
  *) echo "unknown stage $1" >&2; exit 2 ;;
esac
