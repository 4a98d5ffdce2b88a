#!/usr/bin/env bash
# The main job, end to end on the built-in tiny model. Each stage is the command a user would type.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin/exaone-edge
WORK=${DEMO_DIR:-demo-out}
mkdir -p "$WORK"

step() { printf '\n$ %s\n' "$*" >&2; "$@"; }

step $BIN tiny-model "$WORK/tiny" --overwrite
step $BIN inspect "$WORK/tiny"
