#!/usr/bin/env bash
# The llama.cpp patches this project carries (patches/llama.cpp/*.patch, in name order), for every script that
# compiles llama-cpp-python (setup.sh, gpu_kit_wheel.sh):
#   bash scripts/llama_patches.sh hash                 # 12 hex digits naming the set: part of every wheel cache key
#   bash scripts/llama_patches.sh apply SRC/vendor/llama.cpp   # applies each patch once (an applied one is skipped)
set -euo pipefail
PATCHES="$(cd "$(dirname "$0")/.." && pwd)/patches/llama.cpp"

case "${1:-}" in
  hash)
    cat "$PATCHES"/*.patch | sha256sum | cut -c1-12
    ;;
  apply)
    target=${2:?usage: llama_patches.sh apply LLAMA_CPP_DIR}
    [ -f "$target/src/llama.cpp" ] || { echo "llama_patches: $target is not a llama.cpp source tree (no src/llama.cpp)" >&2; exit 1; }
    for p in "$PATCHES"/*.patch; do
      if patch -d "$target" -p1 -R --dry-run -s -f < "$p" >/dev/null 2>&1; then
        echo "llama_patches: $(basename "$p") already applied" >&2
      else
        patch -d "$target" -p1 -s -f --no-backup-if-mismatch < "$p" \
          || { echo "llama_patches: $(basename "$p") does not apply to $target (another llama.cpp version?)" >&2; exit 1; }
        echo "llama_patches: applied $(basename "$p")" >&2
      fi
    done
    ;;
  *)
    echo "usage: llama_patches.sh hash | apply LLAMA_CPP_DIR" >&2; exit 2
    ;;
esac
