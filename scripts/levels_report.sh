#!/usr/bin/env bash
# One validation report over every level on the tiny model: F16, Q8_0, Q4_K_M with and without the
# document imatrix, GPTQ 8/4-bit and the int8 vision encoder. Reuses demo-out/ when `make demo` ran.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${EXAONE_EDGE_BIN:-.venv/bin/exaone-edge}
WORK=${DEMO_DIR:-demo-out}
step() { printf '\n$ %s\n' "$*" >&2; "$@"; }

[ -d "$WORK/tiny" ] || step $BIN tiny-model "$WORK/tiny"
[ -d "$WORK/docs" ] || step $BIN docs make "$WORK/docs" --n 12 --lang ko,en --seed 0
[ -d "$WORK/vision" ] || step $BIN export "$WORK/tiny" -o "$WORK/vision"
step $BIN export "$WORK/tiny" -o "$WORK/vision-int8" --precision int8 --calibration "$WORK/docs" --overwrite
step $BIN quantize "$WORK/tiny" --recipe F16 --vision "$WORK/vision" -o "$WORK/bundle-f16" --overwrite --keep-work
step $BIN quantize "$WORK/tiny" --bits 8 --vision "$WORK/vision" -o "$WORK/bundle-q8" --overwrite --keep-work
[ -d "$WORK/bundle-q4" ] || step $BIN quantize "$WORK/tiny" --bits 4 --calibration "$WORK/docs" --vision "$WORK/vision" -o "$WORK/bundle-q4" --keep-work
step $BIN quantize "$WORK/tiny" --bits 4 --no-imatrix --vision "$WORK/vision" -o "$WORK/bundle-q4-plain" --overwrite --keep-work
step $BIN quantize "$WORK/tiny" --format gptq --bits 8 --calibration "$WORK/docs" -o "$WORK/gptq-8" --overwrite
step $BIN quantize "$WORK/tiny" --format gptq --bits 4 --calibration "$WORK/docs" -o "$WORK/gptq-4" --overwrite
step $BIN validate "$WORK/bundle-f16" "$WORK/bundle-q8" "$WORK/bundle-q4" "$WORK/bundle-q4-plain" \
    "$WORK/gptq-8" "$WORK/gptq-4" "$WORK/vision-int8" \
    --reference "$WORK/tiny" --eval "$WORK/docs" --max-questions 6 -o "$WORK/levels-report"
printf '\nreport: %s\n' "$WORK/levels-report/report.html" >&2
