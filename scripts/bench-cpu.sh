#!/usr/bin/env bash
# Side-by-side CPU benchmark of densenetc, ONNX Runtime and OpenVINO on the
# same DenseNets with the same weights. One command:
#
#   scripts/bench-cpu.sh [--iters-scale 0.2] [--cases densenet121-b1,densenet161-b8,...] [-v]
#
# 1. creates scripts/.venv and installs scripts/requirements.txt (first run);
# 2. builds densenetc in release (cargo build --release -p compiler);
# 3. runs scripts/bench_cpu.py: DenseNet-121 b1/b8 at 224, DenseNet-BC-100
#    b1/b64 at 32 (or the --cases given: ARCH-bN[-SIZE], any preset); prints
#    a markdown report, also written to target/bench-cpu/report.md (all
#    numbers: target/bench-cpu/results.json).
#
# Extra arguments go to bench_cpu.py (see `scripts/bench_cpu.py --help`).
# Set SKIP_BUILD=1 to use the densenetc already in target/release.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cd "$repo"

python3 "$here/_venv.py" >/dev/null

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    echo "building densenetc (release)..." >&2
    cargo build --release -p compiler --bins --quiet
fi

# Recorded in the report as the command (bench_cpu.py appends the arguments).
export BENCH_CPU_COMMAND="scripts/bench-cpu.sh"
exec "$here/.venv/bin/python" "$here/bench_cpu.py" "$@"
