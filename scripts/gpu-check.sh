#!/usr/bin/env bash
# CUDA parity and GPU timing of densenetc against PyTorch; see scripts/gpu_check.py.
#   scripts/gpu-check.sh             on a machine with an NVIDIA GPU and PyTorch
#   scripts/gpu-check.sh --dry-run   the steps that need no GPU
#   scripts/gpu-check.sh --precision tf32   only the TF32 tensor-core mode (default: fp32 and tf32)
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 scripts/gpu_check.py "$@"
