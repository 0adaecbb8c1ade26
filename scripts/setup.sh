#!/usr/bin/env bash
# Install what densenetc needs beyond a Rust toolchain, where it is missing:
# LLVM 19 (+Polly, zstd) for the CPU and PTX backends, a C compiler/linker
# (the CPU backend links shared objects), and ptxas from PyPI for the
# offline PTX checks (optional: those tests skip with a reason without it).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cc >/dev/null || need_apt+=(build-essential)
[ -x /usr/lib/llvm-19/bin/llvm-config ] || need_apt+=(llvm-19-dev)
[ -e /usr/lib/llvm-19/lib/libPolly.a ] || need_apt+=(libpolly-19-dev)
[ -e /usr/include/zstd.h ] || need_apt+=(libzstd-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

if ! ls .tools/ptxas-venv/lib/python*/site-packages/nvidia/cuda_nvcc/bin/ptxas >/dev/null 2>&1; then
    bash scripts/install-ptxas.sh >/dev/null 2>&1 || echo "setup: ptxas not installed (PTX tests will skip)" >&2
fi
