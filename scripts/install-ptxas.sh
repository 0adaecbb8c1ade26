#!/usr/bin/env bash
# Install NVIDIA's ptxas without a GPU or a CUDA toolkit: the PyPI wheel
# `nvidia-cuda-nvcc-cu12` ships `nvidia/cuda_nvcc/bin/ptxas`. It goes into a
# private venv (git-ignored), which `backend::cuda::ptxas::find()` looks in.
#
# Usage: scripts/install-ptxas.sh [VENV_DIR]   (default: .tools/ptxas-venv)
# Prints the absolute path of ptxas on its last line.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$root/.tools/ptxas-venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    'nvidia-cuda-nvcc-cu12>=12.4,<13' >&2

ptxas="$("$venv/bin/python" - <<'PY'
import pathlib, sys
for p in map(pathlib.Path, sys.path):
    cand = p / "nvidia" / "cuda_nvcc" / "bin" / "ptxas"
    if cand.is_file():
        print(cand.resolve())
        break
else:
    sys.exit("ptxas not found in the installed nvidia-cuda-nvcc-cu12 wheel")
PY
)"
chmod +x "$ptxas"
"$ptxas" --version >&2
echo "$ptxas"
