#!/usr/bin/env bash
# Our GPTQ on vLLM, checked on vLLM's CPU build (issue 25; docs/scale-out.md). Builds the vLLM venv (scripts/vllm_env.sh:
# cached wheels, offline once cached), the tiny model, its GPTQ-4 checkpoint and a Q4_K_M bundle, then
#   1. benchmarks/vllm_check.py: vLLM's greedy tokens over HTTP against transformers, text and image (fp32 source;
#      vLLM 0.32.0's default normalization; GPTQ-4 in bf16; GPTQ-4 with MTP drafting, whose tokens must not change);
#   2. exaone-edge validate BUNDLE --endpoint <vLLM serving the GPTQ>: both in one report (validate's built-in
#      questions, seed 1; the bundle was calibrated on the seed-0 set).
#   bash scripts/vllm_check.sh      # OUT=/tmp/exaone-edge-vllm-check; about 25 min on 2 cores once the venv exists
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/exaone-edge-vllm-check}
BIN=.venv/bin/exaone-edge
VLLM_PYTHON=$(bash scripts/vllm_env.sh)
mkdir -p "$OUT"
step() { printf '\n$ %s\n' "$*" >&2; "$@"; }

[ -f "$OUT/tiny/config.json" ] || step $BIN tiny-model "$OUT/tiny"
[ -f "$OUT/gptq4/manifest.json" ] || step nice -n 5 $BIN quantize "$OUT/tiny" --format gptq --bits 4 -o "$OUT/gptq4"
[ -f "$OUT/docs/manifest.json" ] || step $BIN docs make "$OUT/docs" --n 6 --lang ko,en --seed 0
[ -f "$OUT/vision/manifest.json" ] || step $BIN export "$OUT/tiny" -o "$OUT/vision" --precision fp32
[ -f "$OUT/bundle-q4/manifest.json" ] || step $BIN quantize "$OUT/tiny" --bits 4 --calibration "$OUT/docs" --vision "$OUT/vision" -o "$OUT/bundle-q4"
step .venv/bin/python -m exaone_edge.benchmarks.vllm_check --source "$OUT/tiny" --gptq "$OUT/gptq4" \
  --vllm-python "$VLLM_PYTHON" --out "$OUT/check" --bundle "$OUT/bundle-q4" "$@"
