#!/usr/bin/env bash
# Runs every ghz config in bench/ghz/ against a gateway that is already up, then prints requests/s,
# p50/p99 and errors per run (bench/ghz/summarize.py reads ghz's `-O json` reports).
#
# It starts nothing: bring a stack up first, e.g. for the control plane alone
#   inferline up --synthetic-engine-step-ms 2        # BENCHMARKS ONLY: workers run no model
#
# ghz (https://ghz.sh, a Go binary, >= 0.70 for the config keys used here) is not installable on the
# project's dev machines (no registry we use ships it), so these configs are not run here; `inferline
# load` is the Python stand-in and writes the same JSON shape. The configs carry no proto files: ghz
# then describes the service by server reflection, which the gateway answers.
#
# Environment: TARGET (default localhost:50051, the gateway's default port), MODEL (default
# smollm2-135m: the engine name in the requests), OUT (default $TMPDIR/inferline-ghz), GHZ (default ghz),
# CONFIGS (default: every *.json here), API_KEY (sent as `authorization: Bearer`, when the gateway has keys).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TARGET="${TARGET:-localhost:50051}"
MODEL="${MODEL:-smollm2-135m}"
OUT="${OUT:-${TMPDIR:-/tmp}/inferline-ghz}"
GHZ="${GHZ:-ghz}"
PYTHON="${PYTHON:-python3}"
CONFIGS="${CONFIGS:-$(ls "$HERE"/*.json)}"

command -v "$GHZ" >/dev/null || { echo "run.sh: $GHZ not found (install ghz: https://ghz.sh)" >&2; exit 127; }
mkdir -p "$OUT"

reports=()
for config in $CONFIGS; do
  name="$(basename "$config" .json)"
  resolved="$OUT/$name.config.json"
  report="$OUT/$name.json"
  # The whole run in one config (target, model, output included): older ghz releases ignore flags
  # given next to --config.
  "$PYTHON" - "$config" "$resolved" "$TARGET" "$MODEL" "$report" "${API_KEY:-}" <<'PY'
import json, sys
src, dst, target, model, report, api_key = sys.argv[1:]
cfg = json.load(open(src))
cfg.update(host=target, format="json", output=report)
cfg["data"]["model"] = model
if api_key:
    cfg["metadata"] = {"authorization": f"Bearer {api_key}"}
json.dump(cfg, open(dst, "w"), indent=2)
PY
  echo "== $name -> $TARGET" >&2
  "$GHZ" --config "$resolved"
  reports+=("$report")
done

"$PYTHON" "$HERE/summarize.py" "${reports[@]}"
