#!/usr/bin/env bash
# The main job, end to end on the built-in tiny model. Each stage is the command a user would type:
# tiny model → inspect → plan (and the released 33B's plan on an RTX 4090 box) → document set → vision export → GGUF bundle → validation report → a question,
# and the same page extracted as schema-valid JSON.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${EXAONE_EDGE_BIN:-.venv/bin/exaone-edge}
WORK=${DEMO_DIR:-demo-out}
mkdir -p "$WORK"

step() { printf '\n$ %s\n' "$*" >&2; "$@"; }

step $BIN tiny-model "$WORK/tiny" --overwrite
step $BIN inspect "$WORK/tiny"
step $BIN plan "$WORK/tiny" --gpu rtx4090 --context 4096
step $BIN plan exaone-4.5-33b --gpu rtx4090 --context 16384 --kv-type q8_0 --vision-precision int8w --image-max-tokens 1280 --stages
step $BIN docs make "$WORK/docs" --n 12 --lang ko,en --seed 0 --overwrite
step $BIN export "$WORK/tiny" -o "$WORK/vision" --precision fp32 --overwrite
step $BIN quantize "$WORK/tiny" --bits 4 --calibration "$WORK/docs" --vision "$WORK/vision" -o "$WORK/bundle-q4" --overwrite
step $BIN validate "$WORK/bundle-q4" --reference "$WORK/tiny" --eval "$WORK/docs" --max-questions 4 -o "$WORK/report" --overwrite
page=$(ls "$WORK"/docs/pages/*.png | head -1)
step $BIN run "$WORK/bundle-q4" --image "$page" --max-tokens 24 "What is the total amount on this invoice?"
# The same page as JSON that matches a schema (a grammar guarantees the shape; the tiny model's values are noise).
step $BIN run "$WORK/bundle-q4" --image "$page" --max-tokens 1024 --json-schema scripts/invoice.schema.json "Extract this invoice."
printf '\nreport: %s\n' "$WORK/report/report.html" >&2
