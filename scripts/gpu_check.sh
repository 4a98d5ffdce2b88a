#!/usr/bin/env bash
# The GPU check in one command, offline: installs the kit (.gpu-kit, built by benchmarks/gpu_kit.py) with
# `pip install --no-index` into a scratch site, then runs benchmarks/gpu_check.py from the repository root.
#   bash scripts/gpu_check.sh [--kit .gpu-kit] --out DIR [--work DIR] [--tokens N] ...
# Prints the kit's carried size, one PASS / FAIL / NOT CHECKED line per CUDA path, and exits 0 pass, 1 mismatch,
# 2 no GPU (the CPU half still runs: the dry run), 3 setup failure. PYTHON picks the interpreter (default python3:
# on the GPU box, the system one with torch; nothing is installed into it). See docs/gpu-check.md.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SITE=${SITE:-/tmp/exaone-edge-site}
KIT=.gpu-kit
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  [ "${args[i]}" = "--kit" ] && KIT=${args[i + 1]:-$KIT}
done

started=$(date +%s)
"$PY" benchmarks/gpu_kit.py install --kit "$KIT" --site "$SITE" || { echo "gpu_check: setup failed: the kit did not install offline" >&2; exit 3; }
echo "gpu_check: kit installed in $(( $(date +%s) - started )) s" >&2
PYTHONPATH="$SITE/pure${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m exaone_edge.benchmarks.gpu_check --kit "$KIT" \
  --cuda-site "$SITE/cuda" "$@"
