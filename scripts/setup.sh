#!/usr/bin/env bash
# One-time set-up on a fresh machine: system fonts/documents, a virtual environment, and the project.
# Re-running is cheap: the patched llama-cpp-python wheel (a 5-25 minute compile) is cached in ~/.cache/exaone-edge.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
WHEELS=${EXAONE_EDGE_WHEELS:-$HOME/.cache/exaone-edge/wheels}
LLAMA_VERSION=0.3.36
# Portable x86-64 build (AVX2/FMA/F16C) so a cached wheel runs on any recent server CPU.
LLAMA_CMAKE_ARGS=${LLAMA_CMAKE_ARGS:--DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON}

# Hangul fonts and real documents for the document generator and tests, and headless Chromium for the
# report screenshot test (Debian packages).
APT_PACKAGES="fonts-nanum fonts-dejavu-core debian-reference-en chromium"
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  missing=""
  for pkg in $APT_PACKAGES; do dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"; done
  if [ -n "$missing" ]; then
    echo "setup: installing system packages:$missing" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  fi
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip

# llama.cpp with this project's patches (patches/llama.cpp: the EXAONE 4.5 MTP graph): the sdist is unpacked, patched
# and compiled, and the wheel is cached under the patches' hash, so a wheel built without them is never picked up.
PATCHED="$WHEELS/llama-$(bash scripts/llama_patches.sh hash)"
if ! ls "$PATCHED"/llama_cpp_python-$LLAMA_VERSION-*.whl >/dev/null 2>&1; then
  echo "setup: compiling llama-cpp-python $LLAMA_VERSION with patches/llama.cpp (5-25 minutes on 2 cores, cached afterwards)" >&2
  BUILD=$(mktemp -d "${TMPDIR:-/tmp}/exaone-edge-llama.XXXXXX")
  "$VENV/bin/python" -m pip download -q --no-deps --no-binary :all: -d "$BUILD" "llama-cpp-python==$LLAMA_VERSION"
  tar xzf "$BUILD/llama_cpp_python-$LLAMA_VERSION.tar.gz" -C "$BUILD"
  bash scripts/llama_patches.sh apply "$BUILD/llama_cpp_python-$LLAMA_VERSION/vendor/llama.cpp"
  mkdir -p "$PATCHED"
  CMAKE_ARGS="$LLAMA_CMAKE_ARGS" "$VENV/bin/python" -m pip wheel -q --no-deps -w "$BUILD/wheel" "$BUILD/llama_cpp_python-$LLAMA_VERSION"
  for wheel in "$BUILD"/wheel/llama_cpp_python-$LLAMA_VERSION-*.whl; do  # renamed into place whole: never a partial wheel
    cp "$wheel" "$PATCHED/$(basename "$wheel").partial" && mv "$PATCHED/$(basename "$wheel").partial" "$PATCHED/$(basename "$wheel")"
  done
  rm -rf "$BUILD"
fi
# The same version number with or without patches: reinstall whenever the installed build is not this one.
STAMP="$VENV/.llama-patches"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$PATCHED" ]; then
  "$VENV/bin/python" -m pip install -q --force-reinstall --no-deps "$PATCHED"/llama_cpp_python-$LLAMA_VERSION-*.whl
  echo "$PATCHED" > "$STAMP"
fi

"$VENV/bin/python" -m pip install -q --find-links "$PATCHED" -e ".[all]"
echo "setup: ready ($VENV)" >&2
