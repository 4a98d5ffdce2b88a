#!/usr/bin/env bash
# GPU check, one command, under 8 minutes on a CUDA box (most of it is compiling llama.cpp once):
#   1. makes the GPU runtimes: onnxruntime-gpu, and llama-cpp-python compiled with CUDA for this GPU's
#      architecture (from nvidia-smi), unless the installed ones already have CUDA;
#   2. runs the tiny bundle and the real-width bench bundle (Q4_K_M decoder, fp16 vision at the released widths)
#      with --device cpu and --device cuda and compares their outputs (--skip-bench: the tiny one only);
#   3. prints each page's encode time, GPU memory measured beside `plan`'s prediction, and decode tokens/s beside
#      the bandwidth bound.
# Without an NVIDIA GPU it stops at once (exit 2) and says so. PYTHON picks the interpreter (.venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check: no NVIDIA GPU here (nvidia-smi is missing or lists no device): nothing to check; the GPU path stays unverified on this machine" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader

has() { "$PY" -c "$1" >/dev/null 2>&1; }
if ! has "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())"; then
  echo "gpu_check: installing onnxruntime-gpu==1.31.1" >&2
  "$PY" -m pip uninstall -y -q onnxruntime || true
  "$PY" -m pip install -q onnxruntime-gpu==1.31.1
fi
if ! has "import llama_cpp, sys; sys.exit(not llama_cpp.llama_supports_gpu_offload())"; then
  if ! command -v nvcc >/dev/null 2>&1; then
    echo "gpu_check: llama-cpp-python has no CUDA backend and nvcc (the CUDA toolkit) is not on PATH to build one" >&2
    exit 2
  fi
  arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d '.[:space:]')
  echo "gpu_check: compiling llama-cpp-python 0.3.36 with CUDA for sm_${arch} (a few minutes)" >&2
  CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=${arch} -DLLAVA_BUILD=OFF" \
    "$PY" -m pip install -q --force-reinstall --no-deps --no-cache-dir --no-binary llama-cpp-python llama-cpp-python==0.3.36
fi
exec "$PY" -m exaone_edge.benchmarks.gpu_check "$@"
