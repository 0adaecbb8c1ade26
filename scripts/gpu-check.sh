#!/usr/bin/env bash
# CUDA parity and GPU timing of densenetc against PyTorch; see scripts/gpu_check.py.
#   scripts/gpu-check.sh             on a machine with an NVIDIA GPU and PyTorch
#   scripts/gpu-check.sh --dry-run   the steps that need no GPU
#   scripts/gpu-check.sh --precision tf32   one mode (fp32, tf32, fp16 or bf16; default: all four)
#   scripts/gpu-check.sh --prepare DIR ...  here: a stripped densenetc, artefacts, CPU outputs
#   scripts/gpu-check.sh --prebuilt DIR ... on a GPU machine without LLVM: check with those
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 scripts/gpu_check.py "$@"
