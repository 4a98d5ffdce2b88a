#!/usr/bin/env bash
# Builds the offline GPU check kit's llama-cpp-python: 0.3.36 compiled with CUDA for sm_90 (H100/H200) on a CPU
# machine with nvcc, slimmed to one copy of each library it loads (benchmarks/gpu_kit.py slim), and caches it under
# ~/.cache/exaone-edge/wheels/cuda-sm90/ with a build tag (a folder and name that the CPU wheel's glob in setup.sh
# and pip's --find-links never pick up).
#   bash scripts/gpu_kit_wheel.sh        # prints the wheel's path, its size and the build time
# Needs: nvcc 13 (CUDA_ROOT, default /usr/local/cuda-13.0), gcc, cmake, and pip able to download the sdist and
# the nvidia-cublas wheel (its headers and libcublas.so.13 are linked against; the GPU box has its own copy).
# The compile runs at nice 19 with 2 jobs (JOBS) since the machine is shared.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LLAMA_VERSION=0.3.36
CUBLAS_VERSION=13.1.1.3
ARCH=${ARCH:-90}
CUDA_ROOT=${CUDA_ROOT:-/usr/local/cuda-13.0}
WORK=${WORK:-/tmp/exaone-edge-cuda-build}
OUT=${EXAONE_EDGE_WHEELS:-$HOME/.cache/exaone-edge/wheels}/cuda-sm$ARCH
NAME="llama_cpp_python-$LLAMA_VERSION-1cu130sm$ARCH-py3-none-linux_x86_64.whl"

if [ -f "$OUT/$NAME" ]; then echo "$OUT/$NAME"; exit 0; fi
mkdir -p "$WORK/src" "$OUT"
"$PY" -m pip download -q --no-deps --no-binary :all: -d "$WORK" "llama-cpp-python==$LLAMA_VERSION"
"$PY" -m pip download -q --no-deps --only-binary :all: -d "$WORK" "nvidia-cublas==$CUBLAS_VERSION"
rm -rf "$WORK/cublas" && mkdir -p "$WORK/cublas"
unzip -q -o "$WORK"/nvidia_cublas-$CUBLAS_VERSION-*.whl 'nvidia/cu13/include/*' 'nvidia/cu13/lib/libcublas.so.13' -d "$WORK/cublas"
CUBLAS="$WORK/cublas/nvidia/cu13"
ln -sf libcublas.so.13 "$CUBLAS/lib/libcublas.so"

# A link-time stand-in for the driver's libcuda.so.1 (this machine has no driver; the GPU box's real one is loaded
# at run time): every function cuda.h declares, under the exported names its macros map to (cuMemGetInfo_v2 …).
"$PY" - "$CUDA_ROOT/include/cuda.h" "$WORK/cuda_stub.c" <<'EOF'
import re, subprocess, sys
text = subprocess.run(["gcc", "-E", "-P", sys.argv[1]], capture_output=True, text=True, check=True).stdout
names = sorted(set(re.findall(r"\bCUresult\s+(cu\w+)\s*\(", text)))
open(sys.argv[2], "w").write("".join(f"int {n}(void) {{ return 999; }}\n" for n in names))
EOF
mkdir -p "$WORK/stub"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$WORK/stub/libcuda.so" "$WORK/cuda_stub.c"

[ -d "$WORK/src/llama_cpp_python-$LLAMA_VERSION" ] || tar xzf "$WORK/llama_cpp_python-$LLAMA_VERSION.tar.gz" -C "$WORK/src"
export CMAKE_BUILD_PARALLEL_LEVEL=${JOBS:-2}
export CUDACXX="$CUDA_ROOT/bin/nvcc"
# 90-real: sm_90 machine code only (no PTX: half the size); FlashAttention kernels only for the KV types the runtime
# offers (f16, q8_0, q4_0); no NCCL (one GPU), no OpenSSL (llama.cpp's HTTP downloads are never used).
export CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$ARCH-real -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF \
-DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_CUDA_FA_ALL_QUANTS=OFF \
-DGGML_CUDA_FA_QUANTS=f16-f16;q8_0-q8_0;q4_0-q4_0 -DGGML_CUDA_NCCL=OFF -DLLAMA_OPENSSL=OFF \
-DCUDAToolkit_ROOT=$CUDA_ROOT -DCUDA_cublas_LIBRARY=$CUBLAS/lib/libcublas.so \
-DCUDA_cuda_driver_LIBRARY=$WORK/stub/libcuda.so -DCMAKE_CUDA_FLAGS=-I$CUBLAS/include -DCMAKE_CXX_FLAGS=-I$CUBLAS/include"
started=$(date +%s)
# A kept build folder: a compile cut short (a session's end) resumes where it stopped.
nice -n 19 "$PY" -m pip wheel -q --no-deps -w "$WORK/wheel" "$WORK/src/llama_cpp_python-$LLAMA_VERSION" \
  -C install.strip=true -C build-dir="$WORK/build" > "$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log" >&2; exit 1; }
seconds=$(( $(date +%s) - started ))
built=$(ls "$WORK"/wheel/llama_cpp_python-$LLAMA_VERSION-*.whl)
"$PY" benchmarks/gpu_kit.py slim "$built" "$OUT/$NAME" --build-tag "1cu130sm$ARCH" >&2  # one copy of each library
echo "gpu_kit_wheel: built in ${seconds} s; wheel $(du -k "$built" | cut -f1) KiB, slimmed $(du -k "$OUT/$NAME" | cut -f1) KiB: $OUT/$NAME" >&2
echo "$seconds" > "$OUT/build-seconds"
echo "$OUT/$NAME"
