#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py) with CuPy, stopped after 10 minutes.
# Needs CuPy for the machine's CUDA: pip install -e '.[gpu-cuda12]' (or '.[gpu-cuda13]').
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
if ! python -c "import cupy" 2>/dev/null; then
    echo "gpu_check: CuPy is not importable; pip install -e '.[gpu-cuda12]' (CUDA 12) or '.[gpu-cuda13]' (CUDA 13)" >&2
    exit 2
fi
REFGEN_BACKEND=cupy timeout 600 python benchmarks/gpu_check.py "$@"
