#!/usr/bin/env bash
# Test against the newest release of every dependency that pyproject.toml allows (torch stays pinned by
# constraints.txt: an unpinned torch is a multi-GB CUDA build). A breaking upstream release shows up here
# before a user meets it; if it passes, scripts/lock.sh --upgrade moves the lock to these versions.
# Usage: scripts/test-newest.sh [pytest args]     (venv in ${NEWEST_VENV:-/tmp/mv4deploy-newest})
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${NEWEST_VENV:-/tmp/mv4deploy-newest}
rm -rf "$venv" && python3 -m venv "$venv"
"$venv/bin/pip" install -q -U pip
"$venv/bin/pip" install -q -U --upgrade-strategy eager -c constraints.txt -e '.[dev]'
"$venv/bin/pip" list --format=freeze | grep -iE '^(torch|transformers|accelerate|safetensors|compressed-tensors|bitsandbytes|onnx|onnxruntime|numpy|typer)=='
"$venv/bin/python" -m pytest -q "$@"
