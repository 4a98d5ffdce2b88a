#!/usr/bin/env bash
# The GPU check in one command, offline: installs the kit (.gpu-kit, built by benchmarks/gpu_kit.py) with
# `pip install --no-index` into a scratch site, then runs benchmarks/gpu_check.py from the repository root.
#   bash scripts/gpu_check.sh [--kit .gpu-kit] --out DIR [--work DIR] [--tokens N] ...
# Prints the kit's carried size, one PASS / FAIL / NOT CHECKED line per CUDA path, and exits 0 pass, 1 mismatch,
# 2 no GPU (the CPU half still runs: the dry run), 3 setup failure. PYTHON picks the interpreter (default python3:
# on the GPU box, the system one with torch; nothing is installed into it). A kit that carries llama.cpp's trimmed
# sources instead of a CUDA wheel is compiled here first, when there is a GPU (a wheel built earlier on this machine
# is reused). See docs/gpu-check.md.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SITE=${SITE:-/tmp/exaone-edge-site}
KIT=.gpu-kit
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  [ "${args[i]}" = "--kit" ] && KIT=${args[i + 1]:-$KIT}
done

extra=()
if ! ls "$KIT"/wheels/llama_cpp_python-*cu130*.whl >/dev/null 2>&1 && [ -f "$KIT/llama-src.tar.gz" ] \
    && nvidia-smi -L >/dev/null 2>&1; then
  started=$(date +%s)
  echo "gpu_check: the kit has no CUDA wheel: compiling llama.cpp from its trimmed sources with $(nproc) jobs" >&2
  built=$(OFFLINE=1 LLAMA_SDIST="$KIT/llama-src.tar.gz" JOBS=$(nproc) PYTHON="$PY" bash scripts/gpu_kit_wheel.sh) \
    || { echo "gpu_check: setup failed: llama.cpp did not compile (see /tmp/exaone-edge-cuda-build/build.log)" >&2; exit 3; }
  echo "gpu_check: llama.cpp compiled in $(( $(date +%s) - started )) s: $built" >&2
  extra=(--wheel "$built")
fi
started=$(date +%s)
"$PY" benchmarks/gpu_kit.py install --kit "$KIT" --site "$SITE" "${extra[@]}" \
  || { echo "gpu_check: setup failed: the kit did not install offline" >&2; exit 3; }
echo "gpu_check: kit installed in $(( $(date +%s) - started )) s" >&2
PYTHONPATH="$SITE/pure${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m exaone_edge.benchmarks.gpu_check --kit "$KIT" \
  --cuda-site "$SITE/cuda" "$@"
