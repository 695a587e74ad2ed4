#!/usr/bin/env bash
# A/B of the batch-1 decode step's GPU time (bench/profile_step.py: a captured decode graph's replay, 128
# prompt tokens) between an older tree and this one, on the same machine, runs alternating:
#   git archive <ref> engine bench inferline | tar -x -C /tmp/base     # the code to compare against
#   BASE=/tmp/base bench/ab_step.sh int8_wo bf16                        # schemes: bf16, int8_wo, int4_wo, fp8
# REPS runs of each (default 2). Checkpoints and engines are gpu_7b.sh's ($CKPTS), built if missing;
# per-run output goes under $OUT. Session 9's before/after numbers came from the scratch script this was
# cleaned up from (same commands); session 11's A/Bs ran this file on an H100 (docs/benchmarks.md).
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
BASE=${BASE:?BASE: a folder holding the older tree (engine/, bench/, inferline/)}
OUT=${OUT:-bench-results}
CKPTS=${CKPTS:-/tmp/inferline-bench}
MHA=$CKPTS/baichuan2-7b-random
STORE=$CKPTS/engines
ROOT=$(pwd)
mkdir -p "$OUT" "$CKPTS"
[ -f "$MHA/model.safetensors" ] || PYTHONPATH="$ROOT:${PYTHONPATH:-}" python3 bench/random_checkpoint.py \
  --shape baichuan2-7b --out "$MHA" ${TOKENIZER_DIR:+--tokenizer "$TOKENIZER_DIR"} >/dev/null

replay() {  # replay TREE MODEL FILE: one profile_step run of TREE's code, its replay line
  local only=""  # trees older than session 9 print the profiler's tables too
  grep -q -- "--replay-only" "$1/bench/profile_step.py" && only=--replay-only
  (cd "$1" && PYTHONPATH="$1:${PYTHONPATH:-}" python3 bench/profile_step.py --model "$2" --dtype bfloat16 \
    --batch-size 1 --input-len 128 $only > "$3" 2>&1)
  grep "replay alone" "$3" || { echo "failed: see $3"; tail -3 "$3"; }
}

for scheme in "$@"; do
  model=$MHA
  if [ "$scheme" != bf16 ]; then
    model=$STORE/b7-$scheme
    [ -d "$model" ] || PYTHONPATH="$ROOT:${PYTHONPATH:-}" python3 -m inferline.cli --log-level warning build \
      --source "$MHA" --name "b7-$scheme" --quantization "$scheme" --quantize-lm-head --quantize-embedding \
      --dtype bfloat16 --device cuda --store-dir "$STORE" --calibration-samples 8 --eval-windows 2 --json \
      > "$OUT/build_$scheme.json" 2> "$OUT/build_$scheme.err"
  fi
  for rep in $(seq "${REPS:-2}"); do
    echo "$scheme base: $(replay "$BASE" "$model" "$OUT/ab_${scheme}_base_$rep.txt")"
    echo "$scheme new:  $(replay "$ROOT" "$model" "$OUT/ab_${scheme}_new_$rep.txt")"
  done
done
