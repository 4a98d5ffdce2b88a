#!/usr/bin/env bash
# Builds the offline GPU check kit's llama-cpp-python: 0.3.36 compiled with CUDA for sm_90 (H100/H200), slimmed to
# one copy of each library it loads (benchmarks/gpu_kit.py slim), cached under ~/.cache/exaone-edge/wheels/cuda-sm90/
# with a build tag (a folder and name that the CPU wheel's glob in setup.sh and pip's --find-links never pick up).
#   bash scripts/gpu_kit_wheel.sh        # on a CPU machine with nvcc: prints the wheel's path, its size, the time
#   OFFLINE=1 LLAMA_SDIST=.gpu-kit/llama-src.tar.gz JOBS=16 bash scripts/gpu_kit_wheel.sh   # on the GPU box
# Needs nvcc 13 (CUDA_ROOT), gcc, cmake, ninja. Online it downloads the sdist and the nvidia-cublas wheel (headers and
# libcublas.so.13 to link against; the box has its own copy in torch's wheels) and builds in pip's isolation;
# OFFLINE=1 takes the kit's trimmed sdist, the cuBLAS of this Python's nvidia/cu13 wheels and its installed
# scikit-build-core. Without a driver (libcuda.so.1) a stand-in made from cuda.h is linked; the real one loads at
# run time. The compile runs at nice 19 with JOBS (2) jobs, in a kept folder, so a build cut short resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LLAMA_VERSION=0.3.36
CUBLAS_VERSION=13.1.1.3
ARCH=${ARCH:-90}
CUDA_ROOT=${CUDA_ROOT:-$([ -d /usr/local/cuda-13.0 ] && echo /usr/local/cuda-13.0 || echo /usr/local/cuda)}
WORK=${WORK:-/tmp/exaone-edge-cuda-build}
OUT=${EXAONE_EDGE_WHEELS:-$HOME/.cache/exaone-edge/wheels}/cuda-sm$ARCH
NAME="llama_cpp_python-$LLAMA_VERSION-1cu130sm$ARCH-py3-none-linux_x86_64.whl"
OFFLINE=${OFFLINE:-0}

# a wheel built from other patches (or none) is built again
if [ -f "$OUT/$NAME" ] && [ "$(cat "$OUT/patches" 2>/dev/null)" = "$(bash scripts/llama_patches.sh hash)" ]; then
  echo "$OUT/$NAME"; exit 0
fi
mkdir -p "$WORK/src" "$WORK/cublas/lib" "$OUT"
if [ "$OFFLINE" = 1 ]; then
  SDIST=${LLAMA_SDIST:?OFFLINE=1 needs LLAMA_SDIST: the kit llama-src.tar.gz}
  CUBLAS_DIR=${CUBLAS_DIR:-$("$PY" -c 'import glob, sys; print(next((d for p in sys.path for d in glob.glob(p + "/nvidia/cu13") if glob.glob(d + "/include/cublas_v2.h")), ""))')}
  [ -f "$CUBLAS_DIR/include/cublas_v2.h" ] || { echo "gpu_kit_wheel: no cuBLAS headers (set CUBLAS_DIR to a folder with include/cublas_v2.h and lib/libcublas.so.13)" >&2; exit 1; }
  PIP_OFFLINE=(--no-build-isolation --no-index)
else
  "$PY" -m pip download -q --no-deps --no-binary :all: -d "$WORK" "llama-cpp-python==$LLAMA_VERSION"
  "$PY" -m pip download -q --no-deps --only-binary :all: -d "$WORK" "nvidia-cublas==$CUBLAS_VERSION"
  unzip -q -o "$WORK"/nvidia_cublas-$CUBLAS_VERSION-*.whl 'nvidia/cu13/include/*' 'nvidia/cu13/lib/libcublas.so.13' -d "$WORK/cublas"
  SDIST="$WORK/llama_cpp_python-$LLAMA_VERSION.tar.gz"
  CUBLAS_DIR="$WORK/cublas/nvidia/cu13"
  PIP_OFFLINE=()
fi
ln -sf "$CUBLAS_DIR/lib/libcublas.so.13" "$WORK/cublas/lib/libcublas.so"  # the name CMake links by

DRIVER=$(ldconfig -p 2>/dev/null | awk '/libcuda\.so\.1 / {print $NF; exit}')
if [ -z "$DRIVER" ]; then
  # A link-time stand-in for the driver's libcuda.so.1: every function cuda.h declares, under the exported names
  # its macros map to (cuMemGetInfo_v2 …).
  "$PY" - "$CUDA_ROOT/include/cuda.h" "$WORK/cuda_stub.c" <<'EOF'
import re, subprocess, sys
text = subprocess.run(["gcc", "-E", "-P", sys.argv[1]], capture_output=True, text=True, check=True).stdout
names = sorted(set(re.findall(r"\bCUresult\s+(cu\w+)\s*\(", text)))
open(sys.argv[2], "w").write("".join(f"int {n}(void) {{ return 999; }}\n" for n in names))
EOF
  mkdir -p "$WORK/stub"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$WORK/stub/libcuda.so" "$WORK/cuda_stub.c"
  DRIVER="$WORK/stub/libcuda.so"
fi

[ -d "$WORK/src/llama_cpp_python-$LLAMA_VERSION" ] || tar xzf "$SDIST" -C "$WORK/src"
bash scripts/llama_patches.sh apply "$WORK/src/llama_cpp_python-$LLAMA_VERSION/vendor/llama.cpp"  # the MTP graph
export CMAKE_BUILD_PARALLEL_LEVEL=${JOBS:-2}
export CUDACXX="$CUDA_ROOT/bin/nvcc"
# 90-real: sm_90 machine code only (no PTX: half the size); FlashAttention kernels only for the KV types the runtime
# offers (f16, q8_0, q4_0); no NCCL (one GPU), no OpenSSL (llama.cpp's HTTP downloads are never used).
export CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$ARCH-real -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF \
-DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_CUDA_FA_ALL_QUANTS=OFF \
-DGGML_CUDA_FA_QUANTS=f16-f16;q8_0-q8_0;q4_0-q4_0 -DGGML_CUDA_NCCL=OFF -DLLAMA_OPENSSL=OFF \
-DCUDAToolkit_ROOT=$CUDA_ROOT -DCUDA_cublas_LIBRARY=$WORK/cublas/lib/libcublas.so \
-DCUDA_cuda_driver_LIBRARY=$DRIVER -DCMAKE_CUDA_FLAGS=-I$CUBLAS_DIR/include -DCMAKE_CXX_FLAGS=-I$CUBLAS_DIR/include"
started=$(date +%s)
nice -n 19 "$PY" -m pip wheel -q --no-deps "${PIP_OFFLINE[@]}" -w "$WORK/wheel" "$WORK/src/llama_cpp_python-$LLAMA_VERSION" \
  -C install.strip=true -C build-dir="$WORK/build" > "$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log" >&2; exit 1; }
seconds=$(( $(date +%s) - started ))
built=$(ls "$WORK"/wheel/llama_cpp_python-$LLAMA_VERSION-*.whl)
"$PY" benchmarks/gpu_kit.py slim "$built" "$OUT/$NAME" --build-tag "1cu130sm$ARCH" >&2  # one copy of each library
echo "gpu_kit_wheel: built in ${seconds} s; wheel $(du -k "$built" | cut -f1) KiB, slimmed $(du -k "$OUT/$NAME" | cut -f1) KiB: $OUT/$NAME" >&2
echo "$seconds" > "$OUT/build-seconds"
bash scripts/llama_patches.sh hash > "$OUT/patches"
echo "$OUT/$NAME"
